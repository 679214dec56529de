"""Hostile clients racing one upload, over real HTTP, on both drivers.

Whatever the interleaving, a blob stored under a digest holds bytes that hash
to it (invariant 3 of docs/invariants.md), a chunk is acknowledged only if it is part of the
verified bytes, and of a cancel and a close (or two closes) exactly one wins.
Each case runs several rounds: the outcome of each round may differ, the
rules may not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import Client, sha256, start_upload
from registries import running
from seaweedfs_fixtures import S3StoreFactory

from hareg.http.app import init_app
from hareg.kv.etcd import EtcdKV
from hareg.registry.service import Registry
from hareg.storage.base import BlobStore
from hareg.storage.filesystem import FilesystemBlobStore

ROUNDS = 4
WAIT = 60.0  # generous: CI shares two cores with everything else


@pytest.fixture(params=["filesystem", "s3"])
async def registry(
    request: pytest.FixtureRequest, kv: EtcdKV, tmp_path: Path, s3_store: S3StoreFactory
) -> AsyncIterator[Registry]:
    store: BlobStore = (
        FilesystemBlobStore(tmp_path / "blobs") if request.param == "filesystem" else s3_store()
    )
    async with running(kv, store) as reg:
        yield reg


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[Client]:
    async with TestClient(TestServer(init_app(registry))) as c:
        yield c


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(WAIT):
        while not await condition():
            await asyncio.sleep(0.01)


def code_of(body: bytes) -> str:
    """The first error code of an OCI error body (never a traceback or HTML)."""
    code: str = json.loads(body)["errors"][0]["code"]
    return code


async def status_of(response: Awaitable[ClientResponse]) -> tuple[int, str | None]:
    r = await response
    body = await r.read()
    return r.status, (code_of(body) if r.status >= 400 else None)


async def stored_bytes_are_sound(registry: Registry, digest: str) -> None:
    """Invariant 3 of docs/invariants.md on the blob store itself, not only through the API."""
    if await registry.store.stat(digest) is None:
        return
    algorithm, _, hexdigest = digest.partition(":")
    h = hashlib.new(algorithm)
    async for chunk in registry.store.read(digest):
        h.update(chunk)
    assert h.hexdigest() == hexdigest, f"the store holds wrong bytes under {digest}"


async def slow_patch_against_close(
    client: Client, registry: Registry, repo: str, wait_for_seal: bool
) -> None:
    """One round: a PATCH whose body stalls half-way, and the closing PUT with
    the digest of the bytes before it."""
    first, late = os.urandom(1000), os.urandom(400)
    digest = sha256(first)
    location = await start_upload(client, repo)
    r = await client.patch(location, data=first, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202, await r.text()
    location = r.headers["Location"]
    upload_id = r.headers["Docker-Upload-UUID"]

    sent_half = asyncio.Event()
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield late[:200]
        sent_half.set()
        await release.wait()
        yield late[200:]

    patch = asyncio.create_task(
        status_of(
            client.patch(location, data=slow_body(), headers={"Content-Type": "application/octet-stream"})
        )
    )
    await asyncio.wait_for(sent_half.wait(), WAIT)
    put = asyncio.create_task(status_of(client.put(f"{location}&digest={digest}")))

    async def sealed_or_done() -> bool:
        if put.done():
            return True
        record = await registry.meta.get_upload(upload_id)
        return record is None or bool(record.sealed)

    # Let the slow body go on once the close has begun, or (other rounds) at once.
    if wait_for_seal:
        await wait_for(sealed_or_done, "the closing PUT to seal the upload")
    release.set()
    (put_status, put_code), (patch_status, patch_code) = await asyncio.gather(put, patch)

    assert put_status in (201, 400, 404, 503), (put_status, put_code)
    assert patch_status in (202, 404, 416, 503), (patch_status, patch_code)
    assert not (put_status == 201 and patch_status == 202), "a chunk was acknowledged but is not in the blob"
    if put_status == 201:
        got = await client.get(f"/v2/{repo}/blobs/{digest}")
        assert got.status == 200
        assert await got.read() == first
    await stored_bytes_are_sound(registry, digest)
    await stored_bytes_are_sound(registry, sha256(first + late))


async def test_slow_patch_racing_the_closing_put_never_stores_wrong_bytes(
    client: Client, registry: Registry
) -> None:
    for round_ in range(ROUNDS):
        await slow_patch_against_close(client, registry, f"race/slow{round_}", wait_for_seal=round_ % 2 == 0)


async def test_a_closed_upload_refuses_every_further_patch_and_put(client: Client) -> None:
    data = os.urandom(3000)
    location = await start_upload(client, "race/closed")
    r = await client.put(f"{location}&digest={sha256(data)}", data=data)
    assert r.status == 201, await r.text()
    for method, extra in (
        ("PATCH", ""),
        ("PUT", f"&digest={sha256(data)}"),
        ("PUT", f"&digest={sha256(b'x')}"),
    ):
        r = await client.request(method, location + extra, data=b"x")
        assert r.status == 404, (method, r.status)
        assert code_of(await r.read()) == "BLOB_UPLOAD_UNKNOWN"
    got = await client.get(f"/v2/race/closed/blobs/{sha256(data)}")
    assert await got.read() == data


async def test_cancel_racing_close_has_one_winner(client: Client, registry: Registry) -> None:
    for round_ in range(ROUNDS):
        repo = f"race/cancel{round_}"
        data = os.urandom(5000)
        location = await start_upload(client, repo)
        r = await client.patch(location, data=data, headers={"Content-Type": "application/octet-stream"})
        location = r.headers["Location"]
        delete, put = await asyncio.gather(
            status_of(client.delete(location)), status_of(client.put(f"{location}&digest={sha256(data)}"))
        )
        statuses = {delete[0], put[0]}
        assert statuses in ({204, 404}, {201, 404}), (delete, put)
        loser = delete if put[0] == 201 else put
        assert loser[1] == "BLOB_UPLOAD_UNKNOWN", loser
        head = await client.head(f"/v2/{repo}/blobs/{sha256(data)}")
        assert head.status == (200 if put[0] == 201 else 404)
        await stored_bytes_are_sound(registry, sha256(data))


async def test_two_racing_closes_never_give_a_retryable_error(client: Client) -> None:
    for round_ in range(ROUNDS):
        data = os.urandom(5000)
        location = await start_upload(client, f"race/close{round_}")
        r = await client.patch(location, data=data, headers={"Content-Type": "application/octet-stream"})
        location = r.headers["Location"]
        results = await asyncio.gather(
            *(status_of(client.put(f"{location}&digest={sha256(data)}")) for _ in range(2))
        )
        # The loser is told the upload is gone, never to retry a 503; on S3 both
        # may commit the same verified bytes (no lock), which is a harmless 201.
        assert sorted(results, key=lambda r: r[0]) in (
            [(201, None), (404, "BLOB_UPLOAD_UNKNOWN")],
            [(201, None), (201, None)],
        ), results


async def test_a_patch_cut_off_mid_body_leaves_the_upload_as_it_was(
    client: Client, registry: Registry
) -> None:
    location = await start_upload(client, "race/cut")
    r = await client.patch(location, data=b"kept", headers={"Content-Type": "application/octet-stream"})
    location = r.headers["Location"]

    class ClientGaveUp(Exception):
        pass

    async def broken_body() -> AsyncIterator[bytes]:
        yield b"half of a chunk " * 1000
        raise ClientGaveUp

    with pytest.raises(Exception):  # noqa: B017 - aiohttp wraps the body's failure its own way
        await client.patch(location, data=broken_body(), headers={"Content-Type": "application/octet-stream"})

    async def settled() -> bool:
        r = await client.get(location)
        return r.status == 204 and r.headers["Range"] in ("0-3", "0-16003")

    await wait_for(settled, "the server to notice the broken body")
    r = await client.get(location)
    if isinstance(registry.store, FilesystemBlobStore):
        assert r.headers["Range"] == "0-3"  # all or nothing: the half chunk was taken back
    r = await client.put(f"{location}&digest={sha256(b'kept')}")
    assert r.status == 201, await r.text()


async def test_a_repush_repairs_a_damaged_blob(client: Client, registry: Registry) -> None:
    good = os.urandom(20_000)
    digest = sha256(good)
    r = await client.post(f"/v2/heal/me/blobs/uploads/?digest={digest}", data=good)
    assert r.status == 201
    # Damage it behind the registry's back: same size on disk, another size on S3
    # (the S3 driver checks only the size of an object it would reuse).
    store: Any = registry.store
    if isinstance(store, FilesystemBlobStore):
        await asyncio.to_thread(Path(store.local_path(digest) or "").write_bytes, bytes(len(good)))
    else:
        await store.upload_start("damage")
        await store.upload_write("damage", 0, _one(b"rotten"))
        await store.upload_commit("damage", digest, 6)
    location = await start_upload(client, "heal/me")
    r = await client.put(f"{location}&digest={digest}", data=good)
    assert r.status == 201, await r.text()
    got = await client.get(f"/v2/heal/me/blobs/{digest}")
    assert await got.read() == good
    await stored_bytes_are_sound(registry, digest)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
