"""The wrapper every driver is served through: its checks stop a bad argument
before the driver sees it, and every call is reported with its outcome,
duration and bytes.  Run over the real filesystem driver (and an unreachable
S3 endpoint for an outage)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hareg.storage.base import BlobNotFound, UploadNotFound, UploadOffsetMismatch
from hareg.storage.checked import CheckedBlobStore, outcome_of
from hareg.storage.filesystem import FilesystemBlobStore, FilesystemDriver

from .driver_suite import BAD_DIGESTS, BAD_UPLOAD_IDS, MiB, StreamBroke, chunks_of, collect, digest_of, put

Seen = list[tuple[str, str, int]]


class Ticks:
    """A monotonic clock that advances one second per reading."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def seen() -> Seen:
    return []


@pytest.fixture
async def store(tmp_path: Path, seen: Seen) -> AsyncIterator[FilesystemBlobStore]:
    s = FilesystemBlobStore(
        tmp_path / "root", observe=lambda op, _s, outcome, n: seen.append((op, outcome, n))
    )
    yield s
    await s.close()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def test_a_bad_argument_never_reaches_the_driver(tmp_path: Path, seen: Seen) -> None:
    """The bare driver builds paths from what it is given; the wrapper is what
    keeps a hostile name out, whichever call it arrives in."""
    driver = FilesystemDriver(tmp_path / "root")
    store = CheckedBlobStore(driver, observe=lambda op, _s, outcome, n: seen.append((op, outcome, n)))
    await store.upload_start("good")
    before = tree(tmp_path)
    try:
        for bad in BAD_DIGESTS:
            with pytest.raises(ValueError):
                await store.stat(bad)
            with pytest.raises(ValueError):
                store.read(bad)
            with pytest.raises(ValueError):
                await store.presign(bad, 60)
            with pytest.raises(ValueError):
                await store.upload_commit("good", bad, 0)
        for bad_id in BAD_UPLOAD_IDS:
            with pytest.raises(ValueError):
                await store.upload_write(bad_id, 0, chunks_of(b"evil"))
            with pytest.raises(ValueError):
                store.upload_read(bad_id)
            with pytest.raises(ValueError):
                await store.upload_abort(bad_id)
        digest = digest_of(b"")
        for bad_count in (-1, 1.0, True, None, "0"):
            with pytest.raises(ValueError):
                store.read(digest, bad_count)  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await store.upload_write("good", bad_count, chunks_of(b"x"))  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await store.upload_commit("good", digest, bad_count)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.read(digest, 0, -1)
        with pytest.raises(ValueError):
            store.upload_read("good", -1)
        for bad_expiry in (0, -5, 1.5):
            with pytest.raises(ValueError):
                await store.presign(digest, bad_expiry)  # type: ignore[arg-type]
        assert await driver.upload_size("good") == 0
    finally:
        await store.close()
    assert tree(tmp_path) == before  # nothing created, removed or moved
    assert seen[0] == ("upload_start", "ok", 0)
    assert len(seen) > 1 and all(outcome == "invalid" for _, outcome, _ in seen[1:])


async def test_every_call_is_reported_with_its_outcome(store: FilesystemBlobStore, seen: Seen) -> None:
    data = b"some blob bytes"
    digest = await put(store, "u1", data)
    assert seen == [("upload_start", "ok", 0), ("upload_write", "ok", len(data)), ("upload_commit", "ok", 0)]
    seen.clear()

    assert await store.stat(digest) == len(data)
    assert await store.stat(digest_of(b"absent")) is None  # an answer, not a failure
    assert store.local_path(digest) is not None
    assert await store.presign(digest, 60) is None
    with pytest.raises(BlobNotFound):
        await collect(store.read(digest_of(b"absent")))
    await store.upload_start("u2")
    await store.upload_write("u2", 0, chunks_of(b"abc"))
    with pytest.raises(UploadOffsetMismatch):
        await store.upload_write("u2", 1, chunks_of(b"x"))
    with pytest.raises(StreamBroke):
        await store.upload_write("u2", 3, failing())
    with pytest.raises(UploadNotFound):
        await store.upload_seal("nope")
    assert await store.upload_size("u2") == 3
    assert await store.upload_modified("u2") is not None
    assert [u async for u in store.list_uploads()] == ["u2"]
    assert [d async for d in store.list_blobs()] == [digest]
    await store.upload_abort("u2")
    assert await store.delete(digest) is True
    assert seen == [
        ("stat", "ok", 0),
        ("stat", "ok", 0),
        ("local_path", "ok", 0),
        ("presign", "ok", 0),
        ("read", "not_found", 0),
        ("upload_start", "ok", 0),
        ("upload_write", "ok", 3),
        ("upload_write", "offset_mismatch", 0),
        ("upload_write", "other", 0),  # the body stream failed: nothing was appended
        ("upload_seal", "not_found", 0),
        ("upload_size", "ok", 0),
        ("upload_modified", "ok", 0),
        ("list_uploads", "ok", 0),
        ("list_blobs", "ok", 0),
        ("upload_abort", "ok", 0),
        ("delete", "ok", 0),
    ]


