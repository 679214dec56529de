"""The integrity check (hareg/registry/fsck.py) against a real etcd, on the
filesystem driver and on S3 (a real SeaweedFS): damaged blobs and large
manifest bodies are found, quarantined with ``repair`` (pulls then fail with
BLOB_UNKNOWN / MANIFEST_UNKNOWN) and restored by an honest re-push."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import obstore
import pytest

from hareg.clock import SystemClock
from hareg.config.cron import parse_cron
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.metadata.records import BlobRecord
from hareg.processes.seaweedfs import SeaweedFSProcess
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.fsck import FsckBusy
from hareg.registry.pruner import NotLeader
from hareg.registry.service import Registry
from hareg.registry.streams import one_chunk
from hareg.storage.base import BlobStore
from hareg.storage.filesystem import FilesystemBlobStore
from hareg.storage.s3 import S3BlobStore
from registry.images import OCI, digest, manifest


@pytest.fixture(params=["filesystem", "s3"])
def weed(request: pytest.FixtureRequest) -> SeaweedFSProcess | None:
    """The session's SeaweedFS for the S3 case (started outside any event loop)."""
    return request.getfixturevalue("seaweedfs") if request.param == "s3" else None


@pytest.fixture
async def store(weed: SeaweedFSProcess | None, tmp_path: Path) -> AsyncIterator[BlobStore]:
    made: BlobStore
    if weed is None:
        made = FilesystemBlobStore(tmp_path / "blobs")
    else:
        made = S3BlobStore(
            bucket=weed.bucket,
            region_endpoint=weed.s3_url,
            access_key=weed.access_key,
            secret_key=weed.secret_key,
            key_prefix=f"test/{uuid.uuid4().hex}/",
            timeout=10.0,
        )
    yield made
    await made.close()


@pytest.fixture
async def reg(kv: EtcdKV, store: BlobStore) -> AsyncIterator[Registry]:
    r = Registry(kv, store, SystemClock(), RandomIds(), prefix=f"/test-{uuid.uuid4().hex[:12]}")
    # Manifests over 1 KiB are stored in the blob store, not inline in etcd.
    r.meta.inline_limit = 1024
    await r.start()
    try:
        async with asyncio.timeout(60):  # a campaign: generous, the machine may be busy
            while not r.leadership.is_leader:
                await asyncio.sleep(0.05)
        yield r
    finally:
        await r.stop()


def _overwrite(path: str, data: bytes) -> None:
    os.chmod(path, 0o600)  # committed blobs may be read-only
    Path(path).write_bytes(data)


async def damage(store: BlobStore, name: str, data: bytes) -> None:
    """Change the bytes stored under ``name`` behind the registry's back."""
    if isinstance(store, FilesystemBlobStore):
        path = store.local_path(name)
        assert path is not None
        await asyncio.to_thread(_overwrite, path, data)
    else:
        assert isinstance(store, S3BlobStore)
        await obstore.put_async(store.inner._store, store.inner._blob_key(name), data)


async def push_blob(reg: Registry, repo: str, data: bytes) -> str:
    await reg.uploads.monolithic(repo, digest(data), one_chunk(data), length=len(data))
    return digest(data)


async def push_image(reg: Registry, repo: str, tag: str, note: str = "x") -> tuple[str, bytes, list[bytes]]:
    """A config and one layer, and a manifest large enough to live in the blob store."""
    config = f"config {repo} {note}".encode()
    layer = f"layer of {repo} {note}".encode() * 100
    for blob in (config, layer):
        await push_blob(reg, repo, blob)
    body = manifest(config, [layer], note * 2000)
    assert len(body) > reg.meta.inline_limit
    pushed = await reg.manifests.put(repo, tag, body, OCI)
    return pushed.digest, body, [config, layer]


async def read(store: BlobStore, name: str) -> bytes:
    return b"".join([c async for c in store.read(name)])


async def test_a_clean_registry_has_nothing_corrupt(reg: Registry) -> None:
    await push_image(reg, "app", "v1")
    report = await reg.pruner.run_fsck()
    assert report.checked == 3 and report.corrupt == []
    assert report.to_json()["corrupt"] == [] and report.bytes > 0


