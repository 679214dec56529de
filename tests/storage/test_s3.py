"""The S3 driver against a real SeaweedFS: the shared suite plus what is
specific to an object store shared by several replicas."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import aiohttp
import obstore
import pytest

from hareg.processes.seaweedfs import SeaweedFSProcess
from hareg.storage.base import (
    BlobStore,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    UploadOffsetMismatch,
)
from hareg.storage.s3 import S3BlobStore
from hareg.storage.sigv4 import canonical_query, sign_request

from .conftest import S3StoreFactory, need_weed
from .driver_suite import (
    BlobStoreSuite,
    MiB,
    StreamBroke,
    WrongDigest,
    cancel_mid_write,
    checking,
    chunks_of,
    collect,
    digest_of,
    failing_after,
    put,
    refuse,
)

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
async def store(s3_store: S3StoreFactory) -> BlobStore:
    s: S3BlobStore = s3_store()
    return s


class TestS3Driver(BlobStoreSuite):
    """The shared driver suite against SeaweedFS."""

    large_size = 20 * MiB
    # SeaweedFS serialises conditional creates of one key with a lock that
    # contenders retry about once a second: fewer racers, shorter test.
    concurrent_writers = 4


class TestS3DriverSmallParts(BlobStoreSuite):
    """The suite again with 64 KiB parts: every sizeable write is cut into
    many part objects and every sizeable commit concatenates them."""

    large_size = 3 * MiB
    concurrent_writers = 3

    @pytest.fixture
    async def store(self, s3_store: S3StoreFactory) -> BlobStore:
        s: S3BlobStore = s3_store(part_size=64 * 1024, read_chunk_size=100_000)
        return s


def keys_of(store: S3BlobStore) -> list[str]:
    """Every object key under the store's prefix (what the bucket holds)."""
    prefix = store.key_prefix.rstrip("/")
    out: list[str] = []
    for batch in obstore.list(store.inner._store, prefix, chunk_size=1000):
        out.extend(m["path"][len(store.key_prefix) :] for m in batch)
    return sorted(out)


# ------------------------------------------------------------ replicas


async def test_replicas_append_alternately_and_a_third_commits(s3_store: S3StoreFactory) -> None:
    a, b, c = s3_store(), s3_store(), s3_store(part_size=64 * 1024)
    await a.upload_start("shared")
    data = b""
    for i in range(6):
        writer = (a, b, c)[i % 3] if i < 5 else b
        piece = os.urandom(50_000 + i * 30_000)
        assert await writer.upload_size("shared") == len(data)
        assert await writer.upload_write("shared", len(data), chunks_of(piece[:7], piece[7:])) == len(
            data
        ) + len(piece)
        data += piece
    for s in (a, b, c):
        assert await s.upload_size("shared") == len(data)
        assert await collect(s.upload_read("shared")) == data
    digest = digest_of(data)
    assert await c.upload_commit("shared", digest, len(data)) == len(data)
    for s in (a, b):
        assert await s.upload_size("shared") is None
        assert await s.stat(digest) == len(data)
        assert await collect(s.read(digest)) == data
        with pytest.raises(UploadNotFound):
            await s.upload_write("shared", len(data), chunks_of(b"late"))
    assert keys_of(a) == [f"blobs/sha256/{digest[7:9]}/{digest[7:]}"]


def multipart_uploads(seaweedfs: SeaweedFSProcess, store: S3BlobStore) -> list[str]:
    """The keys of the incomplete multipart uploads under the store's prefix
    (ListMultipartUploads; obstore has no call for it)."""
    url = f"{seaweedfs.s3_url}/{seaweedfs.bucket}?{canonical_query({'prefix': store.key_prefix, 'uploads': ''})}"
    headers = sign_request(
        "GET", url, access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key, region="us-east-1"
    )
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        body = resp.read()
    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    return [key.text or "" for key in ElementTree.fromstring(body).findall("s3:Upload/s3:Key", ns)]


async def no_multipart_uploads_left(seaweedfs: SeaweedFSProcess, store: S3BlobStore) -> None:
    """Wait (generously) until no incomplete multipart upload is left: obstore
    aborts one whose stream failed or whose call was cancelled."""
    deadline = time.monotonic() + 30
    while left := await asyncio.to_thread(multipart_uploads, seaweedfs, store):
        assert time.monotonic() < deadline, f"multipart uploads left behind: {left}"
        await asyncio.sleep(0.1)


