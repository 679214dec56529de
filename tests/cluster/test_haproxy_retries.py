"""haproxy's retry policy, against a real haproxy and two backends: one that
drops every request it gets (a replica dying mid-request), one that answers.
A request that got no answer is re-sent to the other replica only when
running it twice is harmless."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hareg.cluster.haproxy import Backend, HaproxyError, HaproxyProcess, find_haproxy, render_config
from hareg.processes.ports import free_ports

READY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def _read_request(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(
        (int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"), 0
    )
    if length:
        await reader.readexactly(length)
    return lines[0]


@contextlib.asynccontextmanager
async def backend(port: int, seen: Counter[str], *, drop: bool) -> AsyncIterator[None]:
    """Answers /readyz; any other request is answered 200, or (``drop``) read and
    then the connection is closed without an answer.  ``seen`` counts the
    requests, a health check once it is answered."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            line = await _read_request(reader)
            method, path, _ = line.split(" ", 2)
            if path != "/readyz":
                seen[f"{method} {path}"] += 1
            if path == "/readyz" or not drop:
                writer.write(READY)
                await writer.drain()
            if path == "/readyz":
                seen["/readyz"] += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("method", "path", "resent"),
    [
        ("GET", "/v2/app/manifests/v1", True),
        ("HEAD", "/v2/app/blobs/sha256:x", True),
        ("PUT", "/v2/app/manifests/v1", True),  # a manifest PUT is idempotent
        ("POST", "/v2/app/blobs/uploads/", True),  # a new session, or a content-addressed blob
        ("POST", "/v2/app/blobs/uploads/?digest=sha256:x", True),  # a monolithic push
        ("PATCH", "/v2/app/blobs/uploads/u1", False),  # the chunk would be appended twice
        ("PUT", "/v2/app/blobs/uploads/u1?digest=sha256:x", False),  # the session is closed by the first
        ("DELETE", "/v2/app/manifests/v1", False),  # the second would answer 404
        ("DELETE", "/v2/app/blobs/uploads/u1", False),  # the second would answer BLOB_UPLOAD_UNKNOWN
        ("POST", "/hareg/v1/access/robots", False),  # the second would not hand out the first's secret
        ("PUT", "/hareg/v1/read-only", False),  # an admin request: never run twice
    ],
)
async def test_only_requests_safe_to_run_twice_are_resent(
    tmp_path: Path, method: str, path: str, resent: bool
) -> None:
    try:
        find_haproxy()
    except HaproxyError as exc:
        pytest.skip(str(exc))
    listen, dropping, answering = free_ports(3)
    seen: Counter[str] = Counter()
    answering_seen: Counter[str] = Counter()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_config(
            f"127.0.0.1:{listen}",
            # The dropping replica first: round robin sends the first request there.
            [Backend("dropping", f"127.0.0.1:{dropping}"), Backend("answering", f"127.0.0.1:{answering}")],
            check_interval="200ms",
        )
    )
    proxy = HaproxyProcess(config, listen_port=listen, log_file=tmp_path / "haproxy.log")
    async with backend(dropping, seen, drop=True), backend(answering, answering_seen, drop=False), proxy:
        async with asyncio.timeout(60):  # both servers pass their first health check
            while not (seen["/readyz"] and answering_seen["/readyz"]):
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(20):
                r = await session.request(method, f"http://127.0.0.1:{listen}{path}", data=b"x" * 10)
                status = r.status
                await r.read()
    assert seen[f"{method} {path}"] == 1  # the dropping replica got it once
    assert (status == 200) is resent, status