async def test_finds_a_damaged_blob_and_a_damaged_manifest_body(reg: Registry) -> None:
    mdigest, body, (_config, layer) = await push_image(reg, "app", "v1")
    ldigest = digest(layer)
    await damage(reg.store, ldigest, b"not the layer" + layer)
    await damage(reg.store, mdigest, body.replace(b'"x', b'"y', 1))
    report = await reg.pruner.run_fsck()
    assert report.checked == 3
    found = {f.digest: f for f in report.corrupt}
    assert set(found) == {ldigest, mdigest}
    assert f"its {len(layer) + 13} bytes hash to sha256:" in found[ldigest].reason
    assert not any(f.quarantined for f in report.corrupt)
    # A check alone changes nothing ...
    assert await reg.meta.get_blob(ldigest) is not None
    assert (await reg.blobs.stat("app", ldigest)).size == len(layer)
    # ... but the damaged manifest body is never served.
    for ref in ("v1", mdigest):
        with pytest.raises(RegistryError) as exc:
            await reg.manifests.get("app", ref)
        assert exc.value.code is ErrorCode.MANIFEST_UNKNOWN and "damaged" in exc.value.message


async def test_repair_quarantines_and_a_push_restores(reg: Registry) -> None:
    mdigest, body, (config, layer) = await push_image(reg, "app", "v1")
    ldigest = digest(layer)
    await push_blob(reg, "other", layer)  # linked in a second repository too
    await damage(reg.store, ldigest, layer[:-1])
    await damage(reg.store, mdigest, body + b" ")
    report = await reg.pruner.run_fsck(repair=True)
    assert {f.digest for f in report.corrupt} == {ldigest, mdigest}
    assert all(f.quarantined for f in report.corrupt) and report.unrepaired == 0
    # Pulls fail loudly: no link anywhere, no record, no bytes.
    for repo in ("app", "other"):
        with pytest.raises(RegistryError) as exc:
            await reg.blobs.stat(repo, ldigest)
        assert exc.value.code is ErrorCode.BLOB_UNKNOWN
    for name in (ldigest, mdigest):
        assert await reg.meta.get_blob(name) is None and await reg.store.stat(name) is None
    with pytest.raises(RegistryError) as exc:
        await reg.manifests.get("app", "v1")
    assert exc.value.code is ErrorCode.MANIFEST_UNKNOWN
    # The config was fine and stays.
    assert (await reg.blobs.stat("app", digest(config))).size == len(config)
    # An honest push restores both.
    await push_blob(reg, "app", layer)
    await reg.manifests.put("app", "v1", body, OCI)
    assert await read(reg.store, ldigest) == layer
    assert (await reg.manifests.get("app", "v1")).body == body
    clean = await reg.pruner.run_fsck()
    assert clean.checked == 3 and clean.corrupt == []


async def test_repair_leaves_an_object_a_push_fixed_meanwhile(reg: Registry) -> None:
    _, _, (_config, layer) = await push_image(reg, "app", "v1")
    ldigest = digest(layer)
    before, _ = await reg.pruner.fsck.gc_store.blob_record(ldigest)  # type: ignore[union-attr]
    # Found damaged, then correct bytes are back before the quarantine claims it.
    await damage(reg.store, ldigest, b"junk")
    await damage(reg.store, ldigest, layer)
    checker = reg.pruner.fsck
    assert checker is not None
    assert await checker._quarantine(ldigest, "damaged", reg.leadership.fence()) is None
    assert await read(reg.store, ldigest) == layer
    assert await reg.meta.get_blob(ldigest) == before  # the claim is released
    assert (await reg.blobs.stat("app", ldigest)).size == len(layer)
    await push_blob(reg, "app2", layer)  # the blob takes new links again


async def test_repair_leaves_a_blob_the_collector_claimed(reg: Registry) -> None:
    _, _, (_config, layer) = await push_image(reg, "app", "v1")
    ldigest = digest(layer)
    gc_store = reg.pruner.collector.gc_store
    record, mod = await gc_store.blob_record(ldigest)
    assert record is not None
    assert await gc_store.mark_blob_deleting(ldigest, record, mod, reg.leadership.fence())
    await damage(reg.store, ldigest, b"junk")
    report = await reg.pruner.run_fsck(repair=True)
    assert [(f.digest, f.quarantined) for f in report.corrupt] == [(ldigest, False)]
    assert "garbage collect" in (report.corrupt[0].note or "")
    assert await read(reg.store, ldigest) == b"junk"  # left to the collector


async def test_a_stale_claim_is_refused(reg: Registry) -> None:
    """The quarantine claim compares the record's mod_revision: a push that
    links the blob after the record was read makes it fail."""
    _, _, (_config, layer) = await push_image(reg, "app", "v1")
    ldigest = digest(layer)
    gc_store = reg.pruner.collector.gc_store
    record, mod = await gc_store.blob_record(ldigest)
    assert record is not None
    await push_blob(reg, "late", layer)  # re-writes the record
    claimed = BlobRecord(record.size, record.created, state="deleting")
    assert not await gc_store.mark_blob_deleting(ldigest, claimed, mod, reg.leadership.fence())


