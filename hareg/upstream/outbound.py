"""Which proxy an outbound request uses: the configuration's ``proxy``
section (http, https, noProxy), never the process environment.

``noProxy`` is a comma-separated list of host names (``.example.com`` and
``example.com`` both cover the domain and its sub-domains), IP addresses,
CIDR ranges, any of them with ``:port``, or ``*`` (no proxy at all).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from hareg.config.model import ProxyConfig


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port: int | None = None
        if entry.startswith("["):  # [v6]:port
            addr, _, rest = entry[1:].partition("]")
            entry = addr
            if rest.startswith(":") and rest[1:].isdigit():
                entry_port = int(rest[1:])
        elif entry.count(":") == 1:
            name, _, port_text = entry.partition(":")
            if port_text.isdigit():
                entry, entry_port = name, int(port_text)
        if entry_port is not None and entry_port != port:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            network = None
        if network is not None:
            try:
                if ipaddress.ip_address(host) in network:
                    return True
            except ValueError:
                pass
            continue
        domain = entry.lstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False


def proxy_for(url: str, proxy: ProxyConfig) -> str | None:
    """The proxy URL for a request to ``url``; None: connect directly."""
    parts = urlsplit(url)
    chosen = proxy.https if parts.scheme == "https" else proxy.http
    if chosen is None:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if proxy.no_proxy and _bypassed(parts.hostname or "", port, proxy.no_proxy):
        return None
    return chosen
