"""Outgoing HTTP through the configured ``proxy`` (for pull-through to upstream
registries, when it comes).

``Proxies.proxy_for(url)`` picks ``proxy.https`` for ``https://`` URLs and
``proxy.http`` for ``http://`` ones, unless the host matches ``noProxy``: a
comma-separated list whose entries are host names (``registry.local``),
domain suffixes (``.example.com`` or ``example.com``, matching the domain and
its subdomains), IP addresses or CIDR ranges (``10.0.0.0/8``), optionally with
``:port``, or ``*`` (no proxy at all), as curl and Go read ``NO_PROXY``.

``OutboundClient`` wraps one ``aiohttp.ClientSession`` and passes the right
proxy with every request; the process environment (``HTTP_PROXY``...) is
never consulted, so the configuration file is the one source.
"""

from __future__ import annotations

import ipaddress
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hareg.config import ProxyConfig

__all__ = ["OutboundClient", "Proxies"]


class Proxies:
    def __init__(self, config: ProxyConfig | None = None) -> None:
        config = config or ProxyConfig()
        self.http = config.http
        self.https = config.https
        self._entries = [e.strip().lower() for e in (config.no_proxy or "").split(",") if e.strip()]

    def bypass(self, host: str, port: int | None) -> bool:
        """Does ``host`` (and ``port``) match ``noProxy``?"""
        host = host.lower().strip("[]").rstrip(".")
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for entry in self._entries:
            if entry == "*":
                return True
            want_port: int | None = None
            name = entry
            if entry.startswith("["):  # [v6]:port
                name, _, rest = entry[1:].partition("]")
                if rest.startswith(":") and rest[1:].isdigit():
                    want_port = int(rest[1:])
            elif entry.count(":") == 1:
                name, _, port_text = entry.partition(":")
                if port_text.isdigit():
                    want_port = int(port_text)
            if want_port is not None and port != want_port:
                continue
            if address is not None:
                try:
                    if address in ipaddress.ip_network(name, strict=False):
                        return True
                except ValueError:
                    pass
                continue
            suffix = name.lstrip(".").rstrip(".")
            if suffix and (host == suffix or host.endswith("." + suffix)):
                return True
        return False

    def proxy_for(self, url: str) -> str | None:
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http if parts.scheme == "http" else None
        if proxy is None or parts.hostname is None:
            return None
        if self.bypass(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)):
            return None
        return proxy


class OutboundClient:
    """An aiohttp ClientSession whose every request honours the proxy settings."""

    def __init__(self, proxy: ProxyConfig | None = None, **session_args: Any) -> None:
        self.proxies = Proxies(proxy)
        session_args.setdefault("trust_env", False)
        self.session = aiohttp.ClientSession(**session_args)

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        """``session.request`` with ``proxy=`` chosen for ``url`` (use as ``async with``)."""
        kwargs.setdefault("proxy", self.proxies.proxy_for(url))
        return self.session.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