async def test_put_on_another_replica_streams_one_pass(
    s3_store: S3StoreFactory, seaweedfs: SeaweedFSProcess
) -> None:
    """Started on one replica, put whole by another: the body goes straight
    to the blob's key (a multipart upload, no staged part objects)."""
    a, b = s3_store(), s3_store()
    data = os.urandom(12 * MiB)
    digest = digest_of(data)
    await a.upload_start("whole")
    assert await b.upload_put(
        "whole", digest, chunks_of(data[:5], data[5:]), checking(data), len(data)
    ) == len(data)
    assert keys_of(a) == [f"blobs/sha256/{digest[7:9]}/{digest[7:]}"]
    assert await collect(a.read(digest)) == data
    assert b.inner.buffers.reserved == 0
    await no_multipart_uploads_left(seaweedfs, a)


@pytest.mark.parametrize("how", ["refused", "broken", "cancelled"])
async def test_failed_put_leaves_no_multipart_upload(
    s3_store: S3StoreFactory, seaweedfs: SeaweedFSProcess, how: str
) -> None:
    store = s3_store()
    data = os.urandom(12 * MiB)
    digest = digest_of(data)
    await store.upload_start("failed")
    second_half = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield data[: 9 * MiB]  # past the first part: a multipart upload is under way
        if how == "broken":
            raise StreamBroke
        if how == "cancelled":
            second_half.set()
            await asyncio.sleep(3600)
        yield data[9 * MiB :]

    task = asyncio.create_task(
        store.upload_put("failed", digest, body(), refuse if how == "refused" else checking(data))
    )
    if how == "cancelled":
        async with asyncio.timeout(60):
            await second_half.wait()
        task.cancel()
    with pytest.raises((WrongDigest, StreamBroke, asyncio.CancelledError)):
        await task
    assert await store.stat(digest) is None
    assert store.inner.buffers.reserved == 0
    await no_multipart_uploads_left(seaweedfs, store)
    await store.upload_abort("failed")
    assert keys_of(store) == []


def start_multipart(seaweedfs: SeaweedFSProcess, key: str, part: bytes) -> None:
    """What a replica killed mid-put leaves: a multipart upload with a part,
    never completed nor aborted."""

    def request(method: str, query: dict[str, str], body: bytes = b"") -> bytes:
        url = f"{seaweedfs.s3_url}/{seaweedfs.bucket}/{key}?{canonical_query(query)}"
        headers = sign_request(
            method,
            url,
            access_key=seaweedfs.access_key,
            secret_key=seaweedfs.secret_key,
            region="us-east-1",
            body=body,
        )
        req = urllib.request.Request(url, data=body or None, method=method)
        for name, value in headers.items():
            if name != "host":
                req.add_header(name, value)
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer: bytes = resp.read()
            return answer

    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    upload_id = ElementTree.fromstring(request("POST", {"uploads": ""})).findtext("s3:UploadId", "", ns)
    assert upload_id
    request("PUT", {"partNumber": "1", "uploadId": upload_id}, part)


async def test_sweep_aborts_what_a_replica_killed_mid_put_left(
    s3_store: S3StoreFactory, seaweedfs: SeaweedFSProcess
) -> None:
    """The janitor's ``sweep_abandoned`` aborts the multipart uploads of
    whole-blob puts older than ``multipart_max_age``."""
    store = s3_store(multipart_max_age=0.0)
    young = s3_store()  # the default age: a day
    key = f"{store.key_prefix}blobs/sha256/ab/ab{'0' * 62}"
    await asyncio.to_thread(start_multipart, seaweedfs, key, os.urandom(1000))
    assert await asyncio.to_thread(multipart_uploads, seaweedfs, store) == [key]
    assert await young.sweep_abandoned() == 0
    assert await asyncio.to_thread(multipart_uploads, seaweedfs, store) == [key]  # too young: kept
    assert await store.sweep_abandoned() == 1
    assert await asyncio.to_thread(multipart_uploads, seaweedfs, store) == []
    assert await store.sweep_abandoned() == 0
    assert await s3_store(access_key=None, secret_key=None).sweep_abandoned() == 0  # cannot sign


