"""Requests that die leave nothing half-done that a re-send trips over, over
real HTTP, on both drivers (the S3 driver against a real SeaweedFS).

A PATCH or a closing PUT whose connection is reset mid-body, or whose chunk
could not be confirmed in etcd once its bytes were staged, leaves the upload
exactly as before the request (its Range, its staged bytes), so the same
request sent again succeeds; and a re-send that arrives on another replica
while the dead request's handler still runs waits for it instead of
tripping over its bytes (docs/consistency.md, "Requests that die").
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from kv_hooks import HookedKV
from oci_helpers import Client, sha256, start_upload
from registries import running
from seaweedfs_fixtures import S3StoreFactory

from hareg.http.app import init_app
from hareg.kv.base import KVUnavailable
from hareg.kv.etcd import EtcdKV
from hareg.metadata.records import UploadRecord
from hareg.metadata.writes import UNAVAILABLE_TRIES
from hareg.registry.service import Registry
from hareg.registry.streams import one_chunk
from hareg.storage.base import BlobStore
from hareg.storage.filesystem import FilesystemBlobStore

WAIT = 60.0  # generous: the machine is shared
MiB = 1 << 20
# Past one BODY_CHUNK (hareg/http/base.py), so the server stages bytes before the cut.
BODY = bytes(range(256)) * (3 * MiB // 256)
SENT_BEFORE_RESET = 3 * MiB // 2
PART = 64 * 1024  # the S3 driver's smallest part: the cut-off request has created several


StoreMaker = Callable[[], BlobStore]


@pytest.fixture(params=["filesystem", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path, s3_store: S3StoreFactory) -> StoreMaker:
    """Stores of one registry: each call is another replica's view of the same bytes."""
    if request.param == "filesystem":
        return lambda: FilesystemBlobStore(tmp_path / "blobs")
    return lambda: s3_store(part_size=PART)


@asynccontextmanager
async def replica(
    kv: Any, store: BlobStore, prefix: str | None = None
) -> AsyncIterator[tuple[Registry, Client]]:
    async with (
        running(kv, store, prefix=prefix) as reg,
        TestClient(TestServer(init_app(reg))) as client,
    ):
        yield reg, client


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not await condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"waited {WAIT:g}s for {what}") from None


def upload_id_of(location: str) -> str:
    return urlsplit(location).path.rsplit("/", 1)[1]


async def staged(reg: Registry, upload_id: str) -> int:
    return await reg.store.upload_size(upload_id) or 0


async def record(reg: Registry, upload_id: str) -> UploadRecord:
    found = await reg.meta.get_upload(upload_id)
    assert found is not None
    return found


async def send_then_reset(
    client: Client, method: str, target: str, headers: dict[str, str], started: Callable[[], Awaitable[bool]]
) -> None:
    """Send the request line, the headers and part of the body, wait until
    ``started`` (the server staged some of it), then reset the connection."""
    _reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = f"{method} {target} HTTP/1.1\r\nHost: registry\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    writer.write(head.encode() + b"\r\n" + BODY[:SENT_BEFORE_RESET])
    await writer.drain()
    await wait_for(started, "the server to stage part of the body")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    writer.transport.abort()


def patch_headers(start: int = 0) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(BODY)),
        "Content-Range": f"{start}-{start + len(BODY) - 1}",
    }


async def expect_as_before(reg: Registry, client: Client, location: str, size: int) -> None:
    """The upload's Range and staged bytes are what they were before the dead request."""
    upload_id = upload_id_of(location)
    await wait_for(lambda: _settled(reg, upload_id, size), f"the staged bytes to be back at {size}")
    r = await client.get(location)
    assert r.status == 204, await r.text()
    assert r.headers["Range"] == f"0-{max(size - 1, 0)}"


async def _settled(reg: Registry, upload_id: str, size: int) -> bool:
    return (await record(reg, upload_id)).writer == "" and await staged(reg, upload_id) == size


async def close_and_check(client: Client, location: str, data: bytes) -> None:
    digest = sha256(data)
    r = await client.put(location, params={"digest": digest})
    assert r.status == 201, await r.text()
    blob = await client.get(f"/v2/repo/blobs/{digest}")
    assert blob.status == 200
    assert await blob.read() == data


async def test_patch_reset_mid_body_can_be_sent_again(kv: EtcdKV, make_store: StoreMaker) -> None:
    async with replica(kv, make_store()) as (reg, client):
        location = await start_upload(client, "repo")
        upload_id = upload_id_of(location)
        await send_then_reset(client, "PATCH", location, patch_headers(), lambda: _has_staged(reg, upload_id))
        await expect_as_before(reg, client, location, 0)
        r = await client.patch(location, data=BODY, headers=patch_headers())
        assert r.status == 202, await r.text()
        assert r.headers["Range"] == f"0-{len(BODY) - 1}"
        await close_and_check(client, r.headers["Location"], BODY)


