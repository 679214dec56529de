"""MetadataStore against the real etcd: atomic manifest pushes, forward-only tag
history, and the race between manifest pushes and blob unlinks (invariant 2 of docs/invariants.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import Delete, KVUnknownOutcome, prefix_end
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import LinkRecord, ManifestRecord, TagRecord, decode
from hareg.metadata.store import MetadataStore, MissingReferences, ReferencedBy
from hareg.metadata.writes import DEFAULT_MAX_RESENDS

from .faulty_kv import UnknownOutcomeKV
from .support import OCI_MANIFEST, digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def image_record(
    *blobs: str, subject: str | None = None, annotations: dict[str, str] | None = None
) -> ManifestRecord:
    return ManifestRecord(
        media_type=OCI_MANIFEST,
        size=100,
        created=0.0,
        blobs=tuple(blobs),
        subject=subject,
        artifact_type="application/vnd.example" if subject else None,
        annotations=annotations or {},
        body=b"{}",
    )


def index_record(*children: str) -> ManifestRecord:
    return ManifestRecord(media_type=OCI_INDEX, size=50, created=0.0, manifests=tuple(children), body=b"{}")


async def all_keys(kv: EtcdKV, keys: Keys) -> dict[bytes, bytes]:
    root = keys.root + b"/"
    result = await kv.range(root, prefix_end(root))
    return {item.key: item.value for item in result.kvs}


def kinds(snapshot: dict[bytes, bytes], keys: Keys) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key in snapshot:
        kind = key[len(keys.root) + 1 :].split(b"/", 1)[0].decode()
        out.setdefault(kind, set()).add(key.decode())
    return out


# ------------------------------------------------------------------ atomicity


async def test_manifest_put_is_all_or_nothing(meta: MetadataStore, kv: EtcdKV, keys: Keys) -> None:
    config, layer, subject = digest("config"), digest("layer"), digest("subject")
    await meta.add_blob("repo", config, 10)
    record = image_record(config, layer, subject=subject, annotations={"k": "v"})
    manifest = digest("manifest")
    before = await all_keys(kv, keys)

    with pytest.raises(MissingReferences) as info:
        await meta.put_manifest("repo", manifest, record, ["a", "b"])
    assert info.value.blobs == [layer] and info.value.manifests == []
    # Nothing of the push is there: no manifest, tag, tag sequence, history or referrer.
    assert await all_keys(kv, keys) == before
    assert await meta.get_tag("repo", "a") is None
    assert await meta.tag_history("repo", "a") == []
    assert await meta.list_referrers("repo", subject) == []

    await meta.add_blob("repo", layer, 20)
    writes = await meta.put_manifest("repo", manifest, record, ["a", "b"])
    assert [(w.tag, w.previous) for w in writes] == [("a", None), ("b", None)]
    after = kinds(await all_keys(kv, keys), keys)
    assert {keys.manifest("repo", manifest).decode()} <= after["m"]
    assert after["t"] == {keys.tag("repo", "a").decode(), keys.tag("repo", "b").decode()}
    assert after["s"] == {keys.tag_seq("repo", "a").decode(), keys.tag_seq("repo", "b").decode()}
    assert after["h"] == {keys.history("repo", "a", 1).decode(), keys.history("repo", "b", 1).decode()}
    assert after["f"] == {keys.referrer("repo", subject, manifest).decode()}
    # One reverse-index entry per reference; the annotations kept once, in the referrers entry.
    assert after["x"] == {keys.reference("repo", d, manifest).decode() for d in (config, layer)}
    assert await meta.get_manifest("repo", manifest) == replace(record, annotations={})
    [(ref_digest, referrer)] = await meta.list_referrers("repo", subject)
    assert ref_digest == manifest
    assert (referrer.media_type, referrer.size, referrer.annotations) == (OCI_MANIFEST, 100, {"k": "v"})


async def test_index_put_needs_every_child(meta: MetadataStore, kv: EtcdKV, keys: Keys) -> None:
    await meta.add_blob("repo", digest("c"), 1)
    child = digest("child")
    await meta.put_manifest("repo", child, image_record(digest("c")))
    before = await all_keys(kv, keys)
    with pytest.raises(MissingReferences) as info:
        await meta.put_manifest("repo", digest("index"), index_record(child, digest("ghost")), ["latest"])
    assert info.value.manifests == [digest("ghost")]
    assert await all_keys(kv, keys) == before


async def test_references_are_per_repository(meta: MetadataStore) -> None:
    await meta.add_blob("other", digest("c"), 1)
    with pytest.raises(MissingReferences):
        await meta.put_manifest("repo", digest("m"), image_record(digest("c")), ["v1"])
    assert not await meta.repo_exists("repo")


@pytest.mark.parametrize("lost", ["applied", "not applied", "every attempt"])
async def test_unknown_outcome_is_verified_before_success(kv: EtcdKV, keys: Keys, lost: str) -> None:
    """Invariant 7 of docs/invariants.md: a commit whose reply was lost counts as done only if it
    applied; one that did not is sent again (fenced by the tag's sequence), up
    to the bound; if every reply is lost the outcome stays unknown."""
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r")
    await setup.add_blob("repo", digest("c"), 1)
    times = DEFAULT_MAX_RESENDS + 1 if lost == "every attempt" else 1
    flaky = UnknownOutcomeKV(kv, apply=lost == "applied", times=times)
    meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")
    manifest = digest("m")
    if lost != "every attempt":
        await meta.put_manifest("repo", manifest, image_record(digest("c")), ["v1"])
        tag = await setup.get_tag("repo", "v1")
        assert tag is not None and tag.digest == manifest
        assert [h.new for h in await setup.tag_history("repo", "v1")] == [manifest]
        assert flaky.writes == (1 if lost == "applied" else 2)
    else:
        with pytest.raises(KVUnknownOutcome):
            await meta.put_manifest("repo", manifest, image_record(digest("c")), ["v1"])
        assert await setup.get_manifest("repo", manifest) is None
        assert await setup.get_tag("repo", "v1") is None


@pytest.mark.parametrize("what", ["tag push", "tag delete", "manifest delete", "mount"])
async def test_a_late_first_attempt_never_applies_after_its_re_send(
    kv: EtcdKV, keys: Keys, what: str
) -> None:
    """The lost transaction is still on its way when it is verified (a request
    stuck at a frozen member); the re-send commits, then the first attempt
    arrives: its compares fail for good, so the request took effect once."""
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "other")
    await setup.add_blob("repo", digest("c"), 1)
    await setup.add_blob("src", digest("c"), 1)
    await setup.put_manifest("repo", digest("old"), image_record(digest("c")), ["t"])
    flaky = UnknownOutcomeKV(kv, apply=False, late=True, deletes=what != "tag push")
    meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")
    before = await all_keys(kv, keys)
    if what == "tag push":
        await meta.put_manifest("repo", digest("new"), image_record(digest("c")), ["t"])
    elif what == "tag delete":
        assert await meta.delete_tag("repo", "t")
    elif what == "manifest delete":
        assert await meta.delete_manifest("repo", digest("old"))
    else:
        assert await meta.mount_blob("dst", digest("c"), "src") == 1
    after = await all_keys(kv, keys)
    assert after != before and flaky.writes == 2
    assert [r.succeeded for r in await flaky.deliver()] == [False]
    assert await all_keys(kv, keys) == after
    history = await setup.tag_history("repo", "t")
    expected = {
        "tag push": ["push", "push"],
        "tag delete": ["push", "delete"],
        "manifest delete": ["push", "delete"],
    }
    assert [h.action for h in history] == expected.get(what, ["push"])


# ---------------------------------------------------------------- tag history


async def test_tag_history_moves_forward_across_delete_and_recreate(meta: MetadataStore) -> None:
    await meta.add_blob("repo", digest("c"), 1)
    a, b = digest("a"), digest("b")
    for d in (a, b):
        await meta.put_manifest("repo", d, image_record(digest("c")))

    await meta.put_manifest("repo", a, image_record(digest("c")), ["t"])
    await meta.put_manifest("repo", a, image_record(digest("c")), ["t"])  # no move, no entry
    await meta.put_manifest("repo", b, image_record(digest("c")), ["t"])
    assert await meta.delete_tag("repo", "t")
    assert not await meta.delete_tag("repo", "t")
    await meta.put_manifest("repo", a, image_record(digest("c")), ["t"])  # re-created: a new entry
    await meta.put_manifest("repo", b, image_record(digest("c")), ["t"])
    assert await meta.delete_manifest("repo", b)  # deleting the manifest deletes the tag, recorded

    history = await meta.tag_history("repo", "t")
    assert [h.seq for h in history] == [1, 2, 3, 4, 5, 6]
    assert [(h.old, h.new, h.action) for h in history] == [
        (None, a, "push"),
        (a, b, "push"),
        (b, None, "delete"),
        (None, a, "push"),
        (a, b, "push"),
        (b, None, "delete"),
    ]
    assert await meta.get_tag("repo", "t") is None
    await meta.put_manifest("repo", a, image_record(digest("c")), ["t"])
    tag = await meta.get_tag("repo", "t")
    assert tag is not None and tag.seq == 7 and tag.digest == a


async def test_concurrent_tag_moves_get_distinct_history_numbers(kv: EtcdKV, keys: Keys) -> None:
    stores = [MetadataStore(kv, keys, SystemClock(), RandomIds(), f"r{i}") for i in range(4)]
    await stores[0].add_blob("repo", digest("c"), 1)
    digests = [digest(f"m{i}") for i in range(12)]
    for d in digests:
        await stores[0].put_manifest("repo", d, image_record(digest("c")))
    await asyncio.gather(
        *(
            stores[i % 4].put_manifest("repo", d, image_record(digest("c")), ["latest"])
            for i, d in enumerate(digests)
        )
    )
    history = await stores[0].tag_history("repo", "latest")
    assert [h.seq for h in history] == list(range(1, len(history) + 1))
    # Each entry's old value is the previous entry's new one: one linear history.
    for prev, entry in itertools.pairwise(history):
        assert entry.old == prev.new
    tag = await stores[0].get_tag("repo", "latest")
    assert tag is not None and tag.digest == history[-1].new and tag.seq == history[-1].seq


# ------------------------------------------------------------------ the race


async def assert_no_dangling_references(kv: EtcdKV, keys: Keys, repo: str) -> int:
    """Invariant 2 of docs/invariants.md read straight from etcd: every blob and child a manifest
    references is there.  Returns how many manifests were checked."""
    m_start, m_end = keys.manifests(repo)
    result = await kv.range(m_start, m_end)
    manifests = {keys.last_part(item.key): decode(ManifestRecord, item.value) for item in result.kvs}
    l_start, l_end = keys.links(repo)
    links = {
        keys.last_part(item.key) for item in (await kv.range(l_start, l_end, revision=result.revision)).kvs
    }
    for d, record in manifests.items():
        missing = [b for b in record.blobs if b not in links] + [
            c for c in record.manifests if c not in manifests
        ]
        assert not missing, f"manifest {d} references missing {missing}"
    return len(manifests)


async def later(delay: float, call: Awaitable[Any]) -> Any:
    """``call`` after ``delay`` seconds: jitter, so the racers interleave differently."""
    await asyncio.sleep(delay)
    return await call


async def test_pushes_racing_blob_unlinks_never_leave_dangling_references(kv: EtcdKV, keys: Keys) -> None:
    replicas = [MetadataStore(kv, keys, SystemClock(), RandomIds(), f"r{i}") for i in range(3)]
    rng = random.Random(7)
    shared, config = digest("shared layer"), digest("config")
    pushed = unlinked = refused_push = refused_unlink = 0
    for round_ in range(9):
        await replicas[0].add_blob("repo", shared, 100)
        await replicas[0].add_blob("repo", config, 10)
        calls: list[Any] = []
        kinds_: list[str] = []
        for i in range(16):
            store = rng.choice(replicas)
            if rng.random() < 0.25:
                calls.append(store.remove_link("repo", shared))
                kinds_.append("unlink")
            else:
                record = image_record(config, shared, annotations={"n": f"{round_}-{i}"})
                tags = [f"t{rng.randrange(4)}"] if rng.random() < 0.5 else []
                calls.append(store.put_manifest("repo", digest(f"m{round_}-{i}"), record, tags))
                kinds_.append("push")
        # Start one unlink right away and spread the others' starts: over 2 ms
        # (everything overlaps), 30 ms (some calls start after others finished),
        # or from 5 ms on (the unlink usually wins, and later pushes must fail).
        low, high = ((0.0, 0.002), (0.0, 0.03), (0.005, 0.04))[round_ % 3]
        delays = [low + rng.random() * (high - low) for _ in calls]
        calls.append(replicas[round_ % 3].remove_link("repo", shared))
        kinds_.append("unlink")
        delays.append(0.0)
        results = await asyncio.gather(
            *(later(d, c) for d, c in zip(delays, calls, strict=True)), return_exceptions=True
        )
        for kind, result in zip(kinds_, results, strict=True):
            if kind == "push":
                if isinstance(result, MissingReferences):
                    assert result.blobs == [shared]
                    refused_push += 1
                else:
                    assert isinstance(result, list), result
                    pushed += 1
            elif isinstance(result, ReferencedBy):
                refused_unlink += 1
            else:
                assert isinstance(result, bool), result
                unlinked += result
        await assert_no_dangling_references(kv, keys, "repo")
        link = await replicas[0].get_link("repo", shared)
        m_start, m_end = keys.manifests("repo")
        users = [
            item.key
            for item in (await kv.range(m_start, m_end)).kvs
            if shared in decode(ManifestRecord, item.value).blobs
        ]
        assert link is not None or not users
        # Clear the manifests for the next round so unlinks can win again.
        await kv.txn([], [Delete(m_start, m_end)])
    # Both sides of the race won sometimes.
    assert pushed and refused_unlink and unlinked and refused_push


async def test_index_pushes_racing_child_deletes(kv: EtcdKV, keys: Keys) -> None:
    replicas = [MetadataStore(kv, keys, SystemClock(), RandomIds(), f"r{i}") for i in range(3)]
    await replicas[0].add_blob("repo", digest("c"), 1)
    rng = random.Random(11)
    for round_ in range(6):
        child = digest(f"child{round_}")
        await replicas[0].put_manifest("repo", child, image_record(digest("c")))
        calls: list[Any] = []
        for i in range(10):
            store = rng.choice(replicas)
            if i % 4 == 0:
                calls.append(store.delete_manifest("repo", child))
            else:
                calls.append(store.put_manifest("repo", digest(f"idx{round_}-{i}"), index_record(child), []))
        delays = [rng.random() * 0.004 for _ in calls]
        results = await asyncio.gather(
            *(later(d, c) for d, c in zip(delays, calls, strict=True)), return_exceptions=True
        )
        for result in results:
            assert isinstance(result, (bool, list, MissingReferences, ReferencedBy)), result
        await assert_no_dangling_references(kv, keys, "repo")


async def test_delete_manifest_removes_its_tags_and_referrer(
    meta: MetadataStore, kv: EtcdKV, keys: Keys
) -> None:
    await meta.add_blob("repo", digest("c"), 1)
    m = digest("m")
    await meta.put_manifest("repo", m, image_record(digest("c"), subject=digest("s")), ["a", "b"])
    other = digest("other")
    await meta.put_manifest("repo", other, image_record(digest("c")), ["keep"])
    assert await meta.delete_manifest("repo", m)
    assert not await meta.delete_manifest("repo", m)
    assert await meta.get_tag("repo", "a") is None and await meta.get_tag("repo", "b") is None
    kept = await meta.get_tag("repo", "keep")
    assert isinstance(kept, TagRecord) and kept.digest == other
    assert await meta.list_referrers("repo", digest("s")) == []
    tags, more = await meta.list_tags("repo", None, 0)
    assert (tags, more) == (["keep"], False)


async def test_remove_link_refused_while_referenced(meta: MetadataStore) -> None:
    await meta.add_blob("repo", digest("c"), 1)
    m = digest("m")
    await meta.put_manifest("repo", m, image_record(digest("c")))
    with pytest.raises(ReferencedBy) as info:
        await meta.remove_link("repo", digest("c"))
    assert info.value.digests == [m]
    link = await meta.get_link("repo", digest("c"))
    assert isinstance(link, LinkRecord)
    assert await meta.delete_manifest("repo", m)
    assert await meta.remove_link("repo", digest("c"))
    assert not await meta.remove_link("repo", digest("c"))


async def test_lost_delete_reply_is_not_confirmed_by_someone_elses_delete(kv: EtcdKV, keys: Keys) -> None:
    """Invariant 7 of docs/invariants.md: our delete did not apply, another replica's did; "the tag is
    gone" must not count as our success (found by the simulator)."""
    other = MetadataStore(kv, keys, SystemClock(), RandomIds(), "other")
    await other.add_blob("repo", digest("c"), 1)
    await other.put_manifest("repo", digest("m"), image_record(digest("c")), ["t"])

    async def race() -> None:  # another client, while our reply is lost
        assert await other.delete_tag("repo", "t")

    flaky = UnknownOutcomeKV(kv, apply=False, meanwhile=race, deletes=True)
    meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")
    with pytest.raises(KVUnknownOutcome):
        await meta.delete_tag("repo", "t")
    assert [h.replica for h in await other.tag_history("repo", "t")] == ["other", "other"]
    assert flaky.writes == 2  # re-sent once; its compare failed: unknown, not retried on a fresh read


async def test_lost_manifest_delete_reply_is_not_confirmed_by_someone_elses_delete(
    kv: EtcdKV, keys: Keys
) -> None:
    other = MetadataStore(kv, keys, SystemClock(), RandomIds(), "other")
    await other.add_blob("repo", digest("c"), 1)
    await other.put_manifest("repo", digest("m"), image_record(digest("c")))

    async def race() -> None:  # another client, while our reply is lost
        assert await other.delete_manifest("repo", digest("m"))

    meta = MetadataStore(
        UnknownOutcomeKV(kv, apply=False, meanwhile=race), keys, SystemClock(), RandomIds(), "r"
    )
    with pytest.raises(KVUnknownOutcome):
        await meta.delete_manifest("repo", digest("m"))


@pytest.mark.parametrize("what", ["upload", "mount", "manifest"])
async def test_a_lost_reply_is_not_confirmed_by_what_an_earlier_write_left(
    kv: EtcdKV, keys: Keys, what: str
) -> None:
    """Invariant 7 of docs/invariants.md (and 6): the link (or manifest record) was already there from an
    earlier push, and our re-write of it was lost.  Its presence must not count
    as our success: the collector judges it by its old ``touched``/``created``
    (found by the simulator, seed 9576)."""
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "setup")
    await setup.add_blob("repo", digest("c"), 1)
    await setup.add_blob("src", digest("c"), 1)
    await setup.put_manifest("repo", digest("m"), image_record(digest("c")))
    await setup.mount_blob("dst", digest("c"), "src")
    for applied in (False, True):
        # Every re-send lost too: what is verified is only ever the value already there.
        flaky = UnknownOutcomeKV(kv, apply=applied, times=DEFAULT_MAX_RESENDS + 1)
        meta = MetadataStore(flaky, keys, SystemClock(), RandomIds(), "r")

        async def write(meta: MetadataStore = meta) -> None:
            if what == "upload":
                await meta.add_blob("repo", digest("c"), 1)
            elif what == "mount":
                assert await meta.mount_blob("dst", digest("c"), "src") == 1
            else:  # the same manifest pushed again: a record of its own creation time
                record = dataclasses.replace(image_record(digest("c")), created=time.time())
                await meta.put_manifest("repo", digest("m"), record)

        if applied:
            await write()  # our own value is found: verified
        else:
            with pytest.raises(KVUnknownOutcome):
                await write()