async def test_put_of_a_stored_blob_of_the_declared_size_writes_nothing(s3_store: S3StoreFactory) -> None:
    store = s3_store()
    data = os.urandom(100_000)
    digest = digest_of(data)
    key = f"{store.key_prefix}blobs/sha256/{digest[7:9]}/{digest[7:]}"
    await store.upload_start("one")
    await store.upload_put("one", digest, chunks_of(data), checking(data), len(data))
    before = await obstore.head_async(store.inner._store, key)
    await store.upload_start("two")
    seen: list[int] = []
    await store.upload_put("two", digest, chunks_of(data), checking(data, seen), len(data))
    assert seen == [len(data)]  # verified all the same
    assert await obstore.head_async(store.inner._store, key) == before  # not written again
    assert keys_of(store) == [key[len(store.key_prefix) :]]


async def test_put_longer_than_declared_is_refused_before_it_is_held(s3_store: S3StoreFactory) -> None:
    """A body within one part is held whole for a single PUT: never past the
    declared length (the caller's check aside)."""
    store = s3_store()
    data = os.urandom(200_000)
    digest = digest_of(data)

    async def accept(size: int) -> None:
        pass

    await store.upload_start("long")
    with pytest.raises(StorageError, match="more than the declared"):
        await store.upload_put("long", digest, chunks_of(data[:100_000], data[100_000:]), accept, 100_000)
    assert await store.stat(digest) is None
    assert store.inner.buffers.reserved == 0


async def test_refused_put_within_one_part_sends_nothing(s3_store: S3StoreFactory) -> None:
    """A declared body within one part is one PUT, sent only after the check."""
    store = s3_store()
    data = os.urandom(100_000)
    await store.upload_start("small")
    with pytest.raises(WrongDigest):
        await store.upload_put("small", digest_of(data), chunks_of(data), refuse, len(data))
    assert await store.stat(digest_of(data)) is None
    assert keys_of(store) == ["upload-markers/small"]


# ----------------------------------------------------------- buffer pool


async def test_a_spent_buffer_pool_stops_reading_the_body(s3_store: S3StoreFactory) -> None:
    """Back-pressure: a write waits for the pool before it reads a byte."""
    store = s3_store(part_size=64 * 1024, upload_buffer=128 * 1024)
    pool = store.inner.buffers
    held = await pool.acquire(pool.capacity)
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(4):
            read += 1
            yield os.urandom(100_000)

    await store.upload_start("waits")
    task = asyncio.create_task(store.upload_write("waits", 0, body()))
    deadline = time.monotonic() + 30
    while not pool._waiting:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
    assert read == 0
    pool.release(held)
    assert await task == 400_000
    assert pool.reserved == 0 and pool.peak <= pool.capacity


async def test_concurrent_writes_share_a_bounded_pool(s3_store: S3StoreFactory) -> None:
    store = s3_store(part_size=64 * 1024, upload_buffer=192 * 1024)
    blobs = [os.urandom(300_000 + i) for i in range(6)]

    async def push(i: int, data: bytes) -> None:
        await store.upload_start(f"u{i}")
        if i % 2:
            await store.upload_put(f"u{i}", digest_of(data), chunks_of(data), checking(data), len(data))
        else:
            assert await store.upload_write(f"u{i}", 0, chunks_of(data[:1000], data[1000:])) == len(data)
            await store.upload_commit(f"u{i}", digest_of(data), len(data))

    await asyncio.gather(*(push(i, d) for i, d in enumerate(blobs)))
    for data in blobs:
        assert await collect(store.read(digest_of(data))) == data
    pool = store.inner.buffers
    assert pool.reserved == 0 and 0 < pool.peak <= pool.capacity