async def test_closing_put_reset_mid_body_can_be_sent_again(kv: EtcdKV, make_store: StoreMaker) -> None:
    async with replica(kv, make_store()) as (reg, client):
        location = await start_upload(client, "repo")
        upload_id = upload_id_of(location)
        first = b"first chunk"
        r = await client.patch(location, data=first, headers={"Content-Range": f"0-{len(first) - 1}"})
        assert r.status == 202, await r.text()
        location = r.headers["Location"]
        target = f"{location}&digest={sha256(first + BODY)}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(BODY))}
        await send_then_reset(
            client, "PUT", target, headers, lambda: _has_staged(reg, upload_id, more_than=len(first))
        )
        await expect_as_before(reg, client, location, len(first))
        r = await client.put(target, data=BODY, headers=headers)
        assert r.status == 201, await r.text()
        blob = await client.get(f"/v2/repo/blobs/{sha256(first + BODY)}")
        assert await blob.read() == first + BODY


async def _has_staged(reg: Registry, upload_id: str, more_than: int = 0) -> bool:
    return await staged(reg, upload_id) > more_than


async def test_chunk_whose_confirmation_fails_after_staging_can_be_sent_again(
    kv: EtcdKV, make_store: StoreMaker
) -> None:
    """etcd fails the reads that would confirm the chunk, once its bytes are
    staged (every try: a read that fails is tried again, as a write rides out
    an election): 503, and the upload is as before, so the re-send succeeds."""
    hooked = HookedKV(kv)
    async with replica(hooked, make_store()) as (reg, client):
        location = await start_upload(client, "repo")
        upload_id = upload_id_of(location)
        key = reg.meta.keys.upload(upload_id)
        failed: list[bytes] = []

        async def fail_after_staging(read: bytes) -> None:
            if (
                read == key
                and len(failed) < UNAVAILABLE_TRIES
                and (failed or await staged(reg, upload_id) > 0)
            ):
                failed.append(read)
                raise KVUnavailable("etcd cut off (test)")

        hooked.after_get = fail_after_staging
        r = await client.patch(location, data=BODY, headers=patch_headers())
        assert r.status == 503, await r.text()
        assert failed
        await expect_as_before(reg, client, location, 0)
        r = await client.patch(location, data=BODY, headers=patch_headers())
        assert r.status == 202, await r.text()
        await close_and_check(client, r.headers["Location"], BODY)


async def test_resend_on_another_replica_waits_for_the_dead_request(
    kv: EtcdKV, make_store: StoreMaker
) -> None:
    """The dead PATCH's handler is still running on replica A (its clean-up
    held in etcd) when the re-send reaches replica B: B waits for A's claim
    on the upload to end, then succeeds; it never sees A's bytes."""
    gate = asyncio.Event()
    holding: list[str] = []
    hooked = HookedKV(kv)
    watched = HookedKV(kv)
    reads_on_b: list[bytes] = []
    prefix = f"/test-{uuid.uuid4().hex[:12]}"  # one registry, two replicas
    async with (
        replica(hooked, make_store(), prefix) as (reg_a, client_a),
        replica(watched, make_store(), prefix) as (reg_b, client_b),
    ):
        for reg in (reg_a, reg_b):  # only A's release may let B in: no claim lapses in this test
            reg.uploads.claim_ttl = reg.uploads.claim_wait = 10 * WAIT
        location = await start_upload(client_a, "repo")
        upload_id = upload_id_of(location)
        key = reg_a.meta.keys.upload(upload_id)

        async def hold_clean_up(_compares: Any, ops: Any) -> None:
            if holding and any(getattr(op, "key", None) == key for op in ops):
                await gate.wait()

        async def count(read: bytes) -> None:
            if read == key:
                reads_on_b.append(read)

        hooked.before_txn = hold_clean_up
        watched.after_get = count

        async def a_staged() -> bool:
            if await staged(reg_a, upload_id) > 0:
                holding.append("A's next write of the record waits")
                return True
            return False

        await send_then_reset(client_a, "PATCH", location, patch_headers(), a_staged)

        async def send_again() -> ClientResponse:
            return await client_b.patch(location, data=BODY, headers=patch_headers())

        resend = asyncio.create_task(send_again())
        # B found the upload claimed and keeps looking (session read, then claim attempts).
        await wait_for(lambda: _waiting(reads_on_b, resend), "replica B to wait for A's claim")
        if resend.done():
            r = resend.result()
            raise AssertionError(f"B answered at once, {r.status}: {await r.text()}")
        gate.set()
        r = await asyncio.wait_for(resend, WAIT)
        assert r.status == 202, await r.text()
        assert r.headers["Range"] == f"0-{len(BODY) - 1}"
        await close_and_check(client_b, r.headers["Location"], BODY)


