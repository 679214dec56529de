"""Upload sessions in the service layer (hareg/registry/uploads.py), against
a real etcd: a session start whose record write lost its reply."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from metadata.faulty_kv import UnknownOutcomeKV

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import KVUnknownOutcome
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.store import MetadataStore
from hareg.registry.uploads import UploadService
from hareg.storage.filesystem import FilesystemBlobStore


@pytest.fixture
def keys() -> Keys:
    return Keys(f"/uploads-{uuid.uuid4().hex[:10]}")


def _service(kv: EtcdKV | UnknownOutcomeKV, keys: Keys, root: Path) -> UploadService:
    meta = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r")
    return UploadService(meta, FilesystemBlobStore(root), RandomIds())


async def test_a_start_whose_record_applied_is_verified(kv: EtcdKV, keys: Keys, tmp_path: Path) -> None:
    flaky = UnknownOutcomeKV(kv, apply=True)
    status = await _service(flaky, keys, tmp_path).start("repo")
    assert flaky.writes == 1  # verified by reading the record back, not sent again
    assert await kv.get(keys.upload(status.upload_id)) is not None


async def test_a_start_whose_record_may_still_apply_gets_a_fresh_id(
    kv: EtcdKV, keys: Keys, tmp_path: Path
) -> None:
    """The lost attempt may apply late (held in a frozen member): its id is
    never handed out, so the session the client gets is the second one, and
    the first, if it appears, is an unused record that expires with its lease."""
    flaky = UnknownOutcomeKV(kv, apply=False, late=True)
    status = await _service(flaky, keys, tmp_path).start("repo")
    assert flaky.writes == 2
    assert await kv.get(keys.upload(status.upload_id)) is not None
    (late,) = await flaky.deliver()
    assert late.succeeded
    stored = await kv.range(keys.upload(""), keys.upload("\xff"), keys_only=True)
    assert len(stored.kvs) == 2 and keys.upload(status.upload_id) in {k.key for k in stored.kvs}


async def test_a_start_lost_twice_is_unknown(kv: EtcdKV, keys: Keys, tmp_path: Path) -> None:
    flaky = UnknownOutcomeKV(kv, apply=False, times=2)
    with pytest.raises(KVUnknownOutcome):
        await _service(flaky, keys, tmp_path).start("repo")
