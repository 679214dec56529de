"""/v2/, unknown endpoints, the error format, and request bodies that stall."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kv_hooks import HookedKV
from oci_helpers import config_blob, expect_error, image_manifest, push_blob, push_image, put_manifest, sha256

from hareg.config.model import RequestLimits, RequestsConfig
from hareg.http.app import init_app
from hareg.http.base import BODY_CHUNK, error_middleware
from hareg.http.keys import HttpSettings
from hareg.http.limits import LIMITS
from hareg.kv.base import Compare, Put, TxnOp
from hareg.registry.service import Registry


async def test_api_base_answers_200_with_version_header(client: TestClient[object, object]) -> None:
    r = await client.get("/v2/")
    assert r.status == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert await r.json() == {}


async def test_unknown_endpoint_is_a_json_404(client: TestClient[object, object]) -> None:
    r = await client.get("/v2/repo/nonsense/path")
    assert r.status == 404
    body = await r.json()
    assert body["errors"][0]["code"] == "UNSUPPORTED"


async def test_wrong_method_is_a_json_405_with_allow(client: TestClient[object, object]) -> None:
    r = await client.post("/v2/repo/tags/list")
    assert r.status == 405
    assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"
    assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v2/", {"GET", "HEAD"}),
        ("POST", "/v2/_catalog", {"GET", "HEAD"}),
        ("POST", "/v2/repo/manifests/latest", {"GET", "HEAD", "PUT", "DELETE"}),
        ("PATCH", "/v2/repo/blobs/sha256:" + "0" * 64, {"GET", "HEAD", "DELETE"}),
        ("POST", "/v2/repo/blobs/uploads/some-id", {"GET", "HEAD", "PATCH", "PUT", "DELETE"}),
        ("GET", "/v2/repo/blobs/uploads/", {"POST"}),
        ("DELETE", "/v2/repo/referrers/sha256:" + "0" * 64, {"GET", "HEAD"}),
    ],
)
async def test_every_405_names_the_allowed_methods(
    client: TestClient[object, object], method: str, path: str, allowed: set[str]
) -> None:
    r = await client.request(method, path)
    assert r.status == 405
    assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"
    assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed


# ------------------------------------------------------------------ a stalled request body

STALL = 1.0
WAIT = 30.0  # the generous bound for any event on a busy machine


@pytest.fixture
async def one_write_slot(registry: Registry) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """One write slot, no queue, and a short limits.bodyStallTimeout."""
    settings = HttpSettings(
        requests=RequestsConfig(write=RequestLimits(max_running=1)), body_stall_timeout=STALL
    )
    async with TestClient(TestServer(init_app(registry, settings))) as c:
        yield c


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One response (head and Content-Length body), without waiting for the
    connection to close (aiohttp first drains what the client still sends)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), WAIT)


async def stalled_patch(
    client: TestClient[web.Request, web.Application], registry: Registry, repo: str, sent: bytes
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """Open an upload and send a PATCH that declares more bytes than ``sent``, then stops."""
    status = await registry.uploads.start(repo)
    token = registry.upload_signer.sign(repo, status.upload_id)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        f"PATCH /v2/{repo}/blobs/uploads/{status.upload_id}?_state={token} HTTP/1.1\r\nHost: a\r\n"
        f"Content-Length: {len(sent) + 1000}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + sent
    )
    await writer.drain()
    return status.upload_id, reader, writer


async def test_a_stalled_patch_is_dropped_and_frees_its_write_slot(
    one_write_slot: TestClient[web.Request, web.Application], registry: Registry
) -> None:
    client = one_write_slot
    _, reader, writer = await stalled_patch(client, registry, "stall", b"x" * 400)
    limiter = client.app[LIMITS].write
    async with asyncio.timeout(WAIT):
        while limiter.running == 0:  # the PATCH holds the one write slot...
            await asyncio.sleep(0.01)
    await expect_error(await client.post("/v2/stall/blobs/uploads/"), 429, "TOOMANYREQUESTS")
    start = time.monotonic()
    answer = await read_answer(reader)  # ...until the stall: 408
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"Connection: close" in answer
    assert b"BLOB_UPLOAD_INVALID" in answer and b"limits.bodyStallTimeout" in answer
    assert time.monotonic() - start < WAIT and limiter.running == 0
    r = await client.post("/v2/stall/blobs/uploads/")
    assert r.status == 202


async def test_the_bytes_of_a_stalled_patch_are_not_kept(
    one_write_slot: TestClient[web.Request, web.Application], registry: Registry
) -> None:
    client = one_write_slot
    # More than one BODY_CHUNK, so that some bytes reach the blob store before the stall.
    upload_id, reader, writer = await stalled_patch(client, registry, "stall", b"x" * (BODY_CHUNK + 4096))
    answer = await read_answer(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert await registry.store.upload_size(upload_id) == 0


async def test_a_stalled_manifest_body_is_a_408_manifest_invalid(
    one_write_slot: TestClient[web.Request, web.Application], registry: Registry
) -> None:
    client = one_write_slot
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"PUT /v2/repo/manifests/t HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n"
        b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\r\n" + b'{"schemaVersion": 2, '
    )
    await writer.drain()
    answer = await read_answer(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"MANIFEST_INVALID" in answer and b"limits.bodyStallTimeout" in answer
    assert await registry.meta.get_tag("repo", "t") is None


async def test_a_write_that_keeps_losing_its_compares_is_a_503_not_a_500(
    hooked: tuple[Registry, HookedKV, TestClient[object, object]],
) -> None:
    """Another writer moves the tag before every attempt of this push, until the
    store gives up: the client is told to retry (503), nothing is written."""
    registry, kv, client = hooked
    image = await push_image(client, "repo", "v1", seed="one")
    other = await push_image(client, "repo", "v2", seed="two")
    tag_key = registry.meta.keys.tag("repo", "v1")
    flips = 0
    moving = False

    async def move_the_tag_first(compares: Sequence[Compare], ops: Sequence[TxnOp]) -> None:
        nonlocal flips, moving
        if moving or flips >= 100 or not any(isinstance(op, Put) and op.key == tag_key for op in ops):
            return
        flips += 1
        moving = True
        try:
            target = other.digest if flips % 2 else image.digest
            await registry.meta.move_tag("repo", "v1", target, "rollback")
        finally:
            moving = False

    kv.before_txn = move_the_tag_first
    body = image_manifest(config_blob("three"), [])
    await push_blob(client, "repo", config_blob("three"))
    r = await put_manifest(client, "repo", "v1", body)
    kv.before_txn = None
    assert r.status == 503
    entry = (await r.json())["errors"][0]
    assert entry["code"] == "UNAVAILABLE" and "concurrent" in entry["message"], entry
    assert r.headers.get("Retry-After") == "1", dict(r.headers)
    r = await client.get(f"/v2/repo/manifests/{sha256(body)}")
    assert r.status == 404


async def test_a_client_gone_mid_body_ends_the_request_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streamed answer whose client resets the connection: the handler's
    write fails, the error middleware ends the request quietly (no aiohttp
    'Error handling request' with a traceback)."""
    streaming, gone, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            await response.write(b"x" * 65536)
            streaming.set()
            await gone.wait()
            async with asyncio.timeout(30):
                while True:  # until the write meets the reset connection
                    await response.write(b"x" * 65536)
        finally:
            ended.set()

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/stream", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            _reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
            writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(30):
                await streaming.wait()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            writer.close()
            gone.set()
            async with asyncio.timeout(30):
                await ended.wait()
            for _ in range(10):  # aiohttp finishes the request on the loop's next turns
                await asyncio.sleep(0)
        errors = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
    finally:
        await runner.cleanup()