async def _waiting(reads: list[bytes], resend: asyncio.Task[ClientResponse]) -> bool:
    return len(reads) >= 4 or resend.done()


async def test_claim_of_a_writer_that_died_lapses_and_its_bytes_are_dropped(
    kv: EtcdKV, make_store: StoreMaker
) -> None:
    """A writer whose replica died holds its claim until it lapses, with
    bytes staged past the acknowledged size: the next PATCH waits for the
    lapse, takes the upload over, drops those bytes and succeeds."""
    async with replica(kv, make_store()) as (reg, client):
        location = await start_upload(client, "repo")
        upload_id = upload_id_of(location)
        claimed = await reg.meta.claim_upload(upload_id, "repo", "a-writer-that-died", 1.0)
        assert claimed is not None and claimed.size == 0
        assert await reg.store.upload_write(upload_id, 0, one_chunk(b"x" * (3 * PART))) == 3 * PART
        r = await client.get(location)
        assert r.headers["Range"] == "0-0"  # the dead writer's bytes were never acknowledged
        r = await client.patch(location, data=BODY, headers=patch_headers())
        assert r.status == 202, await r.text()
        assert (await record(reg, upload_id)).size == len(BODY)
        await close_and_check(client, r.headers["Location"], BODY)


async def test_handler_cancelled_mid_body_leaves_the_upload_as_it_was(
    kv: EtcdKV, make_store: StoreMaker
) -> None:
    """The request's task is cancelled (a server shutting down, a handler
    cancelled on disconnect) while its body streams: the bytes it staged
    are given back all the same, and the same chunk is accepted after."""
    async with replica(kv, make_store()) as (reg, client):
        location = await start_upload(client, "repo")
        upload_id = upload_id_of(location)
        more = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield BODY[:SENT_BEFORE_RESET]
            await more.wait()  # never set: the request is cancelled here
            yield BODY[SENT_BEFORE_RESET:]

        task = asyncio.create_task(reg.uploads.write("repo", upload_id, body(), start=0, length=len(BODY)))
        await wait_for(lambda: _has_staged(reg, upload_id), "the chunk's first bytes to be staged")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await expect_as_before(reg, client, location, 0)
        r = await client.patch(location, data=BODY, headers=patch_headers())
        assert r.status == 202, await r.text()


async def test_a_long_body_keeps_its_claim(kv: EtcdKV, make_store: StoreMaker) -> None:
    """A body that streams for longer than a claim lasts renews it: a PATCH
    racing it waits for it to end (then is refused for its range) instead
    of taking the upload over and dropping its bytes."""
    async with replica(kv, make_store()) as (reg, client):
        reg.uploads.claim_ttl, reg.uploads.claim_wait = 2.0, 10 * WAIT
        location = await start_upload(client, "repo")
        upload_id = upload_id_of(location)
        pieces = [bytes([i]) * 1000 for i in range(20)]
        halfway = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            for i, piece in enumerate(pieces):
                if i == len(pieces) // 2:
                    halfway.set()
                await asyncio.sleep(0.2)  # the whole body takes twice the claim's life
                yield piece

        data = b"".join(pieces)
        long_write = asyncio.create_task(
            reg.uploads.write("repo", upload_id, slow(), start=0, length=len(data))
        )
        await halfway.wait()
        r = await client.patch(location, data=b"racer", headers={"Content-Range": "0-4"})
        assert r.status == 416, await r.text()  # it waited: the long body is in
        assert (await long_write).size == len(data)
        await close_and_check(client, location, data)


async def test_acknowledged_bytes_the_store_lost_are_sent_again(kv: EtcdKV, tmp_path: Path) -> None:
    """A filesystem crash may lose the unsynced tail of a staging: the next
    chunk is told where the staging really ends (416 with its Range), the
    record follows, and the client resumes from there."""
    async with replica(kv, FilesystemBlobStore(tmp_path / "blobs")) as (_, client):
        location = await start_upload(client, "repo")
        upload_id = upload_id_of(location)
        r = await client.patch(location, data=b"0123456789", headers={"Content-Range": "0-9"})
        assert r.status == 202, await r.text()
        os.truncate(tmp_path / "blobs" / "uploads" / upload_id, 4)  # what the crash kept
        r = await client.patch(location, data=b"abc", headers={"Content-Range": "10-12"})
        assert r.status == 416, await r.text()
        assert r.headers["Range"] == "0-3"
        r = await client.get(location)
        assert r.headers["Range"] == "0-3"
        r = await client.patch(location, data=b"456789abc", headers={"Content-Range": "4-12"})
        assert r.status == 202, await r.text()
        await close_and_check(client, r.headers["Location"], b"0123456789abc")
