"""The behaviour every BlobStore driver must have.

A driver's test module subclasses ``BlobStoreSuite`` (the class name starts
with ``Test`` there, so pytest collects it) and provides an async fixture
``store`` yielding a fresh, empty store, e.g.::

    class TestFilesystemDriver(BlobStoreSuite):
        pass

    @pytest.fixture
    async def store(tmp_path): ...

Class attributes let a slow backend shrink the big cases.  Only what the
``BlobStore`` protocol promises is checked here; choices the protocol leaves
open (what a failed stream leaves behind exactly, whether ``upload_start`` may
be repeated) belong in the driver's own tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import pytest

from hareg.storage.base import (
    BlobNotFound,
    BlobStore,
    UploadNotFound,
    UploadOffsetMismatch,
)

MiB = 1024 * 1024


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


async def chunks_of(*parts: bytes, pause: bool = False) -> AsyncIterator[bytes]:
    for part in parts:
        if pause:
            await asyncio.sleep(0)
        yield part


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def cancel_mid_write(store: BlobStore, upload_id: str, offset: int, *parts: bytes) -> None:
    """Write ``parts`` at ``offset`` and then stall, as a client gone quiet
    mid-body; once the driver has taken every part, cancel the write."""
    taken = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
        taken.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(store.upload_write(upload_id, offset, stalling()))
    async with asyncio.timeout(60):
        await taken.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def put(store: BlobStore, upload_id: str, data: bytes, algorithm: str = "sha256") -> str:
    """Upload ``data`` in one write and commit it; returns its digest."""
    digest = digest_of(data, algorithm)
    await store.upload_start(upload_id)
    assert await store.upload_write(upload_id, 0, chunks_of(data)) == len(data)
    assert await store.upload_commit(upload_id, digest, len(data)) == len(data)
    return digest


class StreamBroke(Exception):
    pass


class WrongDigest(Exception):
    pass


def checking(data: bytes, seen: list[int] | None = None) -> Callable[[int], Awaitable[None]]:
    """An ``upload_put`` check that accepts exactly ``data`` (its size; the
    bytes' hash is the caller's business, as in the registry), recording the
    sizes it was asked about in ``seen``."""

    async def verify(size: int) -> None:
        if seen is not None:
            seen.append(size)
        if size != len(data):
            raise WrongDigest(f"{size} bytes, expected {len(data)}")

    return verify


async def refuse(size: int) -> None:
    raise WrongDigest("the digest does not match")


async def failing_after(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise StreamBroke


BAD_DIGESTS = [
    "",
    "sha256:",
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "A" * 64,
    "sha256:" + "g" * 64,
    "sha512:" + "a" * 64,
    "md5:" + "a" * 32,
    "sha256:../../../../etc/passwd",
    "sha256:" + "a" * 62 + "/.",
    "sha256:" + "a" * 64 + "\n",
    "sha256:" + "a" * 64 + "\x00",
    "../sha256:" + "a" * 64,
    "sha256/" + "a" * 64,
]

BAD_UPLOAD_IDS = ["", ".", "..", "../x", "a/b", "/abs", "a\x00b", "a b", "x" * 129, "é", "a\n"]


class BlobStoreSuite:
    large_size: int = 64 * MiB
    concurrent_writers: int = 8
    put_size: int = 12 * MiB  # a whole-blob put of more than one part

    # ------------------------------------------------------------- missing

    async def test_missing_blob(self, store: BlobStore) -> None:
        digest = digest_of(b"nothing here")
        assert await store.stat(digest) is None
        assert store.local_path(digest) is None
        stream = store.read(digest)  # the error comes on first iteration, not here
        with pytest.raises(BlobNotFound):
            await anext(stream)
        with pytest.raises(BlobNotFound):
            await collect(store.read(digest, 5, 10))
        assert await store.delete(digest) is False

    async def test_missing_upload(self, store: BlobStore) -> None:
        assert await store.upload_size("nope") is None
        with pytest.raises(UploadNotFound):
            await store.upload_write("nope", 0, chunks_of(b"data"))
        stream = store.upload_read("nope")
        with pytest.raises(UploadNotFound):
            await anext(stream)
        with pytest.raises(UploadNotFound):
            await store.upload_commit("nope", digest_of(b""), len(b""))
        await store.upload_abort("nope")  # no error
        assert [u async for u in store.list_uploads()] == []
        assert [d async for d in store.list_blobs()] == []

    async def test_upload_modified_follows_writes(self, store: BlobStore) -> None:
        assert await store.upload_modified("nope") is None
        before = time.time()
        await store.upload_start("aging")
        started = await store.upload_modified("aging")
        # The store's clock, not ours: allow for coarse timestamps and small skew.
        assert started is not None and abs(started - before) < 60
        await store.upload_write("aging", 0, chunks_of(b"more bytes"))
        written = await store.upload_modified("aging")
        assert written is not None and written >= started
        await store.upload_abort("aging")
        assert await store.upload_modified("aging") is None

    # ---------------------------------------------------------- roundtrips

    @pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
    async def test_roundtrip(self, store: BlobStore, algorithm: str) -> None:
        data = os.urandom(300_000)
        digest = digest_of(data, algorithm)
        await store.upload_start("up-1")
        assert await store.upload_size("up-1") == 0
        assert await collect(store.upload_read("up-1")) == b""
        assert await store.upload_write("up-1", 0, chunks_of(data[:1000], data[1000:])) == len(data)
        assert await store.upload_size("up-1") == len(data)
        assert await collect(store.upload_read("up-1")) == data
        assert await store.stat(digest) is None
        assert await store.upload_commit("up-1", digest, len(data)) == len(data)
        assert await store.upload_size("up-1") is None
        assert [u async for u in store.list_uploads()] == []
        assert await store.stat(digest) == len(data)
        assert await collect(store.read(digest)) == data
        assert [d async for d in store.list_blobs()] == [digest]
        path = store.local_path(digest)
        if path is not None:
            assert await asyncio.to_thread(Path(path).read_bytes) == data
        url = await store.presign(digest, 60)
        assert url is None or isinstance(url, str)

    async def test_empty_blob(self, store: BlobStore) -> None:
        digest = digest_of(b"")
        await store.upload_start("empty")
        assert await store.upload_write("empty", 0, chunks_of()) == 0
        assert await store.upload_write("empty", 0, chunks_of(b"", b"")) == 0
        assert await store.upload_commit("empty", digest, 0) == 0
        assert await store.stat(digest) == 0
        assert await collect(store.read(digest)) == b""

    async def test_multi_chunk_appends(self, store: BlobStore) -> None:
        parts = [os.urandom(n) for n in (1, 0, 4095, 65536, 70_000, 3, 2 * MiB + 17)]
        await store.upload_start("multi")
        expected = b""
        offset = 0
        for i in range(0, len(parts), 2):
            group = parts[i : i + 2]
            new_size = await store.upload_write("multi", offset, chunks_of(*group))
            expected += b"".join(group)
            assert new_size == len(expected)
            assert await store.upload_size("multi") == new_size
            offset = new_size
        assert await collect(store.upload_read("multi")) == expected
        digest = digest_of(expected)
        assert await store.upload_commit("multi", digest, len(expected)) == len(expected)
        assert await collect(store.read(digest)) == expected

    @pytest.mark.parametrize("delta", [1, 1000, -1, -5])
    async def test_offset_mismatch_writes_nothing(self, store: BlobStore, delta: int) -> None:
        await store.upload_start("mm")
        await store.upload_write("mm", 0, chunks_of(b"0123456789"))
        consumed: list[bytes] = []

        async def tracked() -> AsyncIterator[bytes]:
            for part in (b"xx", b"yy"):
                consumed.append(part)
                yield part

        with pytest.raises(UploadOffsetMismatch) as info:
            await store.upload_write("mm", 10 + delta, tracked())
        assert info.value.expected == 10
        assert info.value.given == 10 + delta
        assert await store.upload_size("mm") == 10
        assert await collect(store.upload_read("mm")) == b"0123456789"
        # The upload is still usable at the right offset.
        assert await store.upload_write("mm", 10, chunks_of(b"ab")) == 12
        assert await collect(store.upload_read("mm")) == b"0123456789ab"

    async def test_offset_ahead_of_empty_upload(self, store: BlobStore) -> None:
        await store.upload_start("ahead")
        with pytest.raises(UploadOffsetMismatch) as info:
            await store.upload_write("ahead", 5, chunks_of(b"data"))
        assert (info.value.expected, info.value.given) == (0, 5)
        assert await store.upload_size("ahead") == 0

    async def test_stream_failure_leaves_consistent_prefix(self, store: BlobStore) -> None:
        await store.upload_start("broken")
        await store.upload_write("broken", 0, chunks_of(b"head-"))
        sent = [b"a" * 1000, b"b" * 70_000, b"c" * 5]
        with pytest.raises(StreamBroke):
            await store.upload_write("broken", 5, failing_after(sent))
        size = await store.upload_size("broken")
        received = b"head-" + b"".join(sent)
        assert size is not None and 5 <= size <= len(received)
        staged = await collect(store.upload_read("broken"))
        assert staged == received[:size]
        # Resumable from wherever it stands.
        assert await store.upload_write("broken", size, chunks_of(b"tail")) == size + 4
        final = received[:size] + b"tail"
        assert await store.upload_commit("broken", digest_of(final), len(final)) == len(final)
        assert await collect(store.read(digest_of(final))) == final

    async def test_commit_existing_digest(self, store: BlobStore) -> None:
        data = os.urandom(10_000)
        digest = await put(store, "first", data)
        await store.upload_start("second")
        await store.upload_write("second", 0, chunks_of(data))
        assert await store.upload_commit("second", digest, len(data)) == len(data)
        assert await store.upload_size("second") is None
        assert [u async for u in store.list_uploads()] == []
        assert await store.stat(digest) == len(data)
        assert await collect(store.read(digest)) == data
        assert [d async for d in store.list_blobs()] == [digest]

    async def test_commit_stores_exactly_the_sealed_bytes(self, store: BlobStore) -> None:
        await store.upload_start("seal")
        await store.upload_write("seal", 0, chunks_of(b"verified-"))
        assert await store.upload_seal("seal") == 9
        assert await store.upload_seal("seal") == 9  # sealing again: the same size
        with contextlib.suppress(UploadNotFound):  # locked out, or (S3) stored past the sealed size
            await store.upload_write("seal", 9, chunks_of(b"late"))
        assert await collect(store.upload_read("seal", 9)) == b"verified-"
        assert await store.upload_commit("seal", digest_of(b"verified-"), 9) == 9
        assert await collect(store.read(digest_of(b"verified-"))) == b"verified-"
        assert [u async for u in store.list_uploads()] == []
        with pytest.raises(UploadNotFound):
            await store.upload_seal("seal")

    async def test_truncate_drops_what_was_staged_past_a_size(self, store: BlobStore) -> None:
        await store.upload_start("cut")
        await store.upload_write("cut", 0, chunks_of(b"kept-"))
        await store.upload_write("cut", 5, chunks_of(b"of a request that died"))
        assert await store.upload_truncate("cut", 5) == 5
        assert await store.upload_size("cut") == 5
        assert await store.upload_truncate("cut", 5) == 5  # again: nothing more to drop
        assert await store.upload_truncate("cut", 9) == 5  # past the end: nothing to drop
        await store.upload_write("cut", 5, chunks_of(b"again"))  # the re-send lands where the dead one did
        assert await collect(store.upload_read("cut")) == b"kept-again"
        assert await store.upload_seal("cut") == 10
        assert await store.upload_commit("cut", digest_of(b"kept-again"), 10) == 10
        assert await collect(store.read(digest_of(b"kept-again"))) == b"kept-again"
        with pytest.raises(UploadNotFound):
            await store.upload_truncate("never-started", 0)

    async def test_commit_of_another_size_is_refused(self, store: BlobStore) -> None:
        await store.upload_start("sized")
        await store.upload_write("sized", 0, chunks_of(b"0123456789"))
        for wrong in (5, 12):
            with pytest.raises(UploadOffsetMismatch):
                await store.upload_commit("sized", digest_of(b"0123456789"[:wrong]), wrong)
        assert [d async for d in store.list_blobs()] == []
        assert await store.upload_size("sized") == 10
        assert await collect(store.upload_read("sized", 4)) == b"0123"
        with pytest.raises(UploadNotFound):
            await store.upload_seal("never-started")

    async def test_commit_replaces_a_stored_blob_of_the_wrong_size(self, store: BlobStore) -> None:
        good = b"the honest bytes"
        digest = digest_of(good)
        # Drivers trust their caller: damage is made by committing other bytes under the digest.
        await store.upload_start("damaged")
        await store.upload_write("damaged", 0, chunks_of(b"short"))
        await store.upload_commit("damaged", digest, 5)
        assert await store.stat(digest) == 5
        await store.upload_start("repair")
        await store.upload_write("repair", 0, chunks_of(good))
        assert await store.upload_commit("repair", digest, len(good)) == len(good)
        assert await collect(store.read(digest)) == good

    async def test_sha256_and_sha512_coexist(self, store: BlobStore) -> None:
        data = b"same bytes, two names"
        d256 = await put(store, "u256", data, "sha256")
        d512 = await put(store, "u512", data, "sha512")
        assert {d async for d in store.list_blobs()} == {d256, d512}
        assert await store.delete(d256) is True
        assert await store.stat(d256) is None
        assert await collect(store.read(d512)) == data

    # --------------------------------------------------------------- reads

    @pytest.mark.parametrize(
        ("offset", "length"),
        [
            (0, None),
            (0, 0),
            (0, 1),
            (1, None),
            (1000, 5000),
            (299_999, None),
            (299_999, 1),
            (300_000, None),  # offset at the end
            (300_000, 10),
            (299_990, 100),  # length past the end
            (0, 10_000_000),
            (123_456, 0),
            (400_000, None),  # offset past the end
        ],
    )
    async def test_range_read(self, store: BlobStore, offset: int, length: int | None) -> None:
        data = os.urandom(300_000)
        digest = await put(store, "range", data)
        got = await collect(store.read(digest, offset, length))
        end = None if length is None else offset + length
        assert got == data[offset:end]

    async def test_read_streams_in_bounded_chunks(self, store: BlobStore) -> None:
        data = os.urandom(5 * MiB + 3)
        digest = await put(store, "bounded", data)
        sizes = [len(c) async for c in store.read(digest)]
        assert sum(sizes) == len(data)
        assert len(sizes) > 1 and max(sizes) <= 16 * MiB

    async def test_read_abandoned_midway(self, store: BlobStore) -> None:
        data = os.urandom(3 * MiB)
        digest = await put(store, "abandon", data)
        stream = store.read(digest)
        first = await anext(stream)
        assert data.startswith(first)
        await stream.aclose()  # type: ignore[attr-defined]
        assert await collect(store.read(digest)) == data

    # ------------------------------------------------------ delete / lists

    async def test_delete(self, store: BlobStore) -> None:
        data = b"to be deleted"
        digest = await put(store, "del", data)
        assert await store.delete(digest) is True
        assert await store.stat(digest) is None
        assert store.local_path(digest) is None
        with pytest.raises(BlobNotFound):
            await collect(store.read(digest))
        assert await store.delete(digest) is False
        assert [d async for d in store.list_blobs()] == []
        # It can be stored again.
        assert await put(store, "again", data) == digest
        assert await collect(store.read(digest)) == data

    async def test_list_blobs_and_uploads(self, store: BlobStore) -> None:
        digests = set()
        for i in range(20):
            algorithm = "sha512" if i % 3 == 0 else "sha256"
            digests.add(await put(store, f"blob-{i}", f"blob number {i}".encode(), algorithm))
        for i in range(5):
            await store.upload_start(f"pending_{i}")
        await store.upload_write("pending_1", 0, chunks_of(b"partial"))
        assert {d async for d in store.list_blobs()} == digests
        assert sorted([u async for u in store.list_uploads()]) == [f"pending_{i}" for i in range(5)]
        blobs = [d async for d in store.list_blobs()]
        assert len(blobs) == len(set(blobs)) == 20

    async def test_abort(self, store: BlobStore) -> None:
        await store.upload_start("gone")
        await store.upload_write("gone", 0, chunks_of(b"some bytes"))
        await store.upload_abort("gone")
        assert await store.upload_size("gone") is None
        assert [u async for u in store.list_uploads()] == []
        with pytest.raises(UploadNotFound):
            await store.upload_write("gone", 10, chunks_of(b"more"))
        with pytest.raises(UploadNotFound):
            await store.upload_commit("gone", digest_of(b"some bytes"), len(b"some bytes"))
        await store.upload_abort("gone")  # idempotent
        assert await store.stat(digest_of(b"some bytes")) is None

    # ---------------------------------------------------------- upload_put

    async def test_put_streams_a_whole_blob_and_drops_the_staging(self, store: BlobStore) -> None:
        data = os.urandom(self.put_size)
        digest = digest_of(data)
        pieces = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
        seen: list[int] = []
        await store.upload_start("whole")
        size = await store.upload_put("whole", digest, chunks_of(*pieces), checking(data, seen), len(data))
        assert size == len(data) and seen == [len(data)]
        assert await store.stat(digest) == len(data)
        assert await collect(store.read(digest)) == data
        assert await store.upload_size("whole") is None
        assert [u async for u in store.list_uploads()] == []

    async def test_put_of_an_empty_blob(self, store: BlobStore) -> None:
        digest = digest_of(b"")
        await store.upload_start("empty")
        assert await store.upload_put("empty", digest, chunks_of(), checking(b""), None) == 0
        assert await store.stat(digest) == 0

    async def test_put_refused_by_the_check_stores_nothing(self, store: BlobStore) -> None:
        """A wrong digest at commit: the bytes never become a blob."""
        data = os.urandom(self.put_size)
        digest = digest_of(b"what the client claimed")
        await store.upload_start("wrong")
        with pytest.raises(WrongDigest):
            await store.upload_put("wrong", digest, chunks_of(data), refuse, len(data))
        assert await store.stat(digest) is None
        assert [d async for d in store.list_blobs()] == []
        assert await store.upload_size("wrong") is not None  # left to the caller
        await store.upload_abort("wrong")
        assert [u async for u in store.list_uploads()] == []

    async def test_put_whose_stream_breaks_stores_nothing(self, store: BlobStore) -> None:
        data = os.urandom(self.put_size)
        digest = digest_of(data)
        seen: list[int] = []
        await store.upload_start("broken")
        with pytest.raises(StreamBroke):
            await store.upload_put("broken", digest, failing_after([data[:-1]]), checking(data, seen))
        assert seen == []  # never asked: the stream did not end
        assert await store.stat(digest) is None
        await store.upload_abort("broken")

    async def test_put_cancelled_midway_stores_nothing(self, store: BlobStore) -> None:
        """The replica's request dies between two parts (the client went quiet)."""
        data = os.urandom(self.put_size)
        digest = digest_of(data)
        taken = asyncio.Event()

        async def stalling() -> AsyncIterator[bytes]:
            yield data[: len(data) // 2]
            taken.set()
            await asyncio.sleep(3600)
            yield data[len(data) // 2 :]

        await store.upload_start("quiet")
        task = asyncio.create_task(store.upload_put("quiet", digest, stalling(), checking(data), len(data)))
        async with asyncio.timeout(60):
            await taken.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await store.stat(digest) is None
        await store.upload_abort("quiet")

    async def test_put_of_a_stored_digest_keeps_one_blob(self, store: BlobStore) -> None:
        """The same blob pushed twice (two repositories): one blob."""
        data = os.urandom(1 * MiB)
        digest = digest_of(data)
        for upload_id, length in (("first", None), ("second", len(data)), ("third", None)):
            await store.upload_start(upload_id)
            seen: list[int] = []
            assert await store.upload_put(upload_id, digest, chunks_of(data), checking(data, seen), length)
            assert seen == [len(data)]
        assert [d async for d in store.list_blobs()] == [digest]
        assert await collect(store.read(digest)) == data
        assert [u async for u in store.list_uploads()] == []

    async def test_put_into_a_staged_upload_with_bytes_is_refused(self, store: BlobStore) -> None:
        await store.upload_start("begun")
        await store.upload_write("begun", 0, chunks_of(b"abc"))
        with pytest.raises(UploadOffsetMismatch):
            await store.upload_put("begun", digest_of(b"xyz"), chunks_of(b"xyz"), checking(b"xyz"))
        assert await collect(store.upload_read("begun")) == b"abc"
        with pytest.raises(UploadNotFound):
            await store.upload_put("never-started", digest_of(b"x"), chunks_of(b"x"), checking(b"x"))

    async def test_upload_ids_are_independent(self, store: BlobStore) -> None:
        await store.upload_start("A")
        await store.upload_start("a")
        await store.upload_write("A", 0, chunks_of(b"upper"))
        await store.upload_write("a", 0, chunks_of(b"lower!"))
        assert await collect(store.upload_read("A")) == b"upper"
        assert await collect(store.upload_read("a")) == b"lower!"

    # --------------------------------------------------------- concurrency

    async def test_concurrent_writers_one_wins_per_offset(self, store: BlobStore) -> None:
        await store.upload_start("race")
        expected = b""
        for round_ in range(3):
            payloads = [
                bytes([65 + w]) * 1000 + f"-r{round_}w{w}".encode() for w in range(self.concurrent_writers)
            ]
            offset = len(expected)

            async def write(payload: bytes, offset: int = offset) -> int:
                parts = [payload[i : i + 100] for i in range(0, len(payload), 100)]
                return await store.upload_write("race", offset, chunks_of(*parts, pause=True))

            results = await asyncio.gather(*(write(p) for p in payloads), return_exceptions=True)
            winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
            assert len(winners) == 1, results
            for i, r in enumerate(results):
                if i != winners[0]:
                    assert isinstance(r, UploadOffsetMismatch), r
                    assert r.given == offset
            expected += payloads[winners[0]]
            assert results[winners[0]] == len(expected)
            assert await store.upload_size("race") == len(expected)
            assert await collect(store.upload_read("race")) == expected

    async def test_concurrent_uploads_and_commits(self, store: BlobStore) -> None:
        blobs = [os.urandom(50_000 + i) for i in range(10)]

        async def one(i: int, data: bytes) -> str:
            await store.upload_start(f"par-{i}")
            half = len(data) // 2
            await store.upload_write(f"par-{i}", 0, chunks_of(data[:half], pause=True))
            await store.upload_write(f"par-{i}", half, chunks_of(data[half:], pause=True))
            await store.upload_commit(f"par-{i}", digest_of(data), len(data))
            return digest_of(data)

        digests = await asyncio.gather(*(one(i, b) for i, b in enumerate(blobs)))
        for digest, data in zip(digests, blobs, strict=True):
            assert await collect(store.read(digest)) == data
        # The same content committed twice at once: one blob, both stagings gone.
        data = os.urandom(100_000)
        for u in ("dup-1", "dup-2"):
            await store.upload_start(u)
            await store.upload_write(u, 0, chunks_of(data))
        sizes = await asyncio.gather(
            store.upload_commit("dup-1", digest_of(data), len(data)),
            store.upload_commit("dup-2", digest_of(data), len(data)),
        )
        assert list(sizes) == [len(data), len(data)]
        assert [u async for u in store.list_uploads()] == []
        assert await collect(store.read(digest_of(data))) == data

    # ---------------------------------------------------------------- size

    async def test_large_streamed_upload(self, store: BlobStore) -> None:
        size = self.large_size
        sent = hashlib.sha256()
        chunk_sizes = [64 * 1024, 1 * MiB, 3 * MiB + 7, 100_003]

        async def generate() -> AsyncIterator[bytes]:
            remaining, i = size, 0
            block = os.urandom(4 * MiB)
            while remaining:
                n = min(chunk_sizes[i % len(chunk_sizes)], remaining)
                start = (i * 7919) % (len(block) - n + 1)
                chunk = block[start : start + n]
                sent.update(chunk)
                remaining -= n
                i += 1
                yield chunk

        await store.upload_start("large")
        assert await store.upload_write("large", 0, generate()) == size
        digest = f"sha256:{sent.hexdigest()}"

        rehash = hashlib.sha256()
        async for chunk in store.upload_read("large"):
            rehash.update(chunk)
        assert rehash.hexdigest() == sent.hexdigest()

        assert await store.upload_commit("large", digest, size) == size
        assert await store.stat(digest) == size
        got = hashlib.sha256()
        biggest = 0
        async for chunk in store.read(digest):
            got.update(chunk)
            biggest = max(biggest, len(chunk))
        assert got.hexdigest() == sent.hexdigest()
        assert biggest <= 16 * MiB
        tail = await collect(store.read(digest, size - 10))
        assert len(tail) == 10

    # --------------------------------------------------------------- names

    @pytest.mark.parametrize("bad", BAD_DIGESTS)
    async def test_rejects_bad_digest(self, store: BlobStore, bad: str) -> None:
        await store.upload_start("ok")
        with pytest.raises(ValueError):
            await store.stat(bad)
        with pytest.raises(ValueError):
            await collect(store.read(bad))
        with pytest.raises(ValueError):
            store.local_path(bad)
        with pytest.raises(ValueError):
            await store.delete(bad)
        with pytest.raises(ValueError):
            await store.presign(bad, 60)
        with pytest.raises(ValueError):
            await store.upload_commit("ok", bad, 0)
        assert await store.upload_size("ok") == 0  # untouched
        assert [d async for d in store.list_blobs()] == []

    @pytest.mark.parametrize("bad", BAD_UPLOAD_IDS)
    async def test_rejects_bad_upload_id(self, store: BlobStore, bad: str) -> None:
        with pytest.raises(ValueError):
            await store.upload_start(bad)
        with pytest.raises(ValueError):
            await store.upload_write(bad, 0, chunks_of(b"x"))
        with pytest.raises(ValueError):
            await store.upload_size(bad)
        with pytest.raises(ValueError):
            await collect(store.upload_read(bad))
        with pytest.raises(ValueError):
            await store.upload_commit(bad, digest_of(b"x"), len(b"x"))
        with pytest.raises(ValueError):
            await store.upload_abort(bad)
        assert [u async for u in store.list_uploads()] == []
