"""The reverse-reference index against a real etcd: its entries follow every
manifest write and delete, a delete reads only its target's entries, deletes
racing pushes (forced interleavings, then many timed rounds) never leave a
reference dangling, and data an earlier version wrote (maps, no index) is
still read, still refused unsafe deletes, and gets its index built."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import Compare, Delete, Put, RangeResult, TxnOp, TxnResult, prefix_end
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import ManifestRecord
from hareg.metadata.store import MetadataStore, MissingReferences, ReferencedBy

from .support import OCI_INDEX, OCI_MANIFEST, REPLICA, digest, old_registry


def image(*blobs: str, subject: str | None = None) -> ManifestRecord:
    return ManifestRecord(OCI_MANIFEST, 100, 0.0, blobs=blobs, subject=subject, body=b"{}")


def index(*children: str) -> ManifestRecord:
    return ManifestRecord(OCI_INDEX, 100, 0.0, manifests=children, body=b"{}")


class RecordingKV:
    """A real etcd connection that records the ranges read and can hold a
    write transaction (``before_write``) until the test lets it go."""

    def __init__(self, inner: EtcdKV) -> None:
        self.inner = inner
        self.ranges: list[tuple[bytes, bytes]] = []
        self.before_write: Callable[[Sequence[TxnOp]], Awaitable[None]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def range(self, start: bytes, end: bytes, **kw: Any) -> RangeResult:
        self.ranges.append((start, end))
        return await self.inner.range(start, end, **kw)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        if self.before_write is not None and any(isinstance(op, (Put, Delete)) for op in success):
            hook, self.before_write = self.before_write, None  # once
            await hook(success)
        return await self.inner.txn(compares, success, failure)


def store(kv: Any, keys: Keys, replica: str = REPLICA) -> MetadataStore:
    return MetadataStore(kv, keys, SystemClock(), RandomIds(), replica)


async def entries(kv: EtcdKV, keys: Keys) -> set[tuple[str, str, str]]:
    start = keys.kind_prefix("x")
    found = await kv.range(start, prefix_end(start), keys_only=True)
    return {keys.reference_parts(k.key) for k in found.kvs}


async def ready(meta: MetadataStore) -> MetadataStore:
    """A store whose index counts as built (a fresh prefix has no old manifests)."""
    assert await meta.build_reference_index() == 0
    assert await meta.reference_index_ready()
    return meta


# ------------------------------------------------------------ the entries


async def test_entries_follow_pushes_and_deletes(meta: MetadataStore, kv: EtcdKV, keys: Keys) -> None:
    await ready(meta)
    config, layer, child, parent = digest("config"), digest("layer"), digest("child"), digest("parent")
    await meta.add_blob("repo", config, 1)
    await meta.add_blob("repo", layer, 1)
    await meta.put_manifest("repo", child, image(config, layer, layer))  # a digest listed twice: one entry
    await meta.put_manifest("repo", parent, index(child))
    assert await entries(kv, keys) == {
        ("repo", config, child),
        ("repo", layer, child),
        ("repo", child, parent),
    }
    await meta.put_manifest("repo", child, image(config, layer))  # a re-push writes the same entries
    assert len(await entries(kv, keys)) == 3
    with pytest.raises(ReferencedBy) as refused:
        await meta.delete_manifest("repo", child)
    assert refused.value.digests == [parent]
    with pytest.raises(ReferencedBy):
        await meta.remove_link("repo", layer)
    assert await meta.delete_manifest("repo", parent)
    assert await entries(kv, keys) == {("repo", config, child), ("repo", layer, child)}
    assert await meta.delete_manifest("repo", child)
    assert await entries(kv, keys) == set()
    assert await meta.remove_link("repo", layer)


async def test_a_delete_reads_only_its_targets_entries(kv: EtcdKV, keys: Keys) -> None:
    recording = RecordingKV(kv)
    meta = await ready(store(recording, keys))
    config = digest("config")
    await meta.add_blob("repo", config, 1)
    for i in range(20):
        await meta.put_manifest("repo", digest(f"m{i}"), image(config))
    await meta.add_blob("repo", digest("loose"), 1)
    recording.ranges.clear()
    assert await meta.remove_link("repo", digest("loose"))
    with pytest.raises(ReferencedBy):
        await meta.remove_link("repo", config)
    assert await meta.delete_manifest("repo", digest("m3"))
    manifests_span = keys.manifests("repo")
    assert manifests_span not in recording.ranges  # never every manifest of the repository
    assert keys.references_to("repo", digest("loose")) in recording.ranges


async def test_a_stale_entry_is_removed_by_the_delete_that_finds_it(
    meta: MetadataStore, kv: EtcdKV, keys: Keys
) -> None:
    """An entry whose manifest is gone (a write that could not finish) does not block a delete for ever."""
    await ready(meta)
    blob = digest("blob")
    await meta.add_blob("repo", blob, 1)
    await kv.txn([], [Put(keys.reference("repo", blob, digest("gone")), b"")])
    assert await meta.remove_link("repo", blob)
    assert await entries(kv, keys) == set()


async def test_a_digest_used_as_a_blob_does_not_keep_the_manifest_of_that_digest(
    meta: MetadataStore, kv: EtcdKV, keys: Keys
) -> None:
    """One digest both a blob (a layer of one manifest) and a manifest of the
    repository: each delete counts only the references in its own role."""
    await ready(meta)
    config, both = digest("config"), digest("both")
    await meta.add_blob("repo", config, 1)
    await meta.put_manifest("repo", both, image(config))
    await meta.add_blob("repo", both, 1)
    await meta.put_manifest("repo", digest("user"), image(config, both))
    with pytest.raises(ReferencedBy):
        await meta.remove_link("repo", both)
    assert await meta.delete_manifest("repo", both)  # nothing lists it as a child
    assert ("repo", both, digest("user")) in await entries(kv, keys)  # the layer's entry stays


# ----------------------------------------------------- deletes racing pushes


async def test_a_push_that_commits_between_a_deletes_read_and_its_write_makes_it_refuse(
    kv: EtcdKV, keys: Keys
) -> None:
    pusher = await ready(store(kv, keys, "pusher"))
    held = RecordingKV(kv)
    deleter = store(held, keys, "deleter")
    blob, child, config = digest("blob"), digest("child"), digest("config")
    await pusher.add_blob("repo", blob, 1)
    await pusher.add_blob("repo", config, 1)
    await pusher.put_manifest("repo", child, image(config))

    async def push_first(ops: Sequence[TxnOp]) -> None:
        if any(isinstance(op, Delete) and op.key == keys.link("repo", blob) for op in ops):
            await pusher.put_manifest("repo", digest("user"), image(blob))
        else:
            await pusher.put_manifest("repo", digest("parent"), index(child))

    held.before_write = push_first  # the delete found no user; a push commits one now
    with pytest.raises(ReferencedBy) as refused:
        await deleter.remove_link("repo", blob)
    assert refused.value.digests == [digest("user")]
    held.before_write = push_first
    with pytest.raises(ReferencedBy):
        await deleter.delete_manifest("repo", child)
    assert await pusher.get_manifest("repo", digest("parent")) is not None
    assert await pusher.get_manifest("repo", child) is not None


async def test_a_delete_that_commits_between_a_pushs_read_and_its_write_makes_it_fail(
    kv: EtcdKV, keys: Keys
) -> None:
    deleter = await ready(store(kv, keys, "deleter"))
    held = RecordingKV(kv)
    pusher = store(held, keys, "pusher")
    blob, child = digest("blob"), digest("child")
    await deleter.add_blob("repo", blob, 1)
    await deleter.add_blob("repo", digest("config"), 1)
    await deleter.put_manifest("repo", child, image(digest("config")))

    async def delete_first(ops: Sequence[TxnOp]) -> None:
        assert await deleter.remove_link("repo", blob)
        assert await deleter.delete_manifest("repo", child)

    held.before_write = delete_first  # the push saw both; they go before it commits
    with pytest.raises(MissingReferences) as refused:
        await pusher.put_manifest(
            "repo", digest("parent"), ManifestRecord(OCI_INDEX, 1, 0.0, (blob,), (child,))
        )
    assert refused.value.blobs == [blob] and refused.value.manifests == [child]
    assert await entries(kv, keys) == set()


async def test_many_rounds_of_deletes_racing_pushes_leave_no_dangling_reference(
    kv: EtcdKV, keys: Keys
) -> None:
    """Bounded: at most 60 rounds and 10 seconds.  Each round races a push
    that references a fresh blob and child (through one replica) against
    deletes of both (through two others), with random delays between each
    write's reads and its transaction; afterwards every manifest's references
    exist and the index is exactly the manifests' references."""
    rng = random.Random(16)

    class Jittery(RecordingKV):
        async def txn(
            self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
        ) -> TxnResult:
            await asyncio.sleep(rng.random() * 0.004)
            return await super().txn(compares, success, failure)

    replicas = [store(Jittery(kv), keys, f"r{i}") for i in range(3)]
    await ready(replicas[0])
    config = digest("config")
    await replicas[0].add_blob("repo", config, 1)
    deadline = time.monotonic() + 10
    rounds = pushed = unlinked = 0
    while rounds < 60 and time.monotonic() < deadline:
        rounds += 1
        blob, child, parent = digest(f"blob{rounds}"), digest(f"child{rounds}"), digest(f"parent{rounds}")
        await replicas[0].add_blob("repo", blob, 1)
        await replicas[0].put_manifest("repo", child, image(config))

        async def push(parent: str = parent, blob: str = blob, child: str = child) -> None:
            await replicas[0].put_manifest(
                "repo", parent, ManifestRecord(OCI_INDEX, 1, 0.0, (blob,), (child,)), ["t"]
            )

        async def unlink(blob: str = blob) -> None:
            await replicas[1].remove_link("repo", blob)

        async def drop(child: str = child) -> None:
            await replicas[2].delete_manifest("repo", child)

        results = await asyncio.gather(push(), unlink(), drop(), return_exceptions=True)
        for r in results:
            assert r is None or isinstance(r, MissingReferences | ReferencedBy), r
        pushed += results[0] is None
        unlinked += results[1] is None
    assert rounds >= 10 and pushed > 0 and unlinked > 0  # the races went both ways
    # Invariant 2, and the index is exactly what the manifests reference.
    start = keys.kind_prefix("m")
    stored = await kv.range(start, prefix_end(start))
    expected: set[tuple[str, str, str]] = set()
    for m in stored.kvs:
        repo, _, name = keys.strip("m", m.key).partition("@")
        rec = await replicas[0].get_manifest(repo, name)
        assert rec is not None
        for b in rec.blobs:
            assert await kv.get(keys.link(repo, b)) is not None, f"{name} references unlinked {b}"
        for c in rec.manifests:
            assert await kv.get(keys.manifest(repo, c)) is not None, f"{name} references missing {c}"
        expected |= {(repo, t, name) for t in (*rec.blobs, *rec.manifests)}
    assert await entries(kv, keys) == expected


