"""Zero-copy response bodies: ``os.sendfile`` from a file to the connection's socket.

uvloop has no ``loop.sendfile``, so aiohttp's ``FileResponse`` falls back to
reading the file in the default thread pool, a MiB at a time, and writing
each chunk through the transport: a thread hop and two copies through user
space per MiB.  :func:`send_file` sends the body with ``os.sendfile`` on the
socket itself instead, the kernel copying from the page cache:

* the response's headers are flushed through aiohttp's writer first, and the
  transport's buffer is let drain to empty (its high-water mark lowered to 0
  for the wait), so the body's bytes follow the headers on the wire;
* the socket is non-blocking: on ``EAGAIN`` the loop's writer readiness is
  awaited on a duplicate of the socket's descriptor (event loops refuse a
  writer on a descriptor a transport owns; the duplicate also keeps the socket
  open should the transport close it meanwhile);
* it stays off, and :class:`ZeroCopyUnavailable` says why before any byte of
  the body is sent, where the bytes cannot go straight to a socket: a TLS
  transport (they are encrypted in user space), a transport with no socket,
  a closing one, or ``os.sendfile`` refusing the pair of descriptors
  (``EINVAL``, ``ENOSYS``, ``EOPNOTSUPP``...) on its first call.  The caller
  then sends the body through aiohttp's writer, the ordinary way.

Once part of the body is sent, a failure can only end the connection.  A
client that went away is raised as ``ConnectionResetError`` (``EPIPE``
included); a failure of the file (``EIO``, a file shorter than its size) as
the ``OSError`` it is.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Final, cast

from aiohttp.abc import AbstractStreamWriter

__all__ = ["ZeroCopyUnavailable", "send_file", "socket_of"]

log = logging.getLogger("hareg.http")

# Bytes per os.sendfile call: Linux sends at most 0x7ffff000 at once; smaller
# calls let the loop serve other connections between them.
_MAX_CALL: Final = 16 << 20
# errno values meaning "not for this pair of descriptors": fall back.
_UNSUPPORTED: Final = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK, errno.EOVERFLOW, errno.ESPIPE}
)


class ZeroCopyUnavailable(Exception):
    """The body cannot go by sendfile here; nothing of it was sent."""


def socket_of(transport: asyncio.BaseTransport | None) -> int:
    """The descriptor of ``transport``'s stream socket, if its bytes may be
    sent there directly; :class:`ZeroCopyUnavailable` otherwise."""
    if transport is None or transport.is_closing():
        raise ZeroCopyUnavailable("no open transport")
    if (
        transport.get_extra_info("sslcontext") is not None
        or transport.get_extra_info("ssl_object") is not None
    ):
        raise ZeroCopyUnavailable("TLS: the bytes are encrypted in user space")
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ZeroCopyUnavailable("the transport has no socket")
    if sock.type != socket.SOCK_STREAM:
        raise ZeroCopyUnavailable(f"not a stream socket ({sock.type!r})")
    fd: int = sock.fileno()
    if fd < 0:
        raise ZeroCopyUnavailable("the socket is closed")
    return fd


async def _flush(transport: asyncio.WriteTransport, writer: AbstractStreamWriter) -> None:
    """Send aiohttp's buffered headers and wait until the transport's buffer is empty."""
    await writer.write(b"")  # the headers aiohttp keeps back for the first body chunk
    if transport.get_write_buffer_size() == 0:
        return  # the usual case: the headers went out in one send
    low, high = transport.get_write_buffer_limits()
    # The protocol is paused above 0 bytes and resumed at 0: drain() waits for empty.
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        await writer.drain()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)
    if transport.is_closing():
        raise ConnectionResetError("the client went away before the body")


async def send_file(
    transport: asyncio.BaseTransport | None,
    writer: AbstractStreamWriter,
    file_fd: int,
    offset: int,
    count: int,
    stall_timeout: float | None = None,
) -> None:
    """Send ``count`` bytes of ``file_fd`` from ``offset`` as the body of the
    response ``writer`` belongs to (prepared: its headers are sent first).
    A client that reads nothing for ``stall_timeout`` seconds
    (``limits.responseStallTimeout``) ends it as a client gone.

    Raises :class:`ZeroCopyUnavailable` before any byte of the body is sent
    (the headers may be: the caller sends the body through ``writer``), or
    ``ConnectionError`` (the connection is over)."""
    sock_fd = socket_of(transport)
    # (uvloop's transports are not asyncio.WriteTransport subclasses, only alike.)
    transport = cast(asyncio.WriteTransport, transport)
    if count <= 0:
        raise ZeroCopyUnavailable("an empty body")
    await _flush(transport, writer)
    out = os.dup(sock_fd)
    try:
        await _send(out, file_fd, offset, count, stall_timeout)
    finally:
        os.close(out)


async def _send(out: int, file_fd: int, offset: int, count: int, stall_timeout: float | None) -> None:
    """The body, by os.sendfile calls on the non-blocking ``out``; between two
    calls the loop runs (the socket's writability awaited), so one fast reader
    of a big blob cannot hold it."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] | None = None

    def writable() -> None:
        if ready is not None and not ready.done():
            ready.set_result(None)

    start, end = offset, offset + count
    loop.add_writer(out, writable)
    try:
        while offset < end:
            try:
                sent = os.sendfile(out, file_fd, offset, min(end - offset, _MAX_CALL))
            except BlockingIOError:
                sent = -1  # the socket's buffer is full
            except ConnectionResetError:
                raise
            except ConnectionError as exc:  # BrokenPipeError, ...: the same to the caller
                raise ConnectionResetError(f"client gone: {exc}") from exc
            except OSError as exc:
                if offset == start and exc.errno in _UNSUPPORTED:
                    raise ZeroCopyUnavailable(f"os.sendfile: {exc.strerror}") from exc
                raise  # a failure of the file (EIO...): the store's, reported as such
            if sent == 0:
                # Shorter than its recorded size: a damaged store, not a client gone.
                raise OSError(errno.EIO, f"the file ended {end - offset} bytes before its size")
            if sent > 0:
                offset += sent
            if offset < end:
                ready = loop.create_future()
                try:
                    async with asyncio.timeout(stall_timeout):
                        await ready
                except TimeoutError:
                    log.info(
                        "closed a connection whose client stopped reading its answer",
                        extra={"fields": {"limit": "limits.responseStallTimeout", "seconds": stall_timeout}},
                    )
                    raise ConnectionResetError(
                        f"the client read nothing for {stall_timeout:g}s (limits.responseStallTimeout)"
                    ) from None
    finally:
        loop.remove_writer(out)
