"""The upload janitor against a real etcd and the filesystem blob store."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore


async def _registry(kv: EtcdKV, root: Path, grace: float) -> Registry:
    return Registry(
        kv,
        FilesystemBlobStore(root),
        SystemClock(),
        RandomIds(),
        prefix=f"/janitor-{uuid.uuid4().hex[:10]}",
        cache=False,
        upload_grace=grace,
    )


def _age(root: Path, upload_id: str, seconds: float) -> None:
    path = root / "uploads" / upload_id
    old = time.time() - seconds
    os.utime(path, (old, old))


async def test_removes_only_old_staging_without_a_session(kv: EtcdKV, tmp_path: Path) -> None:
    reg = await _registry(kv, tmp_path, grace=3600)
    try:
        live = await reg.uploads.start("repo")  # has a session record
        await reg.store.upload_start("orphan-old")  # staging whose session is gone
        await reg.store.upload_start("orphan-new")  # staging of a request still running
        _age(tmp_path, live.upload_id, 7200)
        _age(tmp_path, "orphan-old", 7200)
        assert await reg.janitor.sweep() == ["orphan-old"]
        assert await reg.store.upload_size("orphan-old") is None
        assert await reg.store.upload_size("orphan-new") == 0
        assert await reg.store.upload_size(live.upload_id) == 0
    finally:
        await reg.store.close()


async def test_staging_of_an_expired_session_is_removed(kv: EtcdKV, tmp_path: Path) -> None:
    reg = await _registry(kv, tmp_path, grace=0)
    try:
        status = await reg.uploads.start("repo")
        # The session's lease expiring is what an abandoned upload looks like.
        lease = reg.meta._upload_lease
        assert lease is not None
        await kv.revoke_lease(lease[1])
        assert await reg.meta.get_upload(status.upload_id) is None
        assert await reg.janitor.sweep() == [status.upload_id]
        assert await reg.store.upload_size(status.upload_id) is None
    finally:
        await reg.store.close()


async def test_each_sweep_asks_the_store_for_what_dead_writes_left(kv: EtcdKV, tmp_path: Path) -> None:
    """``sweep_abandoned`` (on S3: the multipart uploads of a replica killed
    mid-put) runs with every sweep, never on a dry run."""
    calls: list[str] = []
    reg = Registry(
        kv,
        FilesystemBlobStore(tmp_path, observe=lambda op, *_: calls.append(op)),
        SystemClock(),
        RandomIds(),
        prefix=f"/janitor-{uuid.uuid4().hex[:10]}",
        cache=False,
        upload_grace=3600,
    )
    try:
        await reg.janitor.sweep(dry_run=True)
        assert "sweep_abandoned" not in calls
        await reg.janitor.sweep()
        assert calls.count("sweep_abandoned") == 1
    finally:
        await reg.store.close()
