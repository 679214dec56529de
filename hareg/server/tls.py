"""TLS listeners for ``routes``: one HTTPS listener per route that has ``listen``.

The certificates are loaded before anything else starts, so a bad one stops
``hareg serve`` at once with a message that names the route and the file
(``TLSError``), never a traceback.  Every listener serves the same
application as the plain one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from hareg.config.addresses import split_host_port
from hareg.config.model import Route
from hareg.http.connections import start_listener

__all__ = ["RouteListener", "TLSError", "load_route_contexts", "route_context", "start_route_sites"]


class TLSError(Exception):
    """A route's certificate or key cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class RouteListener:
    route: Route
    context: ssl.SSLContext
    host: str
    port: int

    @property
    def url(self) -> str:
        host = self.host or "0.0.0.0"
        return f"https://{f'[{host}]' if ':' in host else host}:{self.port}"


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    raise TLSError("encrypted private keys are not supported; decrypt it (openssl pkey -in KEY -out KEY)")


def route_context(route: Route) -> ssl.SSLContext:
    """The server-side SSLContext of a route, or TLSError naming the route and the file."""
    name, cert, key = route.name, route.certificate_file, route.key_file
    if cert is None or key is None:
        raise TLSError(f"route {name!r}: a TLS listener needs certificateFile and keyFile")
    contents: dict[str, bytes] = {}
    for field, path in (("certificateFile", cert), ("keyFile", key)):
        try:
            contents[field] = Path(path).read_bytes()
        except OSError as exc:
            raise TLSError(f"route {name!r}: cannot read {field} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in contents["certificateFile"]:
        raise TLSError(f"route {name!r}: certificateFile {cert} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in contents["keyFile"]:
        raise TLSError(f"route {name!r}: keyFile {key} holds no PEM private key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except TLSError as exc:
        raise TLSError(f"route {name!r}: keyFile {key}: {exc}") from None
    except ssl.SSLError as exc:
        text = str(exc)
        if "KEY_VALUES_MISMATCH" in text or "key values mismatch" in text:
            raise TLSError(
                f"route {name!r}: keyFile {key} is not the key of certificateFile {cert}"
            ) from None
        reason = exc.reason or text
        raise TLSError(
            f"route {name!r}: cannot load certificateFile {cert} with keyFile {key}: {reason}"
        ) from None
    return context


def load_route_contexts(routes: Sequence[Route]) -> list[RouteListener]:
    """Every route that has its own listener, with its loaded certificate."""
    listeners = []
    for route in routes:
        if route.listen is None:
            continue
        try:
            host, port = split_host_port(route.listen)
        except ValueError as exc:
            raise TLSError(f"route {route.name!r}: listen {route.listen!r}: {exc}") from None
        listeners.append(RouteListener(route, route_context(route), host, port))
    return listeners


async def start_route_sites(
    runner: web.AppRunner, listeners: Sequence[RouteListener], started: list[asyncio.Server]
) -> list[str]:
    """Start an HTTPS listener per route on the runner (with the connection
    timeouts of hareg.http.connections); returns their URLs.  Each listener is
    appended to ``started`` as soon as it runs, for the caller to close."""
    urls = []
    for listener in listeners:
        try:
            server = await start_listener(runner, listener.host or None, listener.port, ssl=listener.context)
        except OSError as exc:
            raise TLSError(
                f"route {listener.route.name!r}: cannot listen on {listener.route.listen}: {exc.strerror or exc}"
            ) from None
        started.append(server)
        urls.append(listener.url)
    return urls
