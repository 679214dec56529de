"""Which address a request came from, behind load balancers that say so.

A load balancer in ``auth.trustedProxies`` appends the address it received
the request from to ``X-Forwarded-For``.  Reading that header from the
right, every address that is itself a trusted proxy is a hop of ours; the
first that is not is the client (anything further left the client wrote
itself and is not believed).  A peer that is not a trusted proxy is the
client, whatever it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = ["Network", "client_address", "networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS: Final = 32  # entries of X-Forwarded-For looked at; a longer chain is cut there


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, else the
    rightmost untrusted entry of the ``X-Forwarded-For`` header lines."""
    if peer is None:
        return "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for line in forwarded_for for hop in line.split(",")]
    for hop in reversed(hops[-MAX_HOPS:]):
        if _trusted(hop, trusted):
            continue
        try:
            return str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # not an address: a hop our proxies would never write
    return peer
