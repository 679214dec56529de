"""Connection timeouts: the bounds aiohttp's server does not have itself.

aiohttp closes a keep-alive connection that waits for its next request longer
than ``keepalive_timeout`` (``limits.idleConnectionTimeout``), but it waits
without bound for a request line and headers that arrive a byte at a time
once they have started, and a connection's first request waits as long as
its idle timeout.  ``ConnectionGuard`` adds ``limits.requestHeaderTimeout``:
a connection is closed unless a request's headers are complete within the
bound, counted from the connection's opening, and on a keep-alive connection
from the first byte of each next request.

A client that stops reading its answer (its socket buffers full, aiohttp's
writes paused) for ``limits.responseStallTimeout`` is disconnected: the
timer runs from the transport's ``pause_writing`` to its ``resume_writing``.

It also bounds the connections open at once (``limits.maxConnections``): one
more is closed as soon as it is accepted, before aiohttp sees it, so a client
that opens connections without end cannot exhaust the replica's file
descriptors.

It wraps the protocol aiohttp makes for each connection: the wrapper sees
every byte before aiohttp does, and ``handler_started`` (called by the
outermost middleware, ``hareg.http.observe``) tells it when a request's handler starts (its headers were parsed) and ends.  Bytes that
arrive while a handler runs are its body, which ``request_chunks``
(hareg.http.base) bounds by ``limits.bodyStallTimeout`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ssl import SSLContext
from typing import cast

from aiohttp import web

__all__ = ["CONNECTIONS", "ConnectionGuard", "handler_started", "start_listener"]

log = logging.getLogger("hareg.http")


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol behind a header-timeout timer."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None  # armed while aiohttp's writes are paused
        self._busy = 0  # request handlers running (pipelined requests run one at a time)
        self._refused = False  # closed at once: over limits.maxConnections, aiohttp never saw it

    def _arm(self) -> None:
        if self._timer is None and self._busy == 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._guard.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._transport is not None and self._busy == 0:
            log.info(
                "closed a connection whose request headers did not arrive in time",
                extra={
                    "fields": {"limit": "limits.requestHeaderTimeout", "seconds": self._guard.header_timeout}
                },
            )
            self._transport.close()

    def started(self) -> None:
        self._busy += 1
        self._disarm()

    def finished(self) -> None:
        # The next request's clock starts with its first byte (data_received).
        self._busy -= 1

    # asyncio.Protocol, passed through to aiohttp's protocol.
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit():
            self._refused = True
            transport.close()
            return
        self._transport = transport
        self._guard.connections[transport] = self
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if data:
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        self._disarm_stall()
        if self._transport is not None:
            self._guard.connections.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            # The client's buffers are full: it must read within the bound.
            if self._stall is None and self._guard.response_stall_timeout:
                loop = asyncio.get_running_loop()
                self._stall = loop.call_later(self._guard.response_stall_timeout, self._stalled)
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._disarm_stall()
            self._inner.resume_writing()

    def _disarm_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if self._transport is not None and not self._transport.is_closing():
            log.info(
                "closed a connection whose client stopped reading its answer",
                extra={
                    "fields": {
                        "limit": "limits.responseStallTimeout",
                        "seconds": self._guard.response_stall_timeout,
                    }
                },
            )
            # Closed at once, its unsent bytes dropped: the handler's pending write fails.
            cast(asyncio.WriteTransport, self._transport).abort()


# A client refused for limits.maxConnections is logged at most this often, so
# a flood of connections cannot flood the log as well.
_REFUSAL_LOG_INTERVAL = 10.0


class ConnectionGuard:
    """The header timeout and the connection cap of one application's listeners."""

    def __init__(
        self, header_timeout: float, max_connections: int = 0, response_stall_timeout: float = 60.0
    ) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections  # 0: no cap
        # A client that reads none of its answer this long is disconnected
        # (limits.responseStallTimeout); the sendfile path asks for it too.
        self.response_stall_timeout = response_stall_timeout
        self.connections: dict[asyncio.BaseTransport, _Guarded] = {}
        self.refused = 0  # connections closed for the cap, since start
        self._refusals_logged = 0
        self._last_refusal_log: float | None = None

    def admit(self) -> bool:
        """Whether one more connection may open now."""
        if not self.max_connections or len(self.connections) < self.max_connections:
            return True
        self.refused += 1
        now = asyncio.get_running_loop().time()
        if self._last_refusal_log is None or now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            log.warning(
                "closed new connections: too many open",
                extra={
                    "fields": {
                        "limit": "limits.maxConnections",
                        "open": len(self.connections),
                        "refused": self.refused - self._refusals_logged,
                    }
                },
            )
            self._last_refusal_log = now
            self._refusals_logged = self.refused
        return False

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, factory())


CONNECTIONS = web.AppKey("connections", ConnectionGuard)


def handler_started(request: web.Request) -> _Guarded | None:
    """Tell the connection's guard that a request's headers have arrived; the
    caller calls ``finished()`` on what this returns when the handler is done
    (None: an app served without a guard, unaffected)."""
    guard = request.app.get(CONNECTIONS)
    if guard is None:
        return None
    transport = request.transport
    conn = guard.connections.get(transport) if transport is not None else None
    if conn is not None:
        conn.started()
    return conn


async def start_listener(
    runner: web.AppRunner,
    host: str | None,
    port: int,
    *,
    ssl: SSLContext | None = None,
    backlog: int = 1024,
) -> asyncio.Server:
    """Listen on ``host:port`` (None: every interface) for ``runner``'s application through its
    ConnectionGuard (the app must hold one under CONNECTIONS).  The caller
    closes the returned server before ``runner.cleanup()``, which then closes
    the connections gracefully as it does a site's."""
    server = runner.server
    if server is None:
        raise RuntimeError("AppRunner.setup() has not run")
    guard = runner.app[CONNECTIONS]
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        guard.wrap(server), host, port, ssl=ssl, backlog=backlog, reuse_address=True
    )
