"""The filesystem driver: the shared suite plus what is specific to files."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import itertools
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hareg.storage.base import (
    BlobStore,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    UploadOffsetMismatch,
)
from hareg.storage.filesystem import FilesystemBlobStore

from .driver_suite import (
    BAD_DIGESTS,
    BAD_UPLOAD_IDS,
    BlobStoreSuite,
    MiB,
    StreamBroke,
    cancel_mid_write,
    chunks_of,
    collect,
    digest_of,
    failing_after,
    put,
)


@pytest.fixture
async def fs_store(tmp_path: Path) -> AsyncIterator[FilesystemBlobStore]:
    s = FilesystemBlobStore(tmp_path / "root")
    yield s
    await s.close()


@pytest.fixture
async def store(fs_store: FilesystemBlobStore) -> BlobStore:
    return fs_store


class TestFilesystemDriver(BlobStoreSuite):
    """The shared driver suite against the filesystem driver."""


class TestFilesystemDriverSmallBatches(BlobStoreSuite):
    """The suite again with tiny read chunks and no write coalescing."""

    large_size = 8 * MiB

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[BlobStore]:
        s = FilesystemBlobStore(tmp_path / "root", read_chunk_size=4096, write_batch=1, max_workers=2)
        yield s
        await s.close()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_is_a_blob_store(fs_store: FilesystemBlobStore) -> None:
    store: BlobStore = fs_store
    assert await store.presign(digest_of(b"x"), 60) is None


# ------------------------------------------------------------------ layout


async def test_layout(fs_store: FilesystemBlobStore) -> None:
    root = fs_store.root
    assert tree(root) == ["blobs", "sealed", "uploads"]
    await fs_store.upload_start("u1")
    assert (root / "uploads" / "u1").is_file()
    data = b"layout"
    await fs_store.upload_write("u1", 0, chunks_of(data))
    assert (root / "uploads" / "u1").read_bytes() == data
    digest = digest_of(data)
    await fs_store.upload_commit("u1", digest, len(data))
    hexdigest = digest.split(":")[1]
    path = root / "blobs" / "sha256" / hexdigest[:2] / hexdigest
    assert path.read_bytes() == data
    assert fs_store.local_path(digest) == str(path)
    assert not (root / "uploads" / "u1").exists()

    d512 = await put(fs_store, "u2", data, "sha512")
    hex512 = d512.split(":")[1]
    assert (root / "blobs" / "sha512" / hex512[:2] / hex512).read_bytes() == data
    await fs_store.upload_start("u3")
    await fs_store.upload_write("u3", 0, chunks_of(b"sealed bytes"))
    assert await fs_store.upload_seal("u3") == 12
    assert (root / "sealed" / "u3").read_bytes() == b"sealed bytes"
    assert not (root / "uploads" / "u3").exists()
    await fs_store.upload_abort("u3")
    assert tree(root) == sorted(
        [
            "blobs",
            "sealed",
            "uploads",
            "blobs/sha256",
            f"blobs/sha256/{hexdigest[:2]}",
            f"blobs/sha256/{hexdigest[:2]}/{hexdigest}",
            "blobs/sha512",
            f"blobs/sha512/{hex512[:2]}",
            f"blobs/sha512/{hex512[:2]}/{hex512}",
        ]
    )


async def test_blobs_are_not_readable_by_other_users(fs_store: FilesystemBlobStore) -> None:
    digest = await put(fs_store, "private", b"not for everyone")
    path = fs_store.local_path(digest) or ""
    assert os.stat(path).st_mode & 0o777 == 0o600
    root = fs_store.root
    for directory in (os.path.dirname(path), root / "blobs" / "sha256", root / "uploads", root / "sealed"):
        assert os.stat(directory).st_mode & 0o007 == 0, directory


async def test_commit_replaces_a_damaged_blob_of_the_same_size(fs_store: FilesystemBlobStore) -> None:
    good = b"base layer bytes"
    digest = await put(fs_store, "first", good)
    await asyncio.to_thread(
        Path(fs_store.local_path(digest) or "").write_bytes, b"BASE LAYER BYTES"
    )  # bit rot
    await fs_store.upload_start("again")
    await fs_store.upload_write("again", 0, chunks_of(good))
    assert await fs_store.upload_commit("again", digest, len(good)) == len(good)
    assert await collect(fs_store.read(digest)) == good


async def test_writer_that_opened_before_the_seal_cannot_write_after(
    fs_store: FilesystemBlobStore,
) -> None:
    await fs_store.upload_start("s")
    await fs_store.upload_write("s", 0, chunks_of(b"abc"))
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"def"
        started.set()
        await release.wait()
        yield b"ghi"

    writer = asyncio.create_task(fs_store.upload_write("s", 3, slow()))
    await started.wait()
    seal = asyncio.create_task(fs_store.upload_seal("s"))
    release.set()
    assert await writer == 9  # the write in progress completes before the seal
    assert await seal == 9
    with pytest.raises(UploadNotFound):
        await fs_store.upload_write("s", 9, chunks_of(b"late"))
    assert await collect(fs_store.upload_read("s")) == b"abcdefghi"


async def test_truncate_leaves_a_sealed_upload_and_another_writer_alone(
    fs_store: FilesystemBlobStore, tmp_path: Path
) -> None:
    await fs_store.upload_start("t")
    await fs_store.upload_write("t", 0, chunks_of(b"abcdef"))
    # Another process appending holds the staging file's flock: no cut under it.
    fd = os.open(fs_store.root / "uploads" / "t", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StorageUnavailable):
            await fs_store.upload_truncate("t", 3)
    finally:
        os.close(fd)
    assert await fs_store.upload_seal("t") == 6
    assert await fs_store.upload_truncate("t", 3) == 6  # sealed: its bytes are final
    assert await collect(fs_store.upload_read("t")) == b"abcdef"


async def test_reopen_existing_root(tmp_path: Path) -> None:
    first = FilesystemBlobStore(tmp_path / "r")
    digest = await put(first, "x", b"persisted")
    await first.upload_start("left-behind")
    await first.close()
    await first.close()  # idempotent
    second = FilesystemBlobStore(str(tmp_path / "r"))
    try:
        assert await collect(second.read(digest)) == b"persisted"
        assert [u async for u in second.list_uploads()] == ["left-behind"]
    finally:
        await second.close()


# ---------------------------------------------------------------- atomicity


async def test_blob_invisible_until_commit(fs_store: FilesystemBlobStore) -> None:
    data = os.urandom(2 * MiB)
    digest = digest_of(data)
    await fs_store.upload_start("atomic")
    await fs_store.upload_write("atomic", 0, chunks_of(data[:MiB]))
    await fs_store.upload_write("atomic", MiB, chunks_of(data[MiB:]))
    assert await fs_store.stat(digest) is None
    assert fs_store.local_path(digest) is None
    assert [d async for d in fs_store.list_blobs()] == []
    assert not any(p.is_file() for p in (fs_store.root / "blobs").rglob("*"))
    await fs_store.upload_commit("atomic", digest, len(data))
    assert await fs_store.stat(digest) == len(data)


async def test_commit_fsyncs_file_then_renames_then_fsyncs_dir(
    fs_store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    data = b"durable"
    digest = digest_of(data)
    hexdigest = digest.split(":")[1]
    await fs_store.upload_start("d")
    await fs_store.upload_write("d", 0, chunks_of(data))
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    await fs_store.upload_commit("d", digest, len(data))
    root = fs_store.root
    staged = str(root / "uploads" / "d")
    fanout = root / "blobs" / "sha256" / hexdigest[:2]
    assert events[0] == ("fsync", staged)
    # The fan-out directories were new: each one's parent is fsynced.
    assert ("fsync", str(root / "blobs")) in events
    assert ("fsync", str(root / "blobs" / "sha256")) in events
    i = events.index(("replace", staged))
    assert events[i + 1 :] == [("fsync", str(fanout))]

    # A second blob in the same fan-out directory: no directory creation.
    other = next(
        b
        for b in (str(i).encode() for i in itertools.count())
        if digest_of(b).split(":")[1][:2] == hexdigest[:2]
    )
    events.clear()
    await fs_store.upload_start("e")
    await fs_store.upload_write("e", 0, chunks_of(other))
    await fs_store.upload_commit("e", digest_of(other), len(other))
    assert events == [
        ("fsync", str(root / "uploads" / "e")),
        ("replace", str(root / "uploads" / "e")),
        ("fsync", str(fanout)),
    ]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
async def test_failed_commit_leaves_upload_staged(
    fs_store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    data = b"will fail once"
    digest = digest_of(data)
    await fs_store.upload_start("f")
    await fs_store.upload_write("f", 0, chunks_of(data))

    def broken(*args: Any) -> None:
        raise OSError(errno.EIO, "simulated I/O error")

    with monkeypatch.context() as m:
        m.setattr(os, failing, broken)
        with pytest.raises(StorageUnavailable):
            await fs_store.upload_commit("f", digest, len(data))
    assert await fs_store.stat(digest) is None
    assert await fs_store.upload_size("f") == len(data)
    assert await fs_store.upload_commit("f", digest, len(data)) == len(data)  # retry works
    assert await collect(fs_store.read(digest)) == data


async def test_crashed_upload_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = FilesystemBlobStore(root)
    await store.upload_start("crashed")
    await store.upload_write("crashed", 0, chunks_of(b"half an upload"))
    await store.close()  # the process "dies" without committing or aborting
    # Files in the staging area from elsewhere: a valid-looking id, and junk.
    (root / "uploads" / "foreign_1").write_bytes(b"abc")
    (root / "uploads" / ".tmp.junk").write_bytes(b"")
    (root / "uploads" / "a-dir").mkdir()

    store = FilesystemBlobStore(root)
    try:
        assert sorted([u async for u in store.list_uploads()]) == ["crashed", "foreign_1"]
        assert await store.upload_size("crashed") == len(b"half an upload")
        assert await collect(store.upload_read("crashed")) == b"half an upload"
        await store.upload_abort("crashed")
        assert [u async for u in store.list_uploads()] == ["foreign_1"]
    finally:
        await store.close()


async def test_list_blobs_skips_junk(fs_store: FilesystemBlobStore) -> None:
    digest = await put(fs_store, "ok", b"real")
    hexdigest = digest.split(":")[1]
    blobs = fs_store.root / "blobs"
    (blobs / "sha256" / "zz").mkdir()
    (blobs / "sha256" / "zz" / ("0" * 64)).write_bytes(b"")  # wrong fan-out name
    (blobs / "sha256" / hexdigest[:2] / "tmp").write_bytes(b"")
    (blobs / "sha256" / "00").mkdir(exist_ok=True)
    (blobs / "sha256" / "00" / ("1" * 64)).write_bytes(b"")  # misplaced (fan-out mismatch)
    (blobs / "md5").mkdir()
    (blobs / "sha512" / "ab").mkdir(parents=True)
    (blobs / "sha512" / "ab" / ("ab" + "0" * 62)).write_bytes(b"")  # sha256-length under sha512
    assert [d async for d in fs_store.list_blobs()] == [digest]


# -------------------------------------------------------------- path tricks


async def test_path_tricks_never_touch_the_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "root"
    store = FilesystemBlobStore(root)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    before = tree(tmp_path)
    try:
        for bad in [*BAD_DIGESTS, "sha256:../../../victim", "sha256:" + "a" * 64 + "/../../victim"]:
            with pytest.raises(ValueError):
                await store.stat(bad)
            with pytest.raises(ValueError):
                store.read(bad)  # rejected at call time already
            with pytest.raises(ValueError):
                store.local_path(bad)
            with pytest.raises(ValueError):
                await store.delete(bad)
        await store.upload_start("good")
        for bad in [*BAD_UPLOAD_IDS, "../../victim", "..%2f", "x/../../../victim"]:
            with pytest.raises(ValueError):
                await store.upload_start(bad)
            with pytest.raises(ValueError):
                await store.upload_abort(bad)
            with pytest.raises(ValueError):
                store.upload_read(bad)
            with pytest.raises(ValueError):
                await store.upload_write(bad, 0, chunks_of(b"evil"))
            with pytest.raises(ValueError):
                await store.upload_commit(bad, digest_of(b""), len(b""))
        with pytest.raises(ValueError):
            await store.upload_commit("good", "sha256:../../../victim", 0)
        with pytest.raises(ValueError):
            await store.upload_start(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.stat(b"sha256:" + b"a" * 64)  # type: ignore[arg-type]
    finally:
        await store.close()
    assert victim.read_bytes() == b"precious"
    assert tree(tmp_path) == sorted([*before, "deep/root/uploads/good"])


async def test_negative_range_rejected(fs_store: FilesystemBlobStore) -> None:
    digest = await put(fs_store, "n", b"abc")
    with pytest.raises(ValueError):
        fs_store.read(digest, -1)
    with pytest.raises(ValueError):
        fs_store.read(digest, 0, -1)


# ------------------------------------------------------------- upload rules


async def test_upload_start_twice_is_an_error(fs_store: FilesystemBlobStore) -> None:
    await fs_store.upload_start("twice")
    await fs_store.upload_write("twice", 0, chunks_of(b"keep me"))
    with pytest.raises(StorageError):
        await fs_store.upload_start("twice")
    assert await collect(fs_store.upload_read("twice")) == b"keep me"


@pytest.mark.parametrize("write_batch", [1, MiB])
async def test_stream_failure_discards_the_whole_write(tmp_path: Path, write_batch: int) -> None:
    store = FilesystemBlobStore(tmp_path / "r", write_batch=write_batch)
    try:
        await store.upload_start("u")
        await store.upload_write("u", 0, chunks_of(b"kept-"))
        sent = [b"a" * 10, b"b" * 70_000, b"c" * 3]
        with pytest.raises(StreamBroke):
            await store.upload_write("u", 5, failing_after(sent))
        # Documented choice: half a request is never part of an upload.
        assert await store.upload_size("u") == 5
        assert await collect(store.upload_read("u")) == b"kept-"
        assert store.inner._locks == {}
    finally:
        await store.close()


async def test_cancelled_write_is_discarded(fs_store: FilesystemBlobStore) -> None:
    await fs_store.upload_start("c")
    await fs_store.upload_write("c", 0, chunks_of(b"zero-"))
    await cancel_mid_write(fs_store, "c", 5, b"one-", b"two-")
    assert await fs_store.upload_size("c") == 5
    assert await fs_store.upload_write("c", 5, chunks_of(b"three")) == 10
    assert await collect(fs_store.upload_read("c")) == b"zero-three"
    assert fs_store.inner._locks == {}


async def test_failed_disk_write_is_truncated(
    fs_store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fs_store.upload_start("enospc")
    await fs_store.upload_write("enospc", 0, chunks_of(b"0123456789"))
    real_pwrite = os.pwrite

    def half_then_full(fd: int, data: Any, pos: int) -> int:
        if len(data) > 4:
            return real_pwrite(fd, bytes(data)[: len(data) // 2], pos)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", half_then_full)
        with pytest.raises(StorageUnavailable):
            await fs_store.upload_write("enospc", 10, chunks_of(b"abcdefgh"))
    assert await fs_store.upload_size("enospc") == 10
    assert await collect(fs_store.upload_read("enospc")) == b"0123456789"
    assert await fs_store.upload_write("enospc", 10, chunks_of(b"ok")) == 12


async def test_lock_table_does_not_grow(fs_store: FilesystemBlobStore) -> None:
    for i in range(50):
        uid = f"u{i}"
        await fs_store.upload_start(uid)
        await asyncio.gather(
            fs_store.upload_write(uid, 0, chunks_of(b"x", pause=True)),
            fs_store.upload_write(uid, 0, chunks_of(b"y", pause=True)),
            return_exceptions=True,
        )
        with pytest.raises(UploadOffsetMismatch):
            await fs_store.upload_write(uid, 5, chunks_of(b"z"))
        with pytest.raises(UploadNotFound):
            await fs_store.upload_write(f"missing{i}", 0, chunks_of(b"z"))
        data = await collect(fs_store.upload_read(uid))
        await fs_store.upload_commit(uid, digest_of(data), len(data))
    assert fs_store.inner._locks == {}


async def test_two_processes_sharing_a_root(tmp_path: Path) -> None:
    """Two store instances stand in for two processes: flock keeps them apart."""
    a = FilesystemBlobStore(tmp_path / "r")
    b = FilesystemBlobStore(tmp_path / "r")
    try:
        await a.upload_start("shared")
        release = asyncio.Event()
        started = asyncio.Event()

        async def held() -> AsyncIterator[bytes]:
            yield b"from-a"
            started.set()
            await release.wait()
            yield b"-done"

        writer = asyncio.create_task(a.upload_write("shared", 0, held()))
        await started.wait()
        with pytest.raises(UploadOffsetMismatch):
            await b.upload_write("shared", 0, chunks_of(b"from-b"))
        with pytest.raises(StorageUnavailable):
            await b.upload_commit("shared", digest_of(b"whatever"), len(b"whatever"))
        release.set()
        assert await writer == 11
        assert await b.upload_write("shared", 11, chunks_of(b"+b")) == 13
        data = await collect(a.upload_read("shared"))
        assert data == b"from-a-done+b"
        assert await b.upload_commit("shared", digest_of(data), len(data)) == 13
        assert await collect(a.read(digest_of(data))) == data
    finally:
        await a.close()
        await b.close()


async def test_write_after_commit_by_other_instance_is_not_found(tmp_path: Path) -> None:
    a = FilesystemBlobStore(tmp_path / "r")
    b = FilesystemBlobStore(tmp_path / "r")
    try:
        digest = await put(a, "once", b"content")
        with pytest.raises(UploadNotFound):
            await b.upload_write("once", 7, chunks_of(b"more"))
        assert await collect(b.read(digest)) == b"content"
    finally:
        await a.close()
        await b.close()


async def test_reads_do_not_leak_descriptors(fs_store: FilesystemBlobStore) -> None:
    digest = await put(fs_store, "fd", os.urandom(3 * MiB))
    await fs_store.upload_start("open")
    await fs_store.upload_write("open", 0, chunks_of(b"x" * MiB))

    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = count()
    for _ in range(20):
        stream = fs_store.read(digest)
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        await collect(fs_store.read(digest, 100, 200))
        await collect(fs_store.upload_read("open"))
    assert count() == before


async def test_upload_read_is_a_snapshot_prefix(fs_store: FilesystemBlobStore) -> None:
    await fs_store.upload_start("snap")
    await fs_store.upload_write("snap", 0, chunks_of(b"a" * (3 * MiB)))
    stream = fs_store.upload_read("snap")
    first = await anext(stream)
    await fs_store.upload_write("snap", 3 * MiB, chunks_of(b"b" * 10))
    rest = await collect(stream)
    assert first + rest == b"a" * (3 * MiB)


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


async def test_local_path_serves_committed_bytes(fs_store: FilesystemBlobStore) -> None:
    data = os.urandom(MiB + 1)
    digest = await put(fs_store, "lp", data)
    path = fs_store.local_path(digest)
    assert path is not None
    assert f"sha256:{_hash_file(path)}" == digest
    check: Callable[[str], str | None] = fs_store.local_path
    assert check(digest_of(b"absent")) is None


async def test_second_writer_waits_for_the_first(fs_store: FilesystemBlobStore) -> None:
    """In one process a writer queues behind the current one instead of failing
    at once, so it succeeds if the first leaves the offset where it was."""
    await fs_store.upload_start("q")
    entered = asyncio.Event()
    release = asyncio.Event()

    async def gives_up() -> AsyncIterator[bytes]:
        entered.set()
        await release.wait()
        if release.is_set():
            raise StreamBroke
        yield b""  # pragma: no cover

    first = asyncio.create_task(fs_store.upload_write("q", 0, gives_up()))
    await entered.wait()
    second = asyncio.create_task(fs_store.upload_write("q", 0, chunks_of(b"second")))
    await asyncio.sleep(0.05)
    assert not second.done()
    release.set()
    with pytest.raises(StreamBroke):
        await first
    assert await second == 6
    assert fs_store.inner._locks == {}


async def test_staging_replaced_between_open_and_lock(
    fs_store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process commits the upload after we opened it but before we got
    the lock: writing would corrupt the committed blob, so it is UploadNotFound."""
    await fs_store.upload_start("r")
    await fs_store.upload_write("r", 0, chunks_of(b"abc"))
    staged = fs_store.root / "uploads" / "r"
    moved = fs_store.root / "elsewhere"
    real_flock = fcntl.flock
    meddle: list[Callable[[], None]] = []

    def flock(fd: int, op: int) -> None:
        while meddle:
            meddle.pop()()
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    meddle.append(lambda: os.replace(staged, moved))  # the "other process" commits
    with pytest.raises(UploadNotFound):
        await fs_store.upload_write("r", 3, chunks_of(b"def"))
    assert moved.read_bytes() == b"abc"
    assert not staged.exists()

    # Aborted and restarted under the same id meanwhile: not the file we opened.
    await fs_store.upload_start("r")

    def restart() -> None:
        staged.unlink()
        staged.write_bytes(b"")

    meddle.append(restart)
    with pytest.raises(UploadNotFound):
        await fs_store.upload_write("r", 0, chunks_of(b"xyz"))
    assert staged.read_bytes() == b""


async def test_cancel_waits_for_the_thread(
    fs_store: FilesystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled write does not return (and close its fd or drop its lock)
    while a pool thread is still writing through that fd."""
    await fs_store.upload_start("t")
    in_write = threading.Event()
    proceed = threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, data: Any, pos: int) -> int:
        in_write.set()
        proceed.wait(60)
        return real_pwrite(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    task = asyncio.create_task(fs_store.upload_write("t", 0, chunks_of(b"payload")))
    assert await asyncio.to_thread(in_write.wait, 60)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()
    assert "t" in fs_store.inner._locks
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.undo()
    assert fs_store.inner._locks == {}
    assert await fs_store.upload_size("t") == 7
