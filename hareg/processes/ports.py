"""Free TCP ports on 127.0.0.1 for the processes hareg starts."""

from __future__ import annotations

import socket

__all__ = ["HOST", "free_port", "free_ports"]

HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 right now.

    All sockets are held open until every port is chosen, so the ports are
    distinct; another process may still take one before it is used."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One TCP port that is free on 127.0.0.1 right now."""
    return free_ports(1)[0]