async def test_racing_offset_across_instances(s3_store: S3StoreFactory) -> None:
    replicas = [s3_store() for _ in range(3)]
    await replicas[0].upload_start("race")
    expected = b""
    for round_ in range(2):
        offset = len(expected)
        payloads = [os.urandom(2000) + f"r{round_}w{i}".encode() for i in range(len(replicas))]
        results = await asyncio.gather(
            *(
                r.upload_write("race", offset, chunks_of(p[:1000], p[1000:], pause=True))
                for r, p in zip(replicas, payloads, strict=True)
            ),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        assert len(winners) == 1, results
        for i, r in enumerate(results):
            if i != winners[0]:
                assert isinstance(r, UploadOffsetMismatch), r
                assert r.given == offset and r.expected == offset + len(payloads[winners[0]])
        expected += payloads[winners[0]]
        assert results[winners[0]] == len(expected)
    assert await collect(replicas[-1].upload_read("race")) == expected


async def test_writer_overtaken_inside_its_write(s3_store: S3StoreFactory) -> None:
    """Another replica appends at a size it saw while a multi-part write was
    still running: the first write stops with UploadOffsetMismatch, and the
    upload stays a consistent prefix."""
    a, b = s3_store(part_size=64 * 1024), s3_store()
    await a.upload_start("over")
    first_part = asyncio.Event()
    resume = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"a" * (64 * 1024)
        yield b"a" * 10  # the first part is now complete and being sent
        while await a.upload_size("over") != 64 * 1024:
            await asyncio.sleep(0.01)
        first_part.set()
        await resume.wait()
        yield b"a" * (64 * 1024)

    task = asyncio.create_task(a.upload_write("over", 0, slow()))
    await first_part.wait()
    assert await b.upload_write("over", 64 * 1024, chunks_of(b"from-b")) == 64 * 1024 + 6
    resume.set()
    with pytest.raises(UploadOffsetMismatch) as info:
        await task
    assert info.value.given == 0 and info.value.expected == 64 * 1024 + 6
    assert await collect(a.upload_read("over")) == b"a" * (64 * 1024) + b"from-b"


async def test_commit_by_two_replicas(s3_store: S3StoreFactory) -> None:
    a, b = s3_store(), s3_store()
    data = os.urandom(200_000)
    await a.upload_start("twice")
    await a.upload_write("twice", 0, chunks_of(data))
    sizes = await asyncio.gather(
        a.upload_commit("twice", digest_of(data), len(data)),
        b.upload_commit("twice", digest_of(data), len(data)),
        return_exceptions=True,
    )
    # Both succeed, or the later one finds the upload already gone.
    assert len(data) in sizes
    assert all(s == len(data) or isinstance(s, UploadNotFound) for s in sizes), sizes
    assert await collect(b.read(digest_of(data))) == data
    assert [u async for u in a.list_uploads()] == []


async def test_write_after_abort_by_other_replica(s3_store: S3StoreFactory) -> None:
    a, b = s3_store(), s3_store()
    await a.upload_start("gone")
    await a.upload_write("gone", 0, chunks_of(b"abc"))
    await b.upload_abort("gone")
    with pytest.raises(UploadNotFound):
        await a.upload_write("gone", 3, chunks_of(b"def"))
    assert keys_of(a) == []


async def test_write_racing_abort_leaves_nothing(s3_store: S3StoreFactory) -> None:
    """The abort lands while a write is between its check and its parts."""
    a, b = s3_store(part_size=64 * 1024), s3_store()
    await a.upload_start("ab")
    sent_first = asyncio.Event()

    async def stream() -> AsyncIterator[bytes]:
        sent_first.set()
        await asyncio.sleep(0)
        yield b"x" * 100
        await b.upload_abort("ab")
        yield b"y" * (200 * 1024)

    with pytest.raises(UploadNotFound):
        await a.upload_write("ab", 0, stream())
    assert sent_first.is_set()
    assert await a.upload_size("ab") is None
    assert keys_of(a) == []


# ---------------------------------------------------------- part objects


async def test_write_is_cut_into_parts(s3_store: S3StoreFactory) -> None:
    s = s3_store(part_size=64 * 1024)
    data = os.urandom(300_000)
    await s.upload_start("cut")
    assert await s.upload_write("cut", 0, chunks_of(data)) == len(data)  # one 300 kB chunk
    assert keys_of(s) == [
        "upload-markers/cut",
        *(f"uploads/cut/{o:020d}" for o in range(0, len(data), 64 * 1024)),
    ]
    digest = digest_of(data)
    assert await s.upload_commit("cut", digest, len(data)) == len(data)
    assert keys_of(s) == [f"blobs/sha256/{digest[7:9]}/{digest[7:]}"]
    assert await collect(s.read(digest)) == data


async def test_retried_create_with_the_same_bytes_succeeds(s3_store: S3StoreFactory) -> None:
    """A conditional create whose first answer was lost is retried and finds
    its own part: that is a success, a different part is not."""
    s = s3_store()
    key = f"{s.key_prefix}probe"
    assert await s.inner._create(key, b"same bytes") is True
    assert await s.inner._create(key, b"same bytes") is True
    assert await s.inner._create(key, b"other bytes") is False
    assert await s.inner._create(key, b"same bytes", same_is_ok=False) is False


async def test_upload_start_is_idempotent_until_data_arrives(s3_store: S3StoreFactory) -> None:
    s = s3_store()
    await s.upload_start("st")
    await s.upload_start("st")
    assert await s.upload_size("st") == 0
    await s.upload_write("st", 0, chunks_of(b"keep me"))
    with pytest.raises(StorageError):
        await s.upload_start("st")
    assert await collect(s.upload_read("st")) == b"keep me"


async def test_a_stray_part_off_the_chain_is_no_part_of_the_upload(s3_store: S3StoreFactory) -> None:
    """A writer taken over after its bytes were dropped may still create a
    part past a gap: the upload is the chain from 0, and a cut removes the stray."""
    s = s3_store()
    await s.upload_start("st")
    await s.upload_write("st", 0, chunks_of(b"chain"))
    stray = s.inner._part_key("st", 9)
    assert await s.inner._create(stray, b"stray") is True
    assert await s.upload_size("st") == 5
    assert await collect(s.upload_read("st")) == b"chain"
    assert await s.upload_truncate("st", 5) == 5
    assert await s.inner._head(stray) is None
    assert await s.upload_commit("st", digest_of(b"chain"), 5) == 5


@pytest.mark.parametrize("part_size", [64 * 1024, 8 * MiB])
async def test_stream_failure_keeps_only_whole_parts(s3_store: S3StoreFactory, part_size: int) -> None:
    s = s3_store(part_size=part_size)
    await s.upload_start("u")
    sent = [b"a" * 10, b"b" * 70_000, b"c" * 3]
    with pytest.raises(StreamBroke):
        await s.upload_write("u", 0, failing_after(sent))
    # Documented choice: half a part is dropped; parts already created stay.
    kept = 64 * 1024 if part_size == 64 * 1024 else 0
    assert await s.upload_size("u") == kept
    assert await collect(s.upload_read("u")) == b"".join(sent)[:kept]


async def test_cancelled_write_leaves_a_prefix(s3_store: S3StoreFactory) -> None:
    s = s3_store(part_size=64 * 1024)
    await s.upload_start("c")
    await cancel_mid_write(s, "c", 0, b"1" * (64 * 1024), b"2" * (64 * 1024))
    size = await s.upload_size("c")
    assert size in (0, 64 * 1024, 128 * 1024)
    assert await s.upload_write("c", size, chunks_of(b"more")) == size + 4


# -------------------------------------------------------------- presign


async def test_presigned_url_serves_the_blob(s3_store: S3StoreFactory) -> None:
    s = s3_store()
    data = os.urandom(1 * MiB + 5)
    digest = await put(s, "p", data)
    url = await s.presign(digest, 60)
    assert url is not None and "X-Amz-Signature=" in url
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == data
        async with http.get(url, headers={"Range": "bytes=10-19"}) as resp:
            assert resp.status == 206
            assert await resp.read() == data[10:20]
        tampered = url.replace(digest[7:15], "0" * 8)
        async with http.get(tampered) as resp:
            assert resp.status in (403, 404)
    with pytest.raises(ValueError):
        await s.presign(digest, 0)


async def test_presigned_url_expires(s3_store: S3StoreFactory) -> None:
    s = s3_store()
    digest = await put(s, "e", b"short-lived")
    url = await s.presign(digest, 1)
    assert url is not None
    await asyncio.sleep(2.1)
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 403


# --------------------------------------------------------------- config


async def test_from_config_and_key_prefix_isolation(seaweedfs: SeaweedFSProcess) -> None:
    cfg = SimpleNamespace(
        bucket=seaweedfs.bucket,
        region="us-east-1",
        region_endpoint=seaweedfs.s3_url,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        virtual_hosted_style=False,
        encrypt=False,
        key_prefix=f"test/{uuid.uuid4().hex}/one/",
        upload_buffer_bytes=16 * MiB,
    )
    one = S3BlobStore.from_config(cfg, timeout=5.0)  # type: ignore[arg-type]
    assert one.inner.buffers.capacity == 16 * MiB
    cfg.key_prefix = cfg.key_prefix.replace("/one/", "/two/")
    two = S3BlobStore.from_config(cfg)  # type: ignore[arg-type]
    digest = await put(one, "u", b"only in one")
    assert await two.stat(digest) is None
    assert [d async for d in two.list_blobs()] == []
    assert [d async for d in one.list_blobs()] == [digest]
    for bad in ["/abs", "a//b", "../x", "a/../b", "a/./b", "sp ace/", "é/", "./"]:
        with pytest.raises(ValueError):
            S3BlobStore(bucket="b", key_prefix=bad)
    with pytest.raises(ValueError):
        S3BlobStore(bucket="b", access_key="only-one")


async def test_encrypted_roundtrip(s3_store: S3StoreFactory) -> None:
    s = s3_store(encrypt=True, part_size=64 * 1024)
    data = os.urandom(150_000)
    digest = await put(s, "enc", data)
    assert await collect(s.read(digest, 5, 100)) == data[5:105]


async def test_wrong_credentials_are_a_storage_error(s3_store: S3StoreFactory) -> None:
    s = s3_store(secret_key="wrong", max_retries=0)
    with pytest.raises(StorageError) as info:
        await s.upload_start("x")
    assert not isinstance(info.value, StorageUnavailable)  # a configuration error, not an outage


# ---------------------------------------------------------- availability


async def test_unreachable_store_is_unavailable() -> None:
    from hareg.processes.ports import free_port

    seen: list[tuple[str, str]] = []
    s = S3BlobStore(
        bucket="hareg",
        region_endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="a",
        secret_key="b",
        timeout=2.0,
        connect_timeout=0.5,
        max_retries=1,
        observe=lambda op, _s, outcome, _n: seen.append((op, outcome)),
    )
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await s.stat(digest_of(b"x"))
    with pytest.raises(StorageUnavailable):
        await s.upload_start("x")
    with pytest.raises(StorageUnavailable):
        await collect(s.read(digest_of(b"x")))
    assert time.monotonic() - t0 < 15
    # The checking wrapper reports an outage as such (the hareg_storage_requests_total outcome).
    assert seen == [("stat", "unavailable"), ("upload_start", "unavailable"), ("read", "unavailable")]


async def test_paused_store_times_out_then_recovers(tmp_path: Path) -> None:
    need_weed()
    proc = SeaweedFSProcess(tmp_path / "weed")
    await proc.start()
    s = S3BlobStore(
        bucket=proc.bucket,
        region_endpoint=proc.s3_url,
        access_key=proc.access_key,
        secret_key=proc.secret_key,
        timeout=3.0,  # not less: the write before the pause must succeed on a busy machine
        connect_timeout=0.5,
        max_retries=1,
    )
    try:
        data = os.urandom(100_000)
        digest = await put(s, "before", data)
        await s.upload_start("during")
        proc.pause()
        try:
            for op in (
                lambda: s.stat(digest),
                lambda: collect(s.read(digest)),
                lambda: s.upload_write("during", 0, chunks_of(b"data")),
                lambda: s.upload_commit("during", digest_of(b"data"), len(b"data")),
            ):
                t0 = time.monotonic()
                with pytest.raises(StorageUnavailable):
                    await op()
                assert time.monotonic() - t0 < 15  # two attempts of 3 s, not a hang
        finally:
            proc.resume()
        deadline = time.monotonic() + 60
        while True:
            try:
                assert await s.stat(digest) == len(data)
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert await collect(s.read(digest)) == data
        assert await s.upload_write("during", 0, chunks_of(b"data")) == 4
        assert await s.upload_commit("during", digest_of(b"data"), len(b"data")) == 4
    finally:
        await s.close()
        await proc.kill()