# ------------------------------------------------ data of an earlier version


async def test_data_without_the_index_is_read_refuses_unsafe_deletes_and_gets_its_index(
    meta: MetadataStore, kv: EtcdKV, keys: Keys
) -> None:
    d = await old_registry(kv, keys)
    assert not await meta.reference_index_ready()
    image_record = await meta.get_manifest("old", d["image"])
    assert image_record is not None and image_record.blobs == (d["config"], d["layer"])
    [(name, referrer)] = await meta.list_referrers("old", d["image"])
    assert name == d["signature"] and referrer.annotations == {"note": "old"}
    # No index yet: the deletes look over the whole repository, and refuse.
    with pytest.raises(ReferencedBy):
        await meta.remove_link("old", d["layer"])
    with pytest.raises(ReferencedBy):
        await meta.delete_manifest("old", d["image"])
    # Built (as every replica's start does): one entry per reference, and the marker.
    other = store(kv, keys, "replica-b")
    assert await other.build_reference_index() == 3
    assert await other.build_reference_index() == 0  # once
    assert await entries(kv, keys) == {
        ("old", d["config"], d["image"]),
        ("old", d["layer"], d["image"]),
        ("old", d["image"], d["index"]),
        ("old", d["config"], d["signature"]),
    }
    assert await meta.reference_index_ready()  # another replica sees the marker
    with pytest.raises(ReferencedBy):
        await meta.remove_link("old", d["layer"])
    with pytest.raises(ReferencedBy) as refused:
        await meta.delete_manifest("old", d["image"])
    assert refused.value.digests == [d["index"]]
    # Deleting the old records works through the index, which follows them.
    assert await meta.delete_manifest("old", d["index"])
    assert await meta.delete_manifest("old", d["signature"])
    assert await meta.delete_manifest("old", d["image"])
    assert await meta.remove_link("old", d["layer"]) and await meta.remove_link("old", d["config"])
    assert await entries(kv, keys) == set()


async def test_a_build_skips_a_manifest_deleted_meanwhile(kv: EtcdKV, keys: Keys) -> None:
    d = await old_registry(kv, keys)
    builder_kv = RecordingKV(kv)
    builder = store(builder_kv, keys, "builder")
    deleter = store(kv, keys, "deleter")

    async def delete_first(ops: Sequence[TxnOp]) -> None:
        assert await deleter.delete_manifest("old", d["signature"])  # the old way: no index yet

    builder_kv.before_write = delete_first
    assert await builder.build_reference_index() == 2  # the image and the index, not the signature
    assert ("old", d["config"], d["signature"]) not in await entries(kv, keys)