async def test_one_check_at_a_time(reg: Registry) -> None:
    _, _, (config, _layer) = await push_image(reg, "app", "v1")
    await damage(reg.store, digest(config), b"junk")
    checker = reg.pruner.fsck
    assert checker is not None
    # The first check holds still at its quarantine, which waits for the pruner's lock.
    async with reg.pruner._lock:
        first = asyncio.create_task(reg.pruner.run_fsck(repair=True))
        async with asyncio.timeout(30):
            while not checker.running:
                await asyncio.sleep(0.01)
        with pytest.raises(FsckBusy):
            await reg.pruner.run_fsck()
    report = await first
    assert report.checked == 3 and [f.digest for f in report.corrupt] == [digest(config)]
    assert not checker.running
    assert (await reg.pruner.run_fsck()).corrupt == []  # free again, and the damage is gone


async def test_repair_needs_the_pruner_leadership(reg: Registry) -> None:
    await reg.leadership.resign()
    for task in reg._tasks:
        if task.get_name() == "pruner-leadership":
            task.cancel()
    with pytest.raises(NotLeader):
        await reg.pruner.run_fsck(repair=True)
    assert (await reg.pruner.run_fsck()).corrupt == []  # a check only reads: it runs anywhere


async def _run_schedule(reg: Registry, until: Callable[[int], bool]) -> None:
    """Run the scheduled-check loop, its waits cut to 10 ms, until ``until(wake-ups)``."""
    wakes = 0

    def no_wait(schedule: object = None) -> float:
        nonlocal wakes
        wakes += 1
        return 0.01

    reg.pruner.fsck_schedule = parse_cron("0 4 * * SUN")
    reg.pruner._seconds_to_next = no_wait  # type: ignore[method-assign]
    task = asyncio.create_task(reg.pruner.run_fsck_scheduled())
    try:
        async with asyncio.timeout(30):
            while not until(wakes):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_scheduled_check_repairs_on_the_leader(reg: Registry) -> None:
    _, _, (config, _layer) = await push_image(reg, "app", "v1")
    await damage(reg.store, digest(config), b"junk")
    reg.pruner.fsck_repair = True
    checker = reg.pruner.fsck
    assert checker is not None
    await _run_schedule(reg, lambda _: checker.last_report is not None)
    assert checker.last_report is not None
    assert [(f.digest, f.quarantined) for f in checker.last_report.corrupt] == [(digest(config), True)]
    assert await reg.store.stat(digest(config)) is None


async def test_the_scheduled_check_runs_on_the_leader_only(reg: Registry) -> None:
    await push_image(reg, "app", "v1")
    await reg.leadership.resign()
    for task in reg._tasks:
        if task.get_name() == "pruner-leadership":
            task.cancel()
    checker = reg.pruner.fsck
    assert checker is not None
    await _run_schedule(reg, lambda wakes: wakes >= 5)  # several wake-ups ...
    assert checker.last_report is None  # ... and no check


async def test_the_listed_findings_are_bounded(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    from hareg.registry import fsck

    monkeypatch.setattr(fsck, "MAX_LISTED", 1)
    _, _, (config, layer) = await push_image(reg, "app", "v1")
    for blob in (config, layer):
        await damage(reg.store, digest(blob), b"junk")
    report = await reg.pruner.run_fsck()
    assert len(report.corrupt) == 1 and report.corrupt_total == 2 and report.unrepaired == 2
    doc = report.to_json()
    assert doc["truncated"] is True and doc["counts"] == {"corrupt": 2, "quarantined": 0}


async def test_an_honest_push_during_the_check_is_never_undone(reg: Registry) -> None:
    """Found damaged; before the quarantine claims it, an honest push replaces
    the bytes (a re-push replaces a stored blob that fails the driver's check)
    and is acknowledged: the quarantine re-hashes under its claim and leaves it."""
    _, _, (_config, layer) = await push_image(reg, "app", "v1")
    ldigest = digest(layer)
    await damage(reg.store, ldigest, b"shorter junk")  # another size: every driver's check fails it
    checker = reg.pruner.fsck
    assert checker is not None
    async with reg.pruner._lock:  # the quarantine waits for the pruner's lock ...
        task = asyncio.create_task(reg.pruner.run_fsck(repair=True))
        async with asyncio.timeout(30):
            while not reg.pruner._lock._waiters:  # ... which it does once it found the damage
                await asyncio.sleep(0.01)
        await push_blob(reg, "app", layer)  # acknowledged
        assert await read(reg.store, ldigest) == layer
    report = await task
    assert report.corrupt == [] and report.checked == 3
    assert await read(reg.store, ldigest) == layer
    assert (await reg.blobs.stat("app", ldigest)).size == len(layer)
    record = await reg.meta.get_blob(ldigest)
    assert record is not None and record.state == "live"
