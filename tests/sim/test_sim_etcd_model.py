"""The etcd model against the KV contract (hareg/kv/base.py), mirroring the cases
tests/kv/test_etcd.py runs against a real etcd, plus the faults it injects."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from hareg.kv.base import (
    Compare,
    Delete,
    EventType,
    Get,
    KVCompacted,
    KVError,
    KVUnavailable,
    KVUnknownOutcome,
    Op,
    Put,
    RangeResult,
    Target,
    WatchBatch,
    prefix_end,
)
from sim.etcd_model import EtcdCluster, MVCCStore, SimKV
from sim.loop import SimLoop, run
from sim.network import Network
from sim.trace import Trace

T = TypeVar("T")
P = b"/t/"


def put(store: MVCCStore, key: bytes, value: bytes, lease: int = 0) -> int:
    r = store.txn([], [Put(key, value, lease)], [])
    assert r.succeeded
    return r.revision


# -- the data model, directly ----------------------------------------------------------


def test_get_and_versions() -> None:
    s = MVCCStore()
    k = P + b"k"
    assert s.get(k) is None
    rev = put(s, k, b"v1")
    got = s.get(k)
    assert got is not None
    assert (got.value, got.create_revision, got.mod_revision, got.version, got.lease) == (
        b"v1",
        rev,
        rev,
        1,
        0,
    )
    rev2 = put(s, k, b"v2")
    got = s.get(k)
    assert got is not None and (got.create_revision, got.mod_revision, got.version) == (rev, rev2, 2)


def test_range_limit_more_count_keys_only_and_revision() -> None:
    s = MVCCStore()
    keys = [P + bytes([c]) for c in b"edcba"]
    for k in keys:
        put(s, k, b"value-" + k)
    end = prefix_end(P)
    full = s.range(P, end)
    assert [x.key for x in full.kvs] == sorted(keys) and (full.more, full.count) == (False, 5)
    page = s.range(P, end, limit=2)
    assert [x.key for x in page.kvs] == sorted(keys)[:2] and (page.more, page.count) == (True, 5)
    ko = s.range(P, end, keys_only=True)
    assert all(x.value == b"" and x.mod_revision > 0 for x in ko.kvs)
    assert s.range(P + b"zz", end).kvs == []
    r1 = put(s, P + b"a", b"new")
    old = s.range(P + b"a", None, revision=r1 - 1)
    assert [x.value for x in old.kvs] == [b"value-" + P + b"a"]
    assert old.revision == s.revision  # the header is the store's revision
    assert (
        next(x.key for x in s.range(b"", end, keys_only=True).kvs) == P + b"a"
    )  # empty start: the first key


def test_compacted_reads() -> None:
    s = MVCCStore()
    r1 = put(s, P + b"k", b"1")
    r2 = put(s, P + b"k", b"2")
    assert s.compact(r2)
    with pytest.raises(KVCompacted) as exc:
        s.range(P, prefix_end(P), revision=r1)
    assert exc.value.compact_revision == r2
    assert [x.value for x in s.range(P, prefix_end(P), revision=r2).kvs] == [b"2"]


def test_txn_branches() -> None:
    s = MVCCStore()
    k = P + b"k"
    r = s.txn([Compare.missing(k)], [Put(k, b"created")], [Get(k)])
    assert r.succeeded and r.responses == [None]
    created = r.revision
    r = s.txn([Compare.missing(k)], [Put(k, b"again")], [Get(k)])
    assert not r.succeeded and r.revision == created
    [got] = r.responses
    assert isinstance(got, RangeResult) and [x.value for x in got.kvs] == [b"created"]
    r = s.txn([Compare.exists(k), Compare.mod_revision_is(k, created)], [Put(k, b"updated")], [])
    assert r.succeeded and r.revision == created + 1
    assert not s.txn([Compare.mod_revision_is(k, created)], [Put(k, b"stale")], []).succeeded


@pytest.mark.parametrize(
    ("target", "op", "value", "expected"),
    [
        (Target.VERSION, Op.EQUAL, 2, True),
        (Target.VERSION, Op.NOT_EQUAL, 2, False),
        (Target.VERSION, Op.GREATER, 1, True),
        (Target.VERSION, Op.LESS, 2, False),
        (Target.CREATE, Op.EQUAL, "create", True),
        (Target.CREATE, Op.LESS, "create", False),
        (Target.CREATE, Op.GREATER, 0, True),
        (Target.MOD, Op.EQUAL, "mod", True),
        (Target.MOD, Op.NOT_EQUAL, "mod", False),
        (Target.MOD, Op.GREATER, "create", True),
        (Target.MOD, Op.LESS, "create", False),
        (Target.VALUE, Op.EQUAL, b"v2", True),
        (Target.VALUE, Op.NOT_EQUAL, b"v2", False),
        (Target.VALUE, Op.GREATER, b"v1", True),
        (Target.VALUE, Op.LESS, b"v1", False),
    ],
)
def test_txn_compare_kinds(target: Target, op: Op, value: int | bytes | str, expected: bool) -> None:
    s = MVCCStore()
    k = P + b"k"
    create = put(s, k, b"v1")
    mod = put(s, k, b"v2")
    resolved: int | bytes = {"create": create, "mod": mod}[value] if isinstance(value, str) else value
    assert s.txn([Compare(k, target, op, resolved)], [Get(k)], []).succeeded is expected


def test_txn_compares_on_a_missing_key() -> None:
    s = MVCCStore()
    k = P + b"nope"
    assert s.txn([Compare(k, Target.VERSION, Op.EQUAL, 0)], [], []).succeeded
    assert s.txn([Compare(k, Target.CREATE, Op.EQUAL, 0)], [], []).succeeded
    assert s.txn([Compare(k, Target.MOD, Op.LESS, 1)], [], []).succeeded
    # A VALUE compare on a missing key is always false, whatever the operator.
    assert not s.txn([Compare(k, Target.VALUE, Op.EQUAL, b"")], [], []).succeeded
    assert not s.txn([Compare(k, Target.VALUE, Op.NOT_EQUAL, b"x")], [], []).succeeded


def test_txn_range_compares() -> None:
    s = MVCCStore()
    lo, hi = P + b"r/", prefix_end(P + b"r/")
    put(s, P + b"q", b"outside")
    put(s, hi, b"outside")  # the exclusive end itself
    assert s.txn([Compare.range_empty(lo, hi)], [Put(lo + b"first", b"1")], []).succeeded
    assert not s.txn([Compare.range_empty(lo, hi)], [Put(lo + b"second", b"2")], []).succeeded
    seen = put(s, lo + b"b", b"1")
    assert s.txn([Compare.range_unchanged_since(lo, hi, seen)], [], []).succeeded
    put(s, hi + b"x", b"outside")
    assert s.txn([Compare.range_unchanged_since(lo, hi, seen)], [], []).succeeded
    s.txn([], [Delete(lo + b"first")], [])  # a deletion is not seen (as documented)
    assert s.txn([Compare.range_unchanged_since(lo, hi, seen)], [], []).succeeded
    put(s, lo + b"b", b"2")
    assert not s.txn([Compare.range_unchanged_since(lo, hi, seen)], [], []).succeeded
    # An empty range compares as one zero key: VALUE is false, the rest compare 0.
    empty = (P + b"none/", prefix_end(P + b"none/"))
    assert s.txn([Compare(empty[0], Target.MOD, Op.LESS, 1, range_end=empty[1])], [], []).succeeded
    assert not s.txn([Compare(empty[0], Target.VALUE, Op.EQUAL, b"", range_end=empty[1])], [], []).succeeded
    # Every key of a range must satisfy it.
    assert not s.txn([Compare(lo, Target.VERSION, Op.EQUAL, 1, range_end=hi)], [], []).succeeded


def test_txn_ops_and_responses() -> None:
    s = MVCCStore()
    put(s, P + b"d/1", b"x")
    put(s, P + b"d/2", b"y")
    r = s.txn(
        [],
        [
            Put(P + b"a", b"1"),
            Get(P + b"a"),
            Get(P, prefix_end(P), limit=2),
            Delete(P + b"d/", prefix_end(P + b"d/")),
            Delete(P + b"missing"),
            Get(P, prefix_end(P)),
        ],
        [],
    )
    put_resp, get_a, page, deleted, none_deleted, after = r.responses
    assert put_resp is None
    assert isinstance(get_a, RangeResult) and [x.value for x in get_a.kvs] == [b"1"]
    assert isinstance(page, RangeResult) and [x.key for x in page.kvs] == [P + b"a", P + b"d/1"]
    assert (page.more, page.count) == (True, 3)
    assert (deleted, none_deleted) == (2, 0)
    assert isinstance(after, RangeResult) and [x.key for x in after.kvs] == [P + b"a"]
    assert all(isinstance(x, RangeResult) and 0 < x.revision <= r.revision for x in (get_a, page, after))


def test_txn_rejections_apply_nothing() -> None:
    s = MVCCStore()
    k = P + b"k"
    with pytest.raises(KVError, match="duplicate key"):
        s.txn([], [Put(k, b"1"), Delete(k)], [])
    with pytest.raises(KVError, match="lease not found"):
        s.txn([], [Put(k, b"v", lease=123456789)], [])
    assert s.get(k) is None and s.revision == 1


def test_leases() -> None:
    s = MVCCStore()
    lease = s.grant(30, now=0.0)
    put(s, P + b"leased", b"v", lease)
    assert s.get(P + b"leased").lease == lease  # type: ignore[union-attr]
    assert s.refresh(lease, now=10.0) == 30
    assert s.expire(now=39.0) == []
    assert s.expire(now=40.0) == [lease]
    assert s.get(P + b"leased") is None
    assert s.refresh(lease, now=41.0) == 0
    assert s.revoke(lease) == 0  # already gone: no error


# -- the cluster, over the simulated network ---------------------------------------------


def world(seed: int = 1) -> tuple[SimLoop, Network, EtcdCluster]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimLoop)
    trace = Trace(loop.time)
    net = Network(loop, random.Random(seed), trace)
    cluster = EtcdCluster(loop, net, random.Random(seed + 1), trace, progress_interval=1.0)
    cluster.ticker = loop.create_task(cluster.run())  # type: ignore[attr-defined]
    return loop, net, cluster


def sim(main: Callable[[], Awaitable[T]]) -> T:
    return run(main())[0]


def test_client_reads_writes_and_watches_in_order() -> None:
    async def main() -> list[tuple[EventType, bytes, int]]:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        start = await kv.current_revision() + 1
        events: list[tuple[EventType, bytes, int]] = []

        async def follow() -> None:
            async for batch in kv.watch(P, prefix_end(P), start):
                events.extend((e.type, e.kv.key, e.kv.mod_revision) for e in batch.events)

        task = asyncio.create_task(follow())
        r1 = (await kv.txn([], [Put(P + b"a", b"1")])).revision
        r2 = (await kv.txn([], [Put(P + b"b", b"2")])).revision
        await kv.txn([], [Put(b"/elsewhere", b"x")])
        r3 = (await kv.txn([], [Delete(P + b"a"), Put(P + b"c", b"3")])).revision
        got = await kv.get(P + b"b")
        assert got is not None and got.value == b"2"
        await asyncio.sleep(1)
        task.cancel()
        return [
            *events,
            (EventType.PUT, P + b"a", r1),
            (EventType.PUT, P + b"b", r2),
            (EventType.DELETE, P + b"a", r3),
            (EventType.PUT, P + b"c", r3),
        ]

    out = sim(main)
    half = len(out) // 2
    assert out[:half] == out[half:]


def test_watch_progress_and_compaction() -> None:
    async def main() -> None:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        now = await kv.current_revision()
        it = kv.watch(P, prefix_end(P), now + 1)
        batch = await anext(it)  # an idle watch gets a periodic progress report
        assert batch.events == [] and batch.revision >= now
        await kv.txn([], [Put(b"/other", b"moves the revision")])
        kv.request_watch_progress()
        batch = await anext(it)
        assert batch.events == [] and batch.revision == cluster.store.revision
        r1 = (await kv.txn([], [Put(P + b"k", b"1")])).revision
        r2 = (await kv.txn([], [Put(P + b"k", b"2")])).revision
        cluster.store.compact(r2)
        with pytest.raises(KVCompacted) as exc:
            await anext(kv.watch(P, prefix_end(P), r1))
        assert exc.value.compact_revision == r2
        with pytest.raises(KVCompacted):
            await kv.range(P, prefix_end(P), revision=r1)

    sim(main)


def test_lease_expiry_deletes_keys_on_the_simulated_clock() -> None:
    async def main() -> None:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        lease = await kv.grant_lease(2)
        await kv.txn([], [Put(P + b"leased", b"v", lease=lease)])
        assert await kv.refresh_lease(lease) == 2
        await asyncio.sleep(2.5)
        assert await kv.get(P + b"leased") is None
        assert await kv.refresh_lease(lease) == 0

    sim(main)


def test_lost_reply_is_unknown_but_applied_and_dropped_write_is_unknown_not_applied() -> None:
    async def main() -> None:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        cluster.add_lost_replies(1.0)
        with pytest.raises(KVUnknownOutcome):
            await kv.txn([], [Put(P + b"applied", b"1")])
        cluster.remove_lost_replies(1.0)
        assert await kv.get(P + b"applied") is not None
        cluster.add_write_drops(1.0)
        with pytest.raises(KVUnknownOutcome):
            await kv.txn([], [Put(P + b"dropped", b"1")])
        cluster.remove_write_drops(1.0)
        assert await kv.get(P + b"dropped") is None
        # Read-only transactions are sent once too: a timeout is an unknown outcome.
        net.isolate("e0"), net.isolate("e1"), net.isolate("e2")
        with pytest.raises(KVUnavailable):
            await kv.get(P + b"applied")  # never sent: unavailable

    sim(main)


def test_partitioned_from_the_quorum_is_unavailable_and_writes_do_not_apply() -> None:
    async def main() -> None:
        _, net, cluster = world()
        leader = cluster.leader
        assert leader is not None
        minority = next(m for m in cluster.members if m != leader)
        for m in cluster.members:
            if m != minority:
                net.cut(minority, m), net.cut(m, minority)
        for m in cluster.members:
            if m != minority:
                net.cut("r0", m)  # the replica only reaches the cut-off member
        kv = SimKV(cluster, net, "r0", random.Random(3))
        with pytest.raises(KVUnavailable) as exc:
            await kv.txn([], [Put(P + b"k", b"v")])
        assert not isinstance(exc.value, KVUnknownOutcome)
        assert cluster.store.get(P + b"k") is None
        with pytest.raises(KVUnavailable):
            await kv.current_revision()

    sim(main)


def test_election_pauses_the_cluster_then_it_serves_again() -> None:
    async def main() -> tuple[float, int]:
        loop, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3), timeout=5.0)
        t0 = loop.time()
        cluster.start_election(1.0, "test")
        rev = await kv.current_revision()  # waits for the new leader
        return loop.time() - t0, rev

    waited, rev = sim(main)
    assert waited >= 1.0 and rev >= 1


def test_unknown_leases_and_duplicate_keys_are_plain_errors_over_the_wire() -> None:
    async def main() -> None:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        with pytest.raises(KVError) as exc:
            await kv.txn([], [Put(P + b"k", b"v", lease=42)])
        assert not isinstance(exc.value, KVUnavailable | KVUnknownOutcome)

    sim(main)


def test_watch_batches_are_well_formed() -> None:
    async def main() -> list[WatchBatch]:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        revs = [(await kv.txn([], [Put(P + b"k", b"%d" % i)])).revision for i in range(5)]
        it = kv.watch(P, prefix_end(P), revs[2])
        batches: list[WatchBatch] = []
        while sum(len(b.events) for b in batches) < 3:
            batches.append(await anext(it))
        values: list[Any] = [e.kv.value for b in batches for e in b.events]
        assert values == [b"2", b"3", b"4"]
        return batches

    for batch in sim(main):
        if batch.events:
            assert batch.revision == batch.events[-1].kv.mod_revision


# -- a member losing its disk ------------------------------------------------------------


def test_losing_the_leaders_disk_elects_another_and_refuses_connections_to_it() -> None:
    async def main() -> None:
        loop, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3), timeout=5.0)
        await kv.txn([], [Put(P + b"k", b"1")])
        lost = cluster.leader
        assert lost is not None
        assert cluster.lose_member(lost)
        assert cluster.leader is None  # an election follows
        assert net.is_cut("r0", lost) and net.is_cut(lost, "r0")  # connection refused
        # A second disk loss while one member is gone is not modelled (data loss).
        other = next(m for m in cluster.members if m != lost)
        assert not cluster.lose_member(other)
        await kv.txn([], [Put(P + b"k", b"2")])  # the two others form a quorum
        assert cluster.leader not in (None, lost)
        # Both survivors are needed now: one more member cut off and nothing commits.
        survivor = next(m for m in cluster.members if m not in (lost, cluster.leader))
        net.isolate(survivor)
        await asyncio.sleep(1.0)
        assert cluster.leader is None
        with pytest.raises(KVError):
            await kv.txn([], [Put(P + b"k", b"3")])
        net.unisolate(survivor)
        await asyncio.sleep(2.0)
        assert cluster.leader is not None
        got = await kv.get(P + b"k")
        assert got is not None and got.value in (b"2", b"3")
        assert loop.time() > 0

    sim(main)


def test_a_replaced_member_serves_only_after_catching_up_and_never_leads_before() -> None:
    async def main() -> None:
        loop, net, cluster = world()
        lost = next(m for m in cluster.members if m != cluster.leader)
        assert cluster.lose_member(lost)
        assert not cluster.serving(lost)
        # A client that only reaches the lost member: refused at once, never sent.
        for m in cluster.members:
            if m != lost:
                net.cut("r1", m)
        kv = SimKV(cluster, net, "r1", random.Random(4), timeout=0.2)
        with pytest.raises(KVUnavailable) as exc:
            await kv.txn([], [Put(P + b"x", b"1")])
        assert not isinstance(exc.value, KVUnknownOutcome)
        assert cluster.store.get(P + b"x") is None
        writer = SimKV(cluster, net, "r0", random.Random(3))
        await writer.txn([], [Put(P + b"y", b"before")])
        assert cluster.replace_member(lost)
        assert not cluster.serving(lost)
        # While it catches up a request reaching it waits (here: past its timeout);
        # a watch on it is refused; it is no candidate in an election.
        with pytest.raises(KVUnknownOutcome):
            await kv.txn([], [Put(P + b"x", b"2")])
        cluster.start_election(0.1, "test")
        await asyncio.sleep(0.15)
        assert cluster.leader != lost
        t0 = loop.time()
        while not cluster.serving(lost):
            await asyncio.sleep(0.05)
            assert loop.time() - t0 < 5.0
        # Caught up: it serves everything committed before, and the held write.
        slow = SimKV(cluster, net, "r1", random.Random(5), timeout=2.0)
        got = await slow.get(P + b"y")
        assert got is not None and got.value == b"before"
        assert cluster.stats["members_lost"] == 1 and cluster.stats["members_replaced"] == 1

    sim(main)


def test_a_lost_members_watch_streams_break_and_the_client_resumes_elsewhere() -> None:
    async def main() -> list[bytes]:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        start = await kv.current_revision() + 1
        seen: list[bytes] = []

        async def follow() -> None:
            async for batch in kv.watch(P, prefix_end(P), start):
                seen.extend(e.kv.key for e in batch.events)

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        member = next(iter(kv._watches.values()))
        await kv.txn([], [Put(P + b"a", b"1")])
        cluster.lose_member(member)
        await kv.txn([], [Put(P + b"b", b"2")])
        await asyncio.sleep(3.0)
        assert all(m != member for m in kv._watches.values())
        cluster.heal()  # the lost member is replaced
        await asyncio.sleep(2.0)
        assert cluster.serving(member)
        task.cancel()
        return seen

    assert sim(main) == [P + b"a", P + b"b"]
