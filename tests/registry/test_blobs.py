"""BlobService: how a blob GET is served, what a HEAD and a mount cost,
against real stores (the filesystem driver and S3 on SeaweedFS) and a real
etcd (counted by the server's own wrappers: InstrumentedKV, CheckedBlobStore)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from seaweedfs_fixtures import S3StoreFactory

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import KV
from hareg.kv.etcd import EtcdKV
from hareg.kv.instrumented import InstrumentedKV
from hareg.registry.blobs import BlobFile, BlobRedirect, BlobStream
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.results import BlobInfo
from hareg.registry.service import Registry
from hareg.storage.base import BlobStore
from hareg.storage.checked import CheckedBlobStore
from hareg.storage.filesystem import FilesystemBlobStore

BLOB = bytes(range(256)) * 4  # every offset distinguishable
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@asynccontextmanager
async def _registry_with_blob(kv: KV, store: BlobStore) -> AsyncIterator[tuple[Registry, BlobInfo]]:
    """A registry on ``store`` whose repository ``repo`` holds BLOB."""
    reg = Registry(
        kv, store, SystemClock(), RandomIds(), prefix=f"/blobs-{uuid.uuid4().hex[:10]}", cache=False
    )
    try:
        await reg.start()
        await reg.uploads.monolithic("repo", DIGEST, _one(BLOB), length=len(BLOB))
        yield reg, await reg.blobs.stat("repo", DIGEST)
    finally:
        await reg.stop()
        await store.close()


async def test_the_filesystem_serves_its_file(kv: EtcdKV, tmp_path: Path) -> None:
    async with _registry_with_blob(kv, FilesystemBlobStore(tmp_path)) as (reg, info):
        # It cannot sign URLs: the file, whatever the redirect preference and range.
        for disable in (False, True):
            source = await reg.blobs.open(info, byte_range=(3, 5), disable_redirect=disable)
            assert isinstance(source, BlobFile) and source.size == len(BLOB)
            assert await asyncio.to_thread(Path(source.path).read_bytes) == BLOB


async def test_an_object_store_redirects_or_streams(kv: EtcdKV, s3_store: S3StoreFactory) -> None:
    async with _registry_with_blob(kv, s3_store()) as (reg, info):
        source = await reg.blobs.open(info, redirect_expiry=60)
        assert isinstance(source, BlobRedirect)
        async with aiohttp.ClientSession() as session, session.get(source.url) as got:
            assert got.status == 200 and await got.read() == BLOB

        whole = await reg.blobs.open(info, disable_redirect=True)
        assert isinstance(whole, BlobStream) and (whole.offset, whole.length, whole.size) == (0, 1024, 1024)
        assert b"".join([c async for c in whole.chunks]) == BLOB

        part = await reg.blobs.open(info, byte_range=(100, 10), disable_redirect=True)
        assert isinstance(part, BlobStream) and (part.offset, part.length, part.size) == (100, 10, 1024)
        assert b"".join([c async for c in part.chunks]) == BLOB[100:110]


async def test_bytes_missing_from_the_store_are_blob_unknown(kv: EtcdKV, s3_store: S3StoreFactory) -> None:
    store = s3_store()
    async with _registry_with_blob(kv, store) as (reg, info):
        assert await store.delete(DIGEST)  # linked in etcd, gone from the store
        with pytest.raises(RegistryError) as raised:
            await reg.blobs.open(info, disable_redirect=True)
        assert raised.value.code is ErrorCode.BLOB_UNKNOWN and "missing from storage" in raised.value.message


async def test_stat_answers_from_the_metadata_alone(kv: EtcdKV, s3_store: S3StoreFactory) -> None:
    """A HEAD (stat) never calls the object store: the link knows the size.
    A GET's redirect costs one presign, a pure computation."""
    calls: list[str] = []
    store = CheckedBlobStore(s3_store(), observe=lambda op, seconds, outcome, nbytes: calls.append(op))
    async with _registry_with_blob(kv, store) as (reg, info):
        calls.clear()
        for _ in range(3):
            assert await reg.blobs.stat("repo", DIGEST) == info
        assert calls == []
        assert isinstance(await reg.blobs.open(info), BlobRedirect)
        assert calls == ["presign"]


async def test_a_mount_costs_one_read_and_one_write_of_etcd(kv: EtcdKV, tmp_path: Path) -> None:
    """Cross-repository mounts: one read decides (linked here already? in the
    source?), one transaction links; a blob already linked costs the read and
    the read-only switch's check, nothing else."""
    calls: list[str] = []
    counted = InstrumentedKV(kv, lambda op, seconds, error: calls.append(op))
    async with _registry_with_blob(counted, FilesystemBlobStore(tmp_path)) as (reg, info):
        await reg.blobs.mount("warm", DIGEST, "repo")  # the read-only switch's revision, read once
        for target, expected in (("new", ["txn", "txn"]), ("new", ["txn", "get"])):
            calls.clear()
            assert await reg.blobs.mount(target, DIGEST, "repo") == info
            assert calls == expected, target
        calls.clear()
        assert await reg.blobs.mount("other", DIGEST, "missing") is None
        assert calls == ["txn"]
    assert await reg.blobs.stat("new", DIGEST) == info
