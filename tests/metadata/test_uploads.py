"""Upload session records (hareg/metadata/uploads.py) against a real etcd,
with lost replies: a record write is verified by its write id and, when it
compares the record's revision (a claim, a release, a seal), re-sent while
it did not apply; a late first attempt can never apply after its re-send."""

from __future__ import annotations

import uuid

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import KVUnknownOutcome
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import UploadRecord, decode
from hareg.metadata.store import MetadataStore

from .faulty_kv import UnknownOutcomeKV


@pytest.fixture
def keys() -> Keys:
    return Keys(f"/uploads-{uuid.uuid4().hex[:10]}")


async def test_a_claim_whose_reply_was_lost_is_sent_again_and_the_late_one_fails(
    kv: EtcdKV, keys: Keys
) -> None:
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r")
    await setup.create_upload("u", "repo", "sha256")
    flaky = UnknownOutcomeKV(kv, apply=False, late=True)
    meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")
    claimed = await meta.claim_upload("u", "repo", "writer-1", 60.0)
    assert claimed is not None and claimed.writer == "writer-1"
    assert flaky.writes == 2  # the lost attempt, then its re-send
    found = await kv.get(keys.upload("u"))
    assert found is not None
    (late,) = await flaky.deliver()
    assert not late.succeeded  # fenced: the first attempt's compare fails whenever it arrives
    after = await kv.get(keys.upload("u"))
    assert after is not None and after.mod_revision == found.mod_revision
    assert decode(UploadRecord, after.value).writer == "writer-1"


async def test_a_release_whose_reply_was_lost_but_applied_is_verified(kv: EtcdKV, keys: Keys) -> None:
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r")
    await setup.create_upload("u", "repo", "sha256")
    assert await setup.claim_upload("u", "repo", "w", 60.0) is not None
    flaky = UnknownOutcomeKV(kv, apply=True)
    meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")
    assert await meta.release_upload("u", "repo", "w", 10)
    assert flaky.writes == 1
    record = await setup.get_upload("u")
    assert record is not None and record.size == 10 and record.writer == ""


async def test_a_start_whose_reply_was_lost_is_never_sent_again(kv: EtcdKV, keys: Keys) -> None:
    """A record written without a compare is not fenced: a late first attempt
    could apply after a re-send, so it is only verified (the service layer
    starts over under a fresh id: tests/registry/test_uploads.py)."""
    flaky = UnknownOutcomeKV(kv, apply=False)
    meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")
    with pytest.raises(KVUnknownOutcome):
        await meta.create_upload("u", "repo", "sha256")
    assert flaky.writes == 1


async def test_a_close_of_a_new_blob_whose_reply_was_lost_is_sent_again(kv: EtcdKV, keys: Keys) -> None:
    """The closing write links a blob no record names yet: fenced by the
    session record it deletes, so re-sent, and the late first attempt fails."""
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r")
    await setup.create_upload("u", "repo", "sha256")
    blob = "sha256:" + "ab" * 32
    assert await setup.seal_upload("u", "repo", blob) is not None
    flaky = UnknownOutcomeKV(kv, apply=False, late=True, deletes=True)
    meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")

    async def present() -> bool:
        return True

    await meta.add_blob("repo", blob, 10, "u", bytes_present=present)
    assert flaky.writes == 2
    assert await kv.get(keys.upload("u")) is None and await kv.get(keys.link("repo", blob)) is not None
    (late,) = await flaky.deliver()
    assert not late.succeeded
