"""Connection timeouts over real sockets: a request's headers must arrive within
limits.requestHeaderTimeout, an idle keep-alive connection is closed after
limits.idleConnectionTimeout, a request whose handler runs (or whose body
streams in) longer than the header timeout is not cut off, and connections
beyond limits.maxConnections are closed when accepted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import aiohttp
import pytest
from aiohttp import web
from oci_helpers import sha256

from hareg.http.app import init_app
from hareg.http.base import error_middleware
from hareg.http.connections import CONNECTIONS, ConnectionGuard, start_listener
from hareg.http.keys import HttpSettings
from hareg.registry.service import Registry

HEADER_TIMEOUT = 1.0
# Far longer than the header timeout, so that a close at the header timeout
# cannot be aiohttp's own idle close (which also ends a connection waiting
# for headers); the margin absorbs a busy machine.
IDLE_TIMEOUT = 8.0
WAIT = 30.0  # the generous bound for any event

Serve = Callable[..., Awaitable[tuple[str, int]]]


@pytest.fixture
async def serve(registry: Registry) -> AsyncIterator[Serve]:
    """Start the registry behind a guarded listener on 127.0.0.1, as ``hareg serve`` does."""
    async with AsyncExitStack() as stack:

        async def start(
            settings: HttpSettings | None = None, guard: ConnectionGuard | None = None
        ) -> tuple[str, int]:
            app = init_app(registry, settings, connections=guard or ConnectionGuard(HEADER_TIMEOUT))
            runner = web.AppRunner(app, keepalive_timeout=IDLE_TIMEOUT, shutdown_timeout=1.0)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            server = await start_listener(runner, "127.0.0.1", 0)
            stack.callback(server.close)
            port: int = server.sockets[0].getsockname()[1]
            return "127.0.0.1", port

        yield start


async def closed_after(reader: asyncio.StreamReader) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and what it sent before."""
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), WAIT)
    return time.monotonic() - start, data


async def test_half_a_request_line_is_disconnected_within_the_header_timeout(serve: Serve) -> None:
    host, port = await serve()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /v2/ HT")
    await writer.drain()
    elapsed, data = await closed_after(reader)
    writer.close()
    assert data == b"" and HEADER_TIMEOUT * 0.9 <= elapsed < IDLE_TIMEOUT


async def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(serve: Serve) -> None:
    host, port = await serve()
    reader, writer = await asyncio.open_connection(host, port)
    elapsed, data = await closed_after(reader)
    writer.close()
    # The header timeout counts from the opening, before the (longer) idle timeout.
    assert data == b"" and HEADER_TIMEOUT * 0.9 <= elapsed < IDLE_TIMEOUT


async def test_headers_trickling_in_are_cut_off_at_the_header_timeout(serve: Serve) -> None:
    host, port = await serve()
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /v2/ HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        data = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        sender.cancel()
        writer.close()
    assert data == b"" and HEADER_TIMEOUT * 0.9 <= time.monotonic() - start < IDLE_TIMEOUT


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(serve: Serve) -> None:
    host, port = await serve()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))[15:]
    )
    await reader.readexactly(length)
    elapsed, data = await closed_after(reader)
    writer.close()
    # Waiting for a next request is governed by the idle timeout, not the header one.
    assert data == b"" and IDLE_TIMEOUT * 0.9 <= elapsed < WAIT


async def test_a_body_streaming_longer_than_the_header_timeout_is_served(
    serve: Serve, registry: Registry
) -> None:
    host, port = await serve(HttpSettings(body_stall_timeout=HEADER_TIMEOUT * 2))
    status = await registry.uploads.start("slow")
    location = registry.upload_signer.sign("slow", status.upload_id)
    data = b"0123456789" * 5
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"PATCH /v2/slow/blobs/uploads/{status.upload_id}?_state={location} HTTP/1.1\r\n"
        f"Host: a\r\nContent-Length: {len(data)}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
    )
    start = time.monotonic()
    for i in range(0, len(data), 10):  # about 2.5 x the header timeout in all, never stalling
        writer.write(data[i : i + 10])
        await writer.drain()
        await asyncio.sleep(HEADER_TIMEOUT / 2)  # a paced sender, not a wait for an event
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    writer.close()
    assert time.monotonic() - start > HEADER_TIMEOUT
    assert head.startswith(b"HTTP/1.1 202"), head
    info = await registry.uploads.finish("slow", status.upload_id, sha256(data), None)
    assert info.size == len(data)


async def get_v2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"{}"), WAIT)


async def test_connections_beyond_the_cap_are_closed_when_accepted(serve: Serve) -> None:
    # A header timeout far beyond the test, so only the cap can close a connection.
    guard = ConnectionGuard(WAIT * 4, max_connections=2)
    host, port = await serve(guard=guard)
    first = await asyncio.open_connection(host, port)
    second = await asyncio.open_connection(host, port)
    for conn in (first, second):
        assert (await get_v2(*conn)).startswith(b"HTTP/1.1 200")
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed, nothing answered
    writer.close()
    assert guard.refused == 1
    # The two admitted connections keep being served; once one closes, a new one is admitted.
    assert (await get_v2(*first)).startswith(b"HTTP/1.1 200")
    first[1].close()
    async with asyncio.timeout(WAIT):
        while len(guard.connections) > 1:
            await asyncio.sleep(0.01)
    third = await asyncio.open_connection(host, port)
    assert (await get_v2(*third)).startswith(b"HTTP/1.1 200")
    for _, w in (second, third):
        w.close()


async def test_a_client_that_stops_reading_its_blob_is_disconnected(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """limits.responseStallTimeout: a pull whose client reads nothing more
    (its socket buffers full) is cut off, on the zero-copy path too."""
    host, port = await serve(guard=ConnectionGuard(WAIT, response_stall_timeout=HEADER_TIMEOUT))
    blob = os.urandom(16 * 1024 * 1024)
    digest = sha256(blob)
    async with aiohttp.ClientSession() as session:
        url = f"http://{host}:{port}/v2/stall/blobs/uploads/?digest={digest}"
        async with session.post(url, data=blob, headers={"Content-Type": "application/octet-stream"}) as r:
            assert r.status == 201, await r.text()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
    sock.connect((host, port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    with caplog.at_level(logging.INFO, logger="hareg.http"):
        writer.write(f"GET /v2/stall/blobs/{digest} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 200"), head
        async with asyncio.timeout(WAIT):  # the client reads nothing: the server gives up on it
            while not any("stopped reading" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.05)
    received = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(1 << 20), WAIT):
            received += len(chunk)
    writer.close()
    assert received < len(blob)


async def test_a_client_that_stops_reading_a_streamed_answer_is_disconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same bound on aiohttp's own writes (a streamed body: TLS, an S3
    stream): the guard's timer runs while the transport's writes are paused."""
    ended = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(1024):  # 64 MiB if it were all read
                await response.write(b"x" * 65536)
        finally:
            ended.set()
        return response

    app = web.Application(middlewares=[error_middleware])
    app[CONNECTIONS] = ConnectionGuard(WAIT, response_stall_timeout=HEADER_TIMEOUT)
    app.router.add_get("/big", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    server = await start_listener(runner, "127.0.0.1", 0)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.sockets[0].getsockname())
        sock.setblocking(False)
        _reader, writer = await asyncio.open_connection(sock=sock)
        with caplog.at_level(logging.INFO, logger="hareg.http"):
            writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(WAIT):  # the handler's write fails once the guard cuts it off
                await ended.wait()
        assert any("stopped reading" in r.getMessage() for r in caplog.records)
        writer.close()
    finally:
        server.close()
        await runner.cleanup()
