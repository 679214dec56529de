"""The etcd model passes the shared KV contract (tests/kv/kv_contract.py, the
cases a real etcd passes through EtcdKV), each case in a fresh simulated world;
then what only the model does: exact lease timing on its clock, requested
progress reports, and the faults it injects."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from kv.kv_contract import CASES, Case, KVHarness

from hareg.kv.base import (
    KVError,
    KVUnavailable,
    KVUnknownOutcome,
    Put,
    prefix_end,
)
from sim.etcd_model import EtcdCluster, MVCCStore, SimKV
from sim.loop import SimLoop, run
from sim.network import Network
from sim.trace import Trace

T = TypeVar("T")
P = b"/t/"


def world(
    seed: int = 1, *, progress_interval: float = 1.0, compact_interval: float = 5.0
) -> tuple[SimLoop, Network, EtcdCluster]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimLoop)
    trace = Trace(loop.time)
    net = Network(loop, random.Random(seed), trace)
    cluster = EtcdCluster(
        loop,
        net,
        random.Random(seed + 1),
        trace,
        progress_interval=progress_interval,
        compact_interval=compact_interval,
    )
    cluster.ticker = loop.create_task(cluster.run())  # type: ignore[attr-defined]
    return loop, net, cluster


def sim(main: Callable[[], Awaitable[T]]) -> T:
    return run(main())[0]


# -- the shared contract ----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_kv_contract(case: Case) -> None:
    async def main() -> None:
        # No periodic compaction: as on the test etcd (whose retention outlasts
        # the tests), only the case itself compacts.
        _, net, cluster = world(compact_interval=float("inf"))
        kv = SimKV(cluster, net, "r0", random.Random(3))

        async def compact(revision: int) -> None:
            cluster.store.compact(revision)

        try:
            await case(KVHarness(kv, P, compact))
        finally:
            await kv.close()

    sim(main)


# -- what only the model does -------------------------------------------------------------


def test_lease_expiry_is_exact_on_the_model_clock() -> None:
    s = MVCCStore()
    lease = s.grant(30, now=0.0)
    s.txn([], [Put(P + b"leased", b"v", lease)], [])
    assert s.refresh(lease, now=10.0) == 30
    assert s.expire(now=39.0) == []
    assert s.expire(now=40.0) == [lease]
    assert s.get(P + b"leased") is None
    assert s.revoke(lease) == 0


def test_requested_progress_is_answered_at_once() -> None:
    async def main() -> None:
        loop, net, cluster = world(progress_interval=600.0)
        kv = SimKV(cluster, net, "r0", random.Random(3))
        now = await kv.current_revision()
        it = kv.watch(P, prefix_end(P), now + 1)
        first = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.1)  # the watch is open
        await kv.txn([], [Put(b"/other", b"moves the revision")])
        t0 = loop.time()
        kv.request_watch_progress()
        batch = await first
        assert batch.events == [] and batch.revision == cluster.store.revision == now + 1
        assert loop.time() - t0 < 0.1
        await it.aclose()  # type: ignore[attr-defined]

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


def test_a_late_write_is_unknown_and_applies_after_the_clients_deadline() -> None:
    """The ``late`` fault: the transaction is held and applies after the
    client's deadline, which the client saw as an unknown outcome; a read-only
    transaction is never held, nor a held one held again."""

    async def main() -> None:
        loop, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        applied: list[float] = []
        cluster.store.observers.append(lambda rev, events: applied.append(loop.time()))
        cluster.add_late_writes(1.0)
        for n in range(6):
            sent = loop.time()
            with pytest.raises(KVUnknownOutcome):
                await kv.txn([], [Put(P + b"late%d" % n, b"1")])
            assert (await kv.txn([], [])).succeeded  # read-only: answered at once
            while len(applied) <= n:
                assert loop.time() < sent + kv.timeout + 5.1, "the held transaction never applied"
                await asyncio.sleep(0.001)
            assert applied[n] >= sent + kv.timeout
        assert cluster.stats["late_writes"] == cluster.stats["late_applied"] == 6

    sim(main)


def test_the_heal_delivers_every_held_transaction_and_a_lost_member_drops_its_own() -> None:
    async def main() -> None:
        _, net, cluster = world()
        kv = SimKV(cluster, net, "r0", random.Random(3))
        cluster.add_late_writes(1.0)
        for key in (b"a", b"b"):
            with pytest.raises(KVUnknownOutcome):
                await kv.txn([], [Put(P + key, b"1")])
        cluster.heal()
        assert cluster.store.get(P + b"a") is not None and cluster.store.get(P + b"b") is not None
        cluster.add_late_writes(1.0)
        with pytest.raises(KVUnknownOutcome):
            await kv.txn([], [Put(P + b"c", b"1")])
        (member,) = {req.member for req, _, _ in cluster._late.values()}
        cluster.lose_member(member)
        cluster.heal()
        assert cluster.store.get(P + b"c") is None  # it died with its member

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
