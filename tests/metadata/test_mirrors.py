"""hareg.metadata.mirrors against real etcd: the tag-check record claimed with a
compare (one claimant per revision), and fetch claims held by a lease (one
holder; released by revoking it, or by its expiry)."""

from __future__ import annotations

import asyncio

from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import MirrorCheckRecord
from hareg.metadata.store import MetadataStore

from .support import digest, record


async def test_a_check_is_claimed_by_one_of_its_readers(meta: MetadataStore) -> None:
    assert await meta.get_mirror_check("mirror/app", "v1") is None
    # Two replicas read "never checked" (revision 0); one claim wins.
    first = await meta.claim_mirror_check("mirror/app", "v1", 0, MirrorCheckRecord(checked=10.0))
    second = await meta.claim_mirror_check("mirror/app", "v1", 0, MirrorCheckRecord(checked=10.5))
    assert (first, second) == (True, False)
    found = await meta.get_mirror_check("mirror/app", "v1")
    assert found is not None
    record, revision = found
    assert record == MirrorCheckRecord(checked=10.0)
    await meta.set_mirror_check("mirror/app", "v1", MirrorCheckRecord(11.0, digest("a")))
    after = await meta.get_mirror_check("mirror/app", "v1")
    assert after is not None and after[0] == MirrorCheckRecord(11.0, digest("a"))
    # A claim against the revision read before the answer was recorded loses.
    assert not await meta.claim_mirror_check("mirror/app", "v1", revision, MirrorCheckRecord(20.0))
    assert await meta.claim_mirror_check("mirror/app", "v1", after[1], MirrorCheckRecord(20.0))


async def test_a_fetch_has_one_holder_until_released(meta: MetadataStore) -> None:
    name = digest("blob")
    lease = await meta.claim_fetch("mirror/app", name, 30)
    assert lease
    assert await meta.fetch_claimed("mirror/app", name)
    assert await meta.claim_fetch("mirror/app", name, 30) is None
    # Another repository, or a tag, is another fetch.
    other = await meta.claim_fetch("mirror/other", name, 30)
    assert other
    assert await meta.refresh_fetch(lease)
    await meta.release_fetch(lease)
    assert not await meta.fetch_claimed("mirror/app", name)
    again = await meta.claim_fetch("mirror/app", name, 30)
    assert again
    await meta.release_fetch(again)
    await meta.release_fetch(other)


async def test_a_dead_fetchers_claim_expires_with_its_lease(
    kv: EtcdKV, keys: Keys, meta: MetadataStore
) -> None:
    lease = await meta.claim_fetch("mirror/app", "v1", 2)  # never refreshed: its replica "died"
    assert lease
    async with asyncio.timeout(30):
        while await meta.fetch_claimed("mirror/app", "v1"):
            await asyncio.sleep(0.2)
    assert not await meta.refresh_fetch(lease)
    assert await kv.get(keys.mirror_fetch("mirror/app", "v1")) is None


async def test_sparse_puts_racing_for_one_tag_retry_instead_of_being_refused(meta: MetadataStore) -> None:
    """The pull-through cache stores manifests sparse (their blobs are not
    linked yet): one that loses a race for its tag is read again and retried,
    not refused for the references its transaction never compared."""
    names = [digest(f"sparse {i}") for i in range(8)]
    results = await asyncio.gather(
        *(meta.put_manifest("mirror/app", name, record(), ["v1"], sparse=True) for name in names),
        return_exceptions=True,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    tag = await meta.get_tag("mirror/app", "v1")
    assert tag is not None and tag.digest in names
    assert len(await meta.tag_history("mirror/app", "v1")) == len(names)
