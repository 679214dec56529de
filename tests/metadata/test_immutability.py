"""Immutable tags against the real etcd: which writes a rule refuses, and the
race between setting a rule and moving tags — every tag write compares the
rule's mod_revision, so no move checked against the old rule commits after
the new one is in place."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import Compare, TxnOp, TxnResult
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import ImmutabilityRecord, decode
from hareg.metadata.store import ImmutableTag, MetadataStore, immutable_pattern

from .support import REPLICA, manifests, record


def test_patterns_match_like_fnmatch_case_sensitively() -> None:
    assert immutable_pattern(["v*"], "v1.2") == "v*"
    assert immutable_pattern(["v*"], "V1") is None
    assert immutable_pattern(["latest", "*"], "anything") == "*"
    assert immutable_pattern(["release-[0-9]*"], "release-7") == "release-[0-9]*"
    assert immutable_pattern(["release-[0-9]*"], "release-x") is None
    assert immutable_pattern(["v?"], "v10") is None
    assert immutable_pattern([], "v1") is None


async def test_rule_record_round_trip(meta: MetadataStore, kv: EtcdKV, keys: Keys) -> None:
    assert await meta.get_immutability("repo") is None
    rule = await meta.set_immutability("repo", ["v*", "stable"])
    assert rule is not None and rule.patterns == ("v*", "stable") and rule.replica == REPLICA
    assert await meta.get_immutability("repo") == rule
    raw = await kv.get(keys.immutability("repo"))
    assert raw is not None and raw.key == keys.root + b"/i/repo"
    assert decode(ImmutabilityRecord, raw.value) == rule
    assert await meta.set_immutability("repo", []) is None
    assert await kv.get(keys.immutability("repo")) is None


async def test_immutable_tags_can_be_created_but_not_moved_or_deleted(meta: MetadataStore) -> None:
    a, b = await manifests(meta, "repo", "a", "b")
    await meta.put_manifest("repo", a, record(), ["v1", "latest"])
    await meta.set_immutability("repo", ["v*"])

    with pytest.raises(ImmutableTag) as err:
        await meta.put_manifest("repo", b, record(), ["v1"])
    assert (err.value.repo, err.value.tag, err.value.pattern) == ("repo", "v1", "v*")
    assert str(err.value) == "tag v1 in repo is immutable (pattern 'v*')"
    # The whole push is refused, tags that could move included.
    with pytest.raises(ImmutableTag):
        await meta.put_manifest("repo", b, record(), ["latest", "v1"])
    latest = await meta.get_tag("repo", "latest")
    assert latest is not None and latest.digest == a
    with pytest.raises(ImmutableTag):
        await meta.delete_tag("repo", "v1")
    with pytest.raises(ImmutableTag):
        await meta.delete_manifest("repo", a)  # would delete v1 with it
    with pytest.raises(ImmutableTag):
        await meta.move_tag("repo", "v1", b)
    with pytest.raises(ImmutableTag):
        await meta.check_tag_moves("repo", b, ["latest", "v1"])

    # Allowed: the same digest again, a new matching tag, tags that do not match.
    assert await meta.put_manifest("repo", a, record(), ["v1"]) == []
    assert [w.tag for w in await meta.put_manifest("repo", b, record(), ["v2"])] == ["v2"]
    assert await meta.move_tag("repo", "latest", b) is not None
    assert await meta.delete_tag("repo", "latest")
    await meta.check_tag_moves("repo", a, ["v1", "latest"])

    tag = await meta.get_tag("repo", "v1")
    assert tag is not None and tag.digest == a and tag.seq == 1
    assert len(await meta.tag_history("repo", "v1")) == 1

    # Without the rule, v1 moves again.
    await meta.set_immutability("repo", [])
    assert await meta.move_tag("repo", "v1", b) is not None
    assert await meta.delete_tag("repo", "v1")


async def test_a_manifest_only_untagged_or_with_mutable_tags_can_be_deleted(meta: MetadataStore) -> None:
    a, b = await manifests(meta, "repo", "a", "b")
    await meta.put_manifest("repo", a, record(), ["latest"])
    await meta.set_immutability("repo", ["v*"])
    assert await meta.delete_manifest("repo", a)  # only "latest" pointed at it
    assert await meta.delete_manifest("repo", b)  # untagged


async def test_whole_repository_rule_and_other_repositories(meta: MetadataStore) -> None:
    (a,) = await manifests(meta, "repo", "a")
    (b,) = await manifests(meta, "repo/sub", "b")
    await meta.put_manifest("repo", a, record(), ["x"])
    await meta.put_manifest("repo/sub", b, record(), ["x"])
    await meta.set_immutability("repo", ["*"])
    with pytest.raises(ImmutableTag):
        await meta.delete_tag("repo", "x")
    assert await meta.delete_tag("repo/sub", "x")  # "repo/sub" has its own (no) rule


async def test_a_deleted_tag_may_be_recreated_once_under_a_rule(meta: MetadataStore) -> None:
    a, b = await manifests(meta, "repo", "a", "b")
    await meta.put_manifest("repo", a, record(), ["v1"])
    assert await meta.delete_tag("repo", "v1")  # before the rule
    await meta.set_immutability("repo", ["v*"])
    assert await meta.move_tag("repo", "v1", b) is not None  # re-created by a rollback
    with pytest.raises(ImmutableTag):
        await meta.move_tag("repo", "v1", a)


# -------------------------------------------- a rule landing mid-transaction


class RuleLandsFirstKV:
    """Delegates to a real KV; just before the first transaction guarded by
    the rule key is sent, ``land()`` runs (it sets the rule): the commit then
    happens after the rule is in place, as if the two raced."""

    def __init__(self, inner: EtcdKV, rule_key: bytes, land: Callable[[], Awaitable[Any]]) -> None:
        self.inner = inner
        self.rule_key = rule_key
        self.land: Callable[[], Awaitable[Any]] | None = land

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        if self.land is not None and any(c.key == self.rule_key for c in compares):
            land, self.land = self.land, None
            await land()
        return await self.inner.txn(compares, success, failure)


OPERATIONS: dict[str, Callable[[MetadataStore, list[str]], Awaitable[Any]]] = {
    "push": lambda m, d: m.put_manifest("repo", d[1], record(), ["v1"]),
    "rollback": lambda m, d: m.move_tag("repo", "v1", d[1]),
    "delete tag": lambda m, d: m.delete_tag("repo", "v1"),
    "delete manifest": lambda m, d: m.delete_manifest("repo", d[0]),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_a_rule_set_between_check_and_commit_refuses_the_write(
    kv: EtcdKV, keys: Keys, operation: str
) -> None:
    setup = MetadataStore(kv, keys, SystemClock(), RandomIds(), "admin")
    digests = await manifests(setup, "repo", "a", "b")
    await setup.put_manifest("repo", digests[0], record(), ["v1"])
    racing = RuleLandsFirstKV(kv, keys.immutability("repo"), lambda: setup.set_immutability("repo", ["v*"]))
    writer = MetadataStore(racing, keys, SystemClock(), RandomIds(), "writer")

    with pytest.raises(ImmutableTag):
        await OPERATIONS[operation](writer, digests)
    assert racing.land is None, "the write was not guarded by the rule key"
    tag = await setup.get_tag("repo", "v1")
    assert tag is not None and tag.digest == digests[0] and tag.seq == 1
    assert await setup.get_manifest("repo", digests[0]) is not None


# ----------------------------------------------------------- a random race


@pytest.mark.parametrize("seed", range(4))
async def test_no_move_commits_after_the_rule(kv: EtcdKV, keys: Keys, seed: int) -> None:
    """Replicas push, roll back and delete v1 and latest while an admin sets
    ``v*`` at a random moment.  After the rule's revision, v1 has at most one
    entry, a creation (it may have been deleted before the rule); latest
    keeps moving."""
    rng = random.Random(seed)
    stores = [MetadataStore(kv, keys, SystemClock(), RandomIds(), f"r{i}") for i in range(4)]
    digests = await manifests(stores[0], "repo", *(f"m{i}" for i in range(6)))
    await stores[0].put_manifest("repo", digests[0], record(), ["v1", "latest"])
    moves = 0
    refused = 0
    rule_set = asyncio.Event()

    async def worker(store: MetadataStore) -> None:
        nonlocal moves, refused
        ops_after_rule = 0
        while ops_after_rule < 10:
            tag = rng.choice(["v1", "v1", "latest"])
            target = rng.choice(digests)
            roll = rng.random()
            try:
                if roll < 0.4:
                    await store.put_manifest("repo", target, record(), [tag])
                elif roll < 0.85:
                    await store.move_tag("repo", tag, target)
                else:
                    await store.delete_tag("repo", tag)
                moves += 1
            except ImmutableTag:
                refused += 1
            if rule_set.is_set():
                ops_after_rule += 1

    async def admin() -> None:
        threshold = rng.randrange(5, 40)
        while moves < threshold:
            await asyncio.sleep(0.001)
        await stores[0].set_immutability("repo", ["v*"])
        rule_set.set()

    async with asyncio.timeout(60):
        await asyncio.gather(admin(), *(worker(s) for s in stores))

    rule = await kv.get(keys.immutability("repo"))
    assert rule is not None
    after = [
        k
        for k in (await kv.range(*keys.histories("repo", "v1"))).kvs
        if k.create_revision > rule.mod_revision
    ]
    assert len(after) <= 1, [k.key for k in after]
    history = await stores[0].tag_history("repo", "v1")
    if after:
        assert history[-1].old is None and history[-1].new is not None  # a creation
        assert history[-2].new is None  # v1 was deleted before the rule
    assert refused > 0
    latest_after = [
        k
        for k in (await kv.range(*keys.histories("repo", "latest"))).kvs
        if k.create_revision > rule.mod_revision
    ]
    assert latest_after, "latest (not immutable) should keep moving after the rule"