async def failing() -> AsyncIterator[bytes]:
    yield b"never stored"
    raise StreamBroke


async def test_streams_pass_chunks_through_and_count_their_bytes(tmp_path: Path, seen: Seen) -> None:
    store = FilesystemBlobStore(
        tmp_path / "root",
        read_chunk_size=64 * 1024,
        observe=lambda op, _s, outcome, n: seen.append((op, outcome, n)),
    )
    try:
        data = os.urandom(MiB + 5)
        digest = await put(store, "big", data)
        seen.clear()
        # The same chunks as the driver yields: nothing is gathered or split.
        chunks = [c async for c in store.read(digest)]
        assert [len(c) for c in chunks] == [len(c) async for c in store.inner.read(digest)]
        assert b"".join(chunks) == data
        assert await collect(store.read(digest, 10, 100)) == data[10:110]
        await store.upload_start("staged")
        await store.upload_write("staged", 0, chunks_of(data[:1000]))
        assert await collect(store.upload_read("staged", 600)) == data[:600]
        # A consumer that stops early: the bytes it got, and the outcome says so.
        stream = store.read(digest)
        first = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
    assert seen == [
        ("read", "ok", len(data)),
        ("read", "ok", 100),
        ("upload_start", "ok", 0),
        ("upload_write", "ok", 1000),
        ("upload_read", "ok", 600),
        ("read", "cancelled", len(first)),
    ]


async def test_durations_come_from_the_given_clock(tmp_path: Path) -> None:
    durations: list[tuple[str, float]] = []
    store = CheckedBlobStore(
        FilesystemDriver(tmp_path / "root"),
        observe=lambda op, seconds, _o, _n: durations.append((op, seconds)),
        clock=Ticks(),
    )
    try:
        digest = await put(store, "u", b"abc")
        assert await collect(store.read(digest)) == b"abc"
    finally:
        await store.close()
    # One reading at the start of a call, one at its end (for a stream, the end of the stream).
    assert durations == [("upload_start", 1.0), ("upload_write", 1.0), ("upload_commit", 1.0), ("read", 1.0)]


async def test_listings_drop_what_is_not_a_valid_name(store: FilesystemBlobStore) -> None:
    digest = await put(store, "kept", b"kept")
    root = store.root
    hexdigest = "A" * 64  # upper case: not a digest
    (root / "blobs" / "sha256" / "AA").mkdir()
    (root / "blobs" / "sha256" / "AA" / hexdigest).write_bytes(b"")
    (root / "uploads" / "bad name").write_bytes(b"")
    await store.upload_start("ok-id")
    assert [d async for d in store.list_blobs()] == [digest]
    assert [u async for u in store.list_uploads()] == ["ok-id"]
    assert "AA" in [p.name for p in (root / "blobs" / "sha256").iterdir()]  # the bare driver lists it


async def test_cancelled_call_is_reported_as_cancelled(store: FilesystemBlobStore, seen: Seen) -> None:
    await store.upload_start("slow")
    asked_again = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"first"
        asked_again.set()  # the driver has taken the first chunk
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(store.upload_write("slow", 0, stalled()))
    async with asyncio.timeout(30):
        await asked_again.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen[-1] == ("upload_write", "cancelled", 0)
    assert await store.upload_size("slow") == 0  # the filesystem driver took the bytes back


def outcomes() -> Iterator[tuple[BaseException | None, str]]:
    yield None, "ok"
    yield UploadNotFound("u"), "not_found"
    yield UploadOffsetMismatch(1, 2), "offset_mismatch"
    yield ValueError("bad"), "invalid"
    yield asyncio.CancelledError(), "cancelled"
    yield StreamBroke(), "other"


@pytest.mark.parametrize(("exc", "outcome"), list(outcomes()))
def test_outcome_names(exc: BaseException | None, outcome: str) -> None:
    assert outcome_of(exc) == outcome
