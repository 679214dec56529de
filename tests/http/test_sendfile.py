"""Blob GETs on the filesystem driver, served under uvloop (as ``hareg serve``
runs) by os.sendfile on the connection's socket (hareg/http/sendfile.py):
whole and ranged bodies byte-exact for a blob larger than any socket buffer,
HEAD, a client that goes away mid-body, and TLS, where the bytes take
aiohttp's path.  ``os.sendfile`` is watched (the real call, counted) to show
which path sent them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from e2e.certs import self_signed
from oci_helpers import Client, push_blob, sha256
from registries import running

from hareg.http.app import init_app
from hareg.http.sendfile import ZeroCopyUnavailable, send_file
from hareg.kv.etcd import EtcdKV
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

BIG = random.Random(19).randbytes(20 * 1024 * 1024 + 7)  # past any socket buffer


@pytest.fixture
def sendfile_bytes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The bytes each os.sendfile call sent (the real call, counted)."""
    sent: list[int] = []
    real: Callable[..., int] = os.sendfile

    def counted(*args: Any) -> int:
        n = real(*args)
        sent.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counted)
    yield sent


class _LikeServe(TestServer):
    """aiohttp's TestServer without the handler cancellation it turns on:
    ``hareg serve`` runs without it, so a handler sees its client go away
    through its own writes."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, **{**kwargs, "handler_cancellation": False})


Body = Callable[[Client, Registry], Awaitable[None]]


def on_uvloop(
    etcd_url: str, blobs: Path, body: Body, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
) -> None:
    """Run ``body`` with a client of a filesystem-backed registry, on a uvloop
    event loop (pytest-asyncio's is asyncio's own), as ``hareg serve`` runs."""

    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        kv = await EtcdKV.connect([etcd_url], timeout=5.0)
        try:
            async with running(kv, FilesystemBlobStore(blobs)) as reg:
                server = _LikeServe(init_app(reg))
                await server.start_server(ssl=tls[0] if tls else None)
                connector = aiohttp.TCPConnector(ssl=tls[1]) if tls else None
                async with TestClient(server, connector=connector) as client:
                    await body(client, reg)
        finally:
            await kv.close()

    uvloop.run(main())


async def _digest_of(resp: aiohttp.ClientResponse) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return f"sha256:{h.hexdigest()}", size


def test_whole_and_ranged_gets_are_byte_exact(
    etcd_url: str, tmp_path: Path, sendfile_bytes: list[int]
) -> None:
    on_uvloop(etcd_url, tmp_path, lambda client, _: _whole_and_ranged(client, sendfile_bytes))


async def _whole_and_ranged(client: Client, sendfile_bytes: list[int]) -> None:
    digest = await push_blob(client, "repo", BIG)
    url = f"/v2/repo/blobs/{digest}"
    sendfile_bytes.clear()
    r = await client.get(url)
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(BIG)
    assert r.headers["Docker-Content-Digest"] == digest
    assert await _digest_of(r) == (digest, len(BIG))
    assert sum(sendfile_bytes) == len(BIG)  # every byte went by sendfile
    for header, start, stop in (
        ("bytes=1000-15000000", 1000, 15_000_001),
        (f"bytes={len(BIG) - 5}-", len(BIG) - 5, len(BIG)),
        ("bytes=-3000000", len(BIG) - 3_000_000, len(BIG)),
        ("bytes=0-0", 0, 1),
    ):
        sendfile_bytes.clear()
        r = await client.get(url, headers={"Range": header})
        assert r.status == 206, header
        assert r.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(BIG)}"
        assert await _digest_of(r) == (sha256(BIG[start:stop]), stop - start), header
        assert sum(sendfile_bytes) == stop - start
    r = await client.head(url)
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(BIG) and await r.read() == b""
    # The date conditions, on the file's mtime (Last-Modified), as aiohttp's FileResponse has them.
    r = await client.get(url, headers={"Range": "bytes=0-0"})
    last_modified = r.headers["Last-Modified"]
    future, past = "Fri, 01 Jan 2100 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"
    sendfile_bytes.clear()
    r = await client.get(url, headers={"If-Modified-Since": future})
    assert r.status == 304 and await r.read() == b"" and r.headers["Last-Modified"] == last_modified
    assert r.headers["ETag"] == f'"{digest}"'
    r = await client.get(url, headers={"If-Unmodified-Since": past})
    assert r.status == 412 and (await r.json())["errors"][0]["code"] == "UNSUPPORTED"
    assert sendfile_bytes == []
    r = await client.get(
        url, headers={"If-Modified-Since": past, "If-Unmodified-Since": future, "Range": "bytes=3-5"}
    )
    assert r.status == 206 and await r.read() == BIG[3:6]
    # Keep-alive: the connection serves the next request after a sendfile body.
    for _ in range(3):
        r = await client.get(url, headers={"Range": "bytes=10-19"})
        assert await r.read() == BIG[10:20]


def _open_fds_of(path_part: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if path_part in target:
            found.append(target)
    return found


def test_client_gone_mid_body_ends_cleanly(
    etcd_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    on_uvloop(etcd_url, tmp_path, lambda client, _: _client_gone(client, caplog))


async def _client_gone(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    digest = await push_blob(client, "repo", BIG)
    caplog.set_level(logging.INFO)
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v2/repo/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.readexactly(100_000), 30)  # part of the body, then away
    writer.transport.abort()  # a reset, with most of the body unsent

    def access_line() -> logging.LogRecord | None:
        return next(
            (
                r
                for r in caplog.records
                if r.name == "hareg.access" and digest in r.__dict__["fields"]["path"]
            ),
            None,
        )

    hex_digest = digest.split(":")[1]
    for _ in range(300):  # up to 30 s on a busy machine
        if access_line() is not None and not _open_fds_of(hex_digest):
            break
        await asyncio.sleep(0.1)
    line = access_line()
    assert line is not None and line.__dict__["fields"]["status"] == 499
    assert not _open_fds_of(hex_digest)  # the blob's file is closed
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    # The replica goes on serving.
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=0-9"})
    assert await r.read() == BIG[:10]


def test_tls_takes_aiohttps_path(etcd_url: str, tmp_path: Path, sendfile_bytes: list[int]) -> None:
    cert, key, _ = self_signed(tmp_path, "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def body(c: Client, _: Registry) -> None:
        assert c.make_url("").scheme == "https"
        digest = await push_blob(c, "repo", BIG)
        sendfile_bytes.clear()
        r = await c.get(f"/v2/repo/blobs/{digest}")
        assert r.status == 200 and await _digest_of(r) == (digest, len(BIG))
        r = await c.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=5-1000004"})
        assert r.status == 206
        assert await _digest_of(r) == (sha256(BIG[5:1_000_005]), 1_000_000)

    on_uvloop(etcd_url, tmp_path / "blobs", body, (server_ctx, client_ctx))
    assert sendfile_bytes == []  # encrypted in user space: never by sendfile


def test_a_file_sendfile_refuses_falls_back_with_nothing_sent(tmp_path: Path) -> None:
    """os.sendfile refusing the descriptors (EINVAL: a directory here) raises
    ZeroCopyUnavailable before any byte of the body: the headers it flushed
    stand and the body sent through aiohttp's writer completes the response."""
    body = b"sent the ordinary way"

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        writer = await response.prepare(request)
        assert writer is not None
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(ZeroCopyUnavailable, match=r"os\.sendfile"):
                await send_file(request.transport, writer, fd, 0, len(body))
        finally:
            os.close(fd)
        await response.write(body)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", handler)
        async with TestClient(_LikeServe(app)) as client:
            for _ in range(2):  # and the connection serves the next request
                r = await client.get("/")
                assert r.status == 200 and await r.read() == body

    uvloop.run(main())
