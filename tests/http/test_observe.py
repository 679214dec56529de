"""hareg/http/observe.py's ``send_now`` over a real socket: a client that
hangs up before its answer is sent ends the request quietly (aiohttp logs a
499-style disconnect, never an error with a traceback)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
from aiohttp import web

from hareg.http.observe import send_now

WAIT = 30.0


async def test_a_client_gone_before_the_answer_leaves_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    arrived, gone, answered = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await gone.wait()
        # The transport notices the reset on the loop: give it turns until it closes.
        async with asyncio.timeout(WAIT):
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.01)
        response = web.Response(text="late")
        await send_now(request, response)
        answered.set()
        return response

    app = web.Application()
    app.router.add_get("/slow", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(WAIT):
                await arrived.wait()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            writer.close()
            gone.set()
            async with asyncio.timeout(WAIT):
                await answered.wait()
            await asyncio.sleep(0)  # aiohttp finishes the request after the handler returns
        errors = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
    finally:
        await runner.cleanup()
