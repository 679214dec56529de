"""Tag history and rollback against the real etcd: history only moves forward
(invariant 5 of docs/invariants.md), a rollback is a new forward entry, concurrent rollbacks and
pushes on one tag leave one gap-free linear history, and a rollback whose
reply is lost counts as done only if it applied (invariant 7 of docs/invariants.md)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import KVUnknownOutcome
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import HistoryEntry
from hareg.metadata.store import MetadataStore, MissingReferences
from hareg.metadata.writes import DEFAULT_MAX_RESENDS

from .faulty_kv import UnknownOutcomeKV
from .support import REPLICA, digest, manifests, record


async def history_keys(kv: EtcdKV, keys: Keys, repo: str, tag: str) -> list[tuple[bytes, bytes, int, int]]:
    """(key, value, create_revision, mod_revision) of every history entry."""
    result = await kv.range(*keys.histories(repo, tag))
    return [(k.key, k.value, k.create_revision, k.mod_revision) for k in result.kvs]


def summary(history: Sequence[HistoryEntry]) -> list[tuple[int, str | None, str | None, str]]:
    return [(h.seq, h.old, h.new, h.action) for h in history]


# ------------------------------------------------------------ forward only


async def test_history_is_forward_only_across_push_move_delete_recreate_rollback(
    meta: MetadataStore, kv: EtcdKV, keys: Keys
) -> None:
    a, b, c = await manifests(meta, "repo", "a", "b", "c")
    seen: list[tuple[bytes, bytes, int, int]] = []

    async def step_appends_one_entry() -> None:
        """The entries written so far are untouched (same bytes, same
        mod_revision) and exactly one new entry follows them."""
        nonlocal seen
        now = await history_keys(kv, keys, "repo", "t")
        assert now[: len(seen)] == seen
        assert len(now) == len(seen) + 1
        seen = now

    await meta.put_manifest("repo", a, record(), ["t"])  # push (creates)
    await step_appends_one_entry()
    await meta.put_manifest("repo", b, record(), ["t"])  # push (moves)
    await step_appends_one_entry()
    assert await meta.move_tag("repo", "t", a) is not None  # rollback to a
    await step_appends_one_entry()
    assert await meta.delete_tag("repo", "t")  # delete
    await step_appends_one_entry()
    await meta.put_manifest("repo", c, record(), ["t"])  # recreate
    await step_appends_one_entry()
    assert await meta.move_tag("repo", "t", b) is not None  # rollback to b
    await step_appends_one_entry()
    assert await meta.delete_manifest("repo", b)  # deleting the manifest deletes the tag
    await step_appends_one_entry()
    assert await meta.move_tag("repo", "t", a) is not None  # a rollback re-creates a deleted tag
    await step_appends_one_entry()

    history = await meta.tag_history("repo", "t")
    assert summary(history) == [
        (1, None, a, "push"),
        (2, a, b, "push"),
        (3, b, a, "rollback"),
        (4, a, None, "delete"),
        (5, None, c, "push"),
        (6, c, b, "rollback"),
        (7, b, None, "delete"),
        (8, None, a, "rollback"),
    ]
    assert all(h.replica == REPLICA for h in history)
    assert [h.time for h in history] == sorted(h.time for h in history)
    tag = await meta.get_tag("repo", "t")
    assert tag is not None and tag.digest == a and tag.seq == 8


async def test_rollback_to_the_current_digest_writes_nothing(meta: MetadataStore) -> None:
    (a,) = await manifests(meta, "repo", "a")
    await meta.put_manifest("repo", a, record(), ["t"])
    assert await meta.move_tag("repo", "t", a) is None
    assert summary(await meta.tag_history("repo", "t")) == [(1, None, a, "push")]


async def test_rollback_needs_the_manifest_in_the_repository(meta: MetadataStore) -> None:
    a, b = await manifests(meta, "repo", "a", "b")
    (other,) = await manifests(meta, "other", "elsewhere")
    await meta.put_manifest("repo", a, record(), ["t"])
    with pytest.raises(MissingReferences) as err:
        await meta.move_tag("repo", "t", digest("never pushed"))
    assert err.value.manifests == [digest("never pushed")]
    with pytest.raises(MissingReferences):
        await meta.move_tag("repo", "t", other)  # a manifest of another repository
    assert await meta.delete_manifest("repo", b)
    with pytest.raises(MissingReferences):
        await meta.move_tag("repo", "t", b)  # deleted
    assert summary(await meta.tag_history("repo", "t")) == [(1, None, a, "push")]
    tag = await meta.get_tag("repo", "t")
    assert tag is not None and tag.digest == a


async def test_rollback_racing_the_deletion_of_its_target(kv: EtcdKV, keys: Keys) -> None:
    """Either the rollback commits and the manifest delete then removes the tag
    with it, or the delete wins and the rollback is refused: never a tag
    pointing at a deleted manifest (invariant 2 of docs/invariants.md)."""
    stores = [MetadataStore(kv, keys, SystemClock(), RandomIds(), f"r{i}") for i in range(2)]
    for round_ in range(20):
        repo = f"repo{round_}"
        a, b = await manifests(stores[0], repo, "a", "b")
        await stores[0].put_manifest(repo, a, record(), ["t"])
        results = await asyncio.gather(
            stores[0].move_tag(repo, "t", b), stores[1].delete_manifest(repo, b), return_exceptions=True
        )
        assert results[1] is True
        tag = await stores[0].get_tag(repo, "t")
        assert await stores[0].get_manifest(repo, b) is None
        if isinstance(results[0], MissingReferences):
            assert tag is not None and tag.digest == a
        else:
            assert isinstance(results[0], HistoryEntry), results[0]
            assert tag is None  # the delete saw the moved tag and deleted it too
        history = await stores[0].tag_history(repo, "t")
        assert [h.seq for h in history] == list(range(1, len(history) + 1))


# ---------------------------------------------------------------- concurrency


async def test_concurrent_rollbacks_and_pushes_leave_one_gap_free_history(kv: EtcdKV, keys: Keys) -> None:
    """Four replicas push, roll back and delete one tag concurrently: every
    write that reported a move has exactly one entry, numbered 1..n without
    gaps, committed in that order, each starting where the previous ended."""
    stores = [MetadataStore(kv, keys, SystemClock(), RandomIds(), f"r{i}") for i in range(4)]
    digests = await manifests(stores[0], "repo", *(f"m{i}" for i in range(8)))
    rng = random.Random(1234)
    writes: list[str] = []

    async def worker(store: MetadataStore, ops: int) -> None:
        for _ in range(ops):
            target = rng.choice(digests)
            roll = rng.random()
            if roll < 0.45:
                if await store.put_manifest("repo", target, record(), ["t"]):
                    writes.append("push")
            elif roll < 0.9:
                if await store.move_tag("repo", "t", target) is not None:
                    writes.append("rollback")
            elif await store.delete_tag("repo", "t"):
                writes.append("delete")

    await asyncio.gather(*(worker(s, 25) for s in stores))

    history = await stores[0].tag_history("repo", "t")
    assert len(history) == len(writes)
    assert sorted(h.action for h in history) == sorted(writes)
    assert [h.seq for h in history] == list(range(1, len(history) + 1))
    for prev, entry in itertools.pairwise(history):
        assert entry.old == prev.new, (prev, entry)
        assert entry.old != entry.new
    # Sequence order is commit order.
    revisions = [create for _, _, create, _ in await history_keys(kv, keys, "repo", "t")]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    tag = await stores[0].get_tag("repo", "t")
    if history[-1].new is None:
        assert tag is None
    else:
        assert tag is not None and tag.digest == history[-1].new and tag.seq == history[-1].seq
    assert {h.replica for h in history} == {f"r{i}" for i in range(4)}


# ------------------------------------------------------------ unknown outcome


@pytest.mark.parametrize("lost", ["applied", "not applied", "every attempt"])
async def test_rollback_with_unknown_outcome_is_verified(kv: EtcdKV, keys: Keys, lost: str) -> None:
    """A lost reply counts as done only if the rollback applied; one that did
    not is re-sent with its own write id (one history entry, whichever
    applied); if every attempt's reply is lost the outcome stays unknown."""
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r")
    a, b = await manifests(setup, "repo", "a", "b")
    await setup.put_manifest("repo", b, record(), ["t"])
    times = DEFAULT_MAX_RESENDS + 1 if lost == "every attempt" else 1
    flaky = MetadataStore(
        UnknownOutcomeKV(kv, apply=lost == "applied", times=times), keys, SystemClock(), RandomIds(), "r"
    )
    if lost != "every attempt":
        entry = await flaky.move_tag("repo", "t", a)
        assert entry is not None and (entry.seq, entry.old, entry.new) == (2, b, a)
        tag = await setup.get_tag("repo", "t")
        assert tag is not None and tag.digest == a
        assert [h.new for h in await setup.tag_history("repo", "t")] == [b, a]
    else:
        with pytest.raises(KVUnknownOutcome):
            await flaky.move_tag("repo", "t", a)
        tag = await setup.get_tag("repo", "t")
        assert tag is not None and tag.digest == b
        assert len(await setup.tag_history("repo", "t")) == 1
