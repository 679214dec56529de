"""Host, port and URL checks shared by validation and by the code that uses
those fields (``listen``, routes, ``advertiseURL``), so both parse them the
same way.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _is_hostname(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    return all(_HOST_LABEL.match(label) for label in host.removesuffix(".").split("."))


def host_problem(host: str) -> str | None:
    """None if ``host`` (without brackets) is an IP address or a DNS name."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        return f"{host!r} is not a valid IPv4 address"
    if not _is_hostname(host):
        return f"{host!r} is not a valid host name or IP address"
    return None


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``; empty host = all interfaces).

    Returns the host without brackets and the port; raises ValueError with a
    reason if either part is invalid.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError("an IPv6 address must be written [address]:port")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("the port is missing")
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets, like [::1]:5000")
        if host:
            problem = host_problem(host)
            if problem:
                raise ValueError(problem)
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


def url_problem(text: str, schemes: tuple[str, ...], need_port: bool, allow_path: bool) -> str | None:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in schemes:
        return f"the scheme must be {' or '.join(s + '://' for s in schemes)}"
    host = parts.hostname
    if not host:
        return "the host is missing"
    problem = host_problem(host)
    if problem:
        return problem
    if need_port and port is None:
        return "the port is missing"
    if port == 0:
        return "port 0 is out of range 1-65535"
    if not allow_path and (parts.path not in ("", "/") or parts.query or parts.fragment):
        return "a path, query or fragment is not allowed"
    return None


def advertised_url(configured: str | None, host: str, port: int, host_name: str) -> str:
    """The URL other replicas reach this one at: ``advertiseURL`` if set, else
    ``http://host:port`` of the listener, with ``host_name`` in place of a
    wildcard host (0.0.0.0, ::, empty), which no other machine can reach."""
    if configured:
        return configured.rstrip("/")
    if is_wildcard(host):
        host = host_name
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")
