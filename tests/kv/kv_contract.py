"""The behaviour every KV implementation must have (hareg/kv/base.py).

One suite, two runners: ``tests/kv/test_etcd.py`` runs every case against a
real etcd (``EtcdKV``), ``tests/sim/test_sim_etcd_model.py`` against the
simulator's model (``SimKV`` over an ``EtcdCluster``, each case in a fresh
simulated world on a ``SimLoop``).  A case is an async function of a
:class:`KVHarness`; ``CASES`` maps each case's name to it, so a runner is::

    @pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
    async def test_kv_contract(case: Case, ...) -> None:
        await case(KVHarness(kv, key_prefix, compact))

Cases keep to the harness's key prefix (a shared etcd serves other tests),
measure time with the running loop's clock (virtual on a SimLoop, monotonic
otherwise) and bound every wait.  They assume that nothing else writes to the
store while they run (pytest runs one test at a time) and that nothing
compacts it but ``KVHarness.compact``.  What only one implementation does
(fault injection in the model; gRPC, TLS, reconnects and etcd versions in
the adapter) belongs in that implementation's own tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from hareg.kv.base import (
    KV,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    KVCompacted,
    KVError,
    KVUnavailable,
    KVUnknownOutcome,
    Op,
    Put,
    RangeResult,
    Target,
    TxnOp,
    WatchBatch,
    prefix_end,
)


@dataclass(frozen=True)
class KVHarness:
    kv: KV
    prefix: bytes  # every key a case writes starts with it
    compact: Callable[[int], Awaitable[None]]  # compact the store's history up to a revision


Case = Callable[[KVHarness], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


# -- helpers -----------------------------------------------------------------------------


def now() -> float:
    return asyncio.get_running_loop().time()


async def put(kv: KV, key: bytes, value: bytes, lease: int = 0) -> int:
    r = await kv.txn([], [Put(key, value, lease)])
    assert r.succeeded
    return r.revision


async def next_batch(
    it: AsyncIterator[WatchBatch], *, events: bool = True, within: float = 30.0
) -> WatchBatch:
    """The next batch (with events, unless ``events`` is False)."""
    async with asyncio.timeout(within):
        while True:
            batch = await anext(it)
            if bool(batch.events) == events:
                return batch


async def collect_events(
    it: AsyncIterator[WatchBatch], n: int, within: float = 30.0
) -> list[tuple[EventType, bytes, bytes, int]]:
    """The next ``n`` events as (type, key, value, mod_revision); every batch
    with events is stamped with its last event's revision."""
    out: list[tuple[EventType, bytes, bytes, int]] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            batch = await anext(it)
            for ev in batch.events:
                out.append((ev.type, ev.kv.key, ev.kv.value, ev.kv.mod_revision))
            if batch.events:
                assert batch.revision == batch.events[-1].kv.mod_revision
    return out


async def aclose(it: AsyncIterator[WatchBatch]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


@contextlib.asynccontextmanager
async def watching(
    kv: KV, start: bytes, end: bytes, revision: int
) -> AsyncIterator[AsyncIterator[WatchBatch]]:
    """``kv.watch(...)``, closed on the way out."""
    it = kv.watch(start, end, revision)
    try:
        yield it
    finally:
        await aclose(it)


# -- reads -------------------------------------------------------------------------------


@case
async def case_get(h: KVHarness) -> None:
    kv, k = h.kv, h.prefix + b"k"
    assert await kv.get(k) is None
    rev = await put(kv, k, b"v1")
    got = await kv.get(k)
    assert got is not None
    assert (got.key, got.value, got.create_revision, got.mod_revision, got.version, got.lease) == (
        k,
        b"v1",
        rev,
        rev,
        1,
        0,
    )
    rev2 = await put(kv, k, b"v2")
    got = await kv.get(k)
    assert got is not None
    assert (got.value, got.create_revision, got.mod_revision, got.version) == (b"v2", rev, rev2, 2)


@case
async def case_current_revision(h: KVHarness) -> None:
    before = await h.kv.current_revision()
    rev = await put(h.kv, h.prefix + b"k", b"v")
    assert rev > before
    assert await h.kv.current_revision() == rev


@case
async def case_range_limit_more_count_keys_only(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    keys = [p + bytes([c]) for c in b"edcba"]
    for k in keys:
        await put(kv, k, b"value-" + k)
    end = prefix_end(p)
    full = await kv.range(p, end)
    assert [x.key for x in full.kvs] == sorted(keys)
    assert [x.value for x in full.kvs] == [b"value-" + k for k in sorted(keys)]
    assert (full.more, full.count) == (False, 5)
    assert full.revision == await kv.current_revision()

    page = await kv.range(p, end, limit=2)
    assert [x.key for x in page.kvs] == sorted(keys)[:2]
    assert (page.more, page.count) == (True, 5)

    rest = await kv.range(page.kvs[-1].key + b"\x00", end, limit=10)
    assert [x.key for x in rest.kvs] == sorted(keys)[2:]
    assert (rest.more, rest.count) == (False, 3)

    exact = await kv.range(p, end, limit=5)
    assert (len(exact.kvs), exact.more, exact.count) == (5, False, 5)

    ko = await kv.range(p, end, keys_only=True)
    assert [x.key for x in ko.kvs] == sorted(keys)
    assert all(x.value == b"" and x.mod_revision > 0 for x in ko.kvs)

    empty = await kv.range(p + b"zz", end)
    assert (empty.kvs, empty.more, empty.count) == ([], False, 0)

    # An end of b"\x00" means every key from the start on.
    tail = await kv.range(p + b"c", b"\x00", limit=2)
    assert [x.key for x in tail.kvs] == [p + b"c", p + b"d"] and tail.more


@case
async def case_range_pagination_at_a_fixed_revision(h: KVHarness) -> None:
    # Paging through a range at the first page's revision sees one snapshot,
    # whatever is written between the pages.
    kv, p = h.kv, h.prefix
    keys = sorted(p + b"%02d" % i for i in range(7))
    for k in keys:
        await put(kv, k, b"v")
    end = prefix_end(p)
    first = await kv.range(p, end, limit=3)
    pinned = first.revision
    seen = [x.key for x in first.kvs]
    more = first.more
    await put(kv, p + b"03x", b"written after the first page")  # sorts into page two
    await kv.txn([], [Delete(keys[-1])])
    pages = 1
    while more:
        page = await kv.range(seen[-1] + b"\x00", end, limit=3, revision=pinned)
        seen += [x.key for x in page.kvs]
        more = page.more
        pages += 1
    assert seen == keys and pages == 3
    assert (await kv.range(p, end, keys_only=True)).count == 7  # one more, one fewer


@case
async def case_range_at_revision(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    k = p + b"k"
    r1 = await put(kv, k, b"old")
    await put(kv, k, b"new")
    await put(kv, p + b"later", b"x")
    old = await kv.range(p, prefix_end(p), revision=r1)
    assert [(x.key, x.value, x.mod_revision, x.version) for x in old.kvs] == [(k, b"old", r1, 1)]
    assert old.count == 1
    # The header is the store's revision, not the one read at.
    assert old.revision == await kv.current_revision()
    one = await kv.range(k, k + b"\x00", revision=r1)  # a single key's range
    assert [x.value for x in one.kvs] == [b"old"]
    before = await kv.range(p, prefix_end(p), revision=r1 - 1)
    assert (before.kvs, before.count) == ([], 0)
    limited = await kv.range(p, prefix_end(p), limit=1, revision=r1 + 2)
    assert [x.key for x in limited.kvs] == [k] and (limited.more, limited.count) == (True, 2)
    # A revision not reached yet is refused (not applied, not worth retrying).
    with pytest.raises(KVError) as exc:
        await kv.range(p, prefix_end(p), revision=old.revision + 1000)
    assert not isinstance(exc.value, KVUnavailable | KVUnknownOutcome | KVCompacted)


@case
async def case_empty_start_key_means_from_the_first_key(h: KVHarness) -> None:
    await put(h.kv, h.prefix + b"a", b"1")
    end = prefix_end(h.prefix)
    res = await h.kv.range(b"", end, keys_only=True)
    assert h.prefix + b"a" in [x.key for x in res.kvs]
    lowest = await h.kv.range(b"\x00", end, keys_only=True)
    assert [x.key for x in res.kvs] == [x.key for x in lowest.kvs]
    assert res.count == lowest.count


@case
async def case_read_of_compacted_revision(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    r1 = await put(kv, p + b"k", b"1")
    r2 = await put(kv, p + b"k", b"2")
    await h.compact(r2)
    with pytest.raises(KVCompacted) as exc:
        await kv.range(p, prefix_end(p), revision=r1)
    assert exc.value.compact_revision == r2
    res = await kv.range(p, prefix_end(p), revision=r2)
    assert [x.value for x in res.kvs] == [b"2"]
    # Reads of the present are not affected.
    got = await kv.get(p + b"k")
    assert got is not None and (got.value, got.create_revision, got.version) == (b"2", r1, 2)


# -- transactions ------------------------------------------------------------------------


@case
async def case_txn_branches(h: KVHarness) -> None:
    kv, k = h.kv, h.prefix + b"k"
    r = await kv.txn([Compare.missing(k)], [Put(k, b"created")], [Get(k)])
    assert r.succeeded and r.responses == [None]
    created = r.revision

    r = await kv.txn([Compare.missing(k)], [Put(k, b"again")], [Get(k)])
    assert not r.succeeded
    assert r.revision == created  # nothing written
    [got] = r.responses
    assert isinstance(got, RangeResult)
    assert [(x.key, x.value) for x in got.kvs] == [(k, b"created")]
    assert got.revision == created

    r = await kv.txn([Compare.exists(k), Compare.mod_revision_is(k, created)], [Put(k, b"updated")])
    assert r.succeeded and r.revision == created + 1
    r = await kv.txn([Compare.mod_revision_is(k, created)], [Put(k, b"stale")])
    assert not r.succeeded and r.responses == [] and r.revision == created + 1
    got_kv = await kv.get(k)
    assert got_kv is not None and got_kv.value == b"updated"

    # A transaction that writes nothing does not move the revision.
    r = await kv.txn([Compare.exists(k)], [Get(k)])
    assert r.succeeded and r.revision == created + 1
    r = await kv.txn([], [])
    assert r.succeeded and r.responses == [] and r.revision == created + 1
    # The failure branch writes as the success branch does.
    r = await kv.txn([Compare.missing(k)], [], [Put(k, b"from failure")])
    assert not r.succeeded and r.responses == [None] and r.revision == created + 2
    assert await kv.current_revision() == created + 2


# (target, op, value, expected) on a key put twice (v1 then v2); "create" and
# "mod" stand for its create and mod revisions.
COMPARE_KINDS: list[tuple[Target, Op, int | bytes | str, bool]] = [
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
]


@case
async def case_txn_compare_kinds(h: KVHarness) -> None:
    kv = h.kv
    wrong: list[str] = []
    for i, (target, op, value, expected) in enumerate(COMPARE_KINDS):
        k = h.prefix + b"k%02d" % i
        create = await put(kv, k, b"v1")
        mod = await put(kv, k, b"v2")
        resolved: int | bytes = {"create": create, "mod": mod}[value] if isinstance(value, str) else value
        r = await kv.txn([Compare(k, target, op, resolved)], [Get(k)], [])
        if r.succeeded is not expected:
            wrong.append(f"{target.name} {op.value} {value!r}: {r.succeeded}, expected {expected}")
    assert not wrong, wrong


@case
async def case_txn_compares_on_a_missing_key(h: KVHarness) -> None:
    kv, k = h.kv, h.prefix + b"nope"
    assert (await kv.txn([Compare(k, Target.VERSION, Op.EQUAL, 0)], [])).succeeded
    assert (await kv.txn([Compare(k, Target.CREATE, Op.EQUAL, 0)], [])).succeeded
    assert (await kv.txn([Compare(k, Target.MOD, Op.LESS, 1)], [])).succeeded
    assert not (await kv.txn([Compare.exists(k)], [])).succeeded
    assert (await kv.txn([Compare.missing(k)], [])).succeeded
    # A VALUE compare on a missing key is always false, whatever the operator.
    assert not (await kv.txn([Compare(k, Target.VALUE, Op.EQUAL, b"")], [])).succeeded
    assert not (await kv.txn([Compare(k, Target.VALUE, Op.NOT_EQUAL, b"x")], [])).succeeded
    # A deleted key is a missing key.
    await put(kv, k, b"v")
    await kv.txn([], [Delete(k)])
    assert (await kv.txn([Compare.missing(k)], [])).succeeded
    assert not (await kv.txn([Compare(k, Target.VALUE, Op.NOT_EQUAL, b"x")], [])).succeeded


@case
async def case_txn_range_empty(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    lo, hi = p + b"r/", prefix_end(p + b"r/")
    await put(kv, p + b"q", b"outside")  # just below the range
    await put(kv, hi, b"outside")  # the exclusive end itself
    r = await kv.txn([Compare.range_empty(lo, hi)], [Put(lo + b"first", b"1")])
    assert r.succeeded
    r = await kv.txn([Compare.range_empty(lo, hi)], [Put(lo + b"second", b"2")])
    assert not r.succeeded
    assert await kv.get(lo + b"second") is None
    # An empty range compares as one zero key: VALUE is false, the rest compare 0.
    elo, ehi = p + b"none/", prefix_end(p + b"none/")
    assert (await kv.txn([Compare(elo, Target.MOD, Op.LESS, 1, range_end=ehi)], [])).succeeded
    assert (await kv.txn([Compare(elo, Target.CREATE, Op.EQUAL, 0, range_end=ehi)], [])).succeeded
    assert not (await kv.txn([Compare(elo, Target.VALUE, Op.EQUAL, b"", range_end=ehi)], [])).succeeded


@case
async def case_txn_range_unchanged_since(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    lo, hi = p + b"r/", prefix_end(p + b"r/")
    await put(kv, lo + b"a", b"1")
    seen = await put(kv, lo + b"b", b"1")
    assert (await kv.txn([Compare.range_unchanged_since(lo, hi, seen)], [])).succeeded
    # Changes outside the range do not matter.
    await put(kv, hi + b"x", b"outside")
    assert (await kv.txn([Compare.range_unchanged_since(lo, hi, seen)], [])).succeeded
    # A deletion is not seen (as documented) ...
    await kv.txn([], [Delete(lo + b"a")])
    assert (await kv.txn([Compare.range_unchanged_since(lo, hi, seen)], [])).succeeded
    # ... a modification is, and so is a creation.
    await put(kv, lo + b"b", b"2")
    assert not (await kv.txn([Compare.range_unchanged_since(lo, hi, seen)], [])).succeeded
    current = await kv.current_revision()
    assert (await kv.txn([Compare.range_unchanged_since(lo, hi, current)], [])).succeeded
    await put(kv, lo + b"c", b"new")
    assert not (await kv.txn([Compare.range_unchanged_since(lo, hi, current)], [])).succeeded
    # Every key of a range must satisfy a range compare (b is at version 2, c at 1).
    assert not (await kv.txn([Compare(lo, Target.VERSION, Op.EQUAL, 1, range_end=hi)], [])).succeeded
    assert (await kv.txn([Compare(lo, Target.VERSION, Op.GREATER, 0, range_end=hi)], [])).succeeded


@case
async def case_txn_ops_and_responses(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    await put(kv, p + b"d/1", b"x")
    await put(kv, p + b"d/2", b"y")
    r = await kv.txn(
        [],
        [
            Put(p + b"a", b"1"),
            Get(p + b"a"),
            Get(p, prefix_end(p), limit=2),
            Delete(p + b"d/", prefix_end(p + b"d/")),
            Delete(p + b"missing"),
            Get(p, prefix_end(p)),
        ],
    )
    assert r.succeeded
    put_resp, get_a, page, deleted, none_deleted, after = r.responses
    assert put_resp is None
    assert isinstance(get_a, RangeResult) and [x.value for x in get_a.kvs] == [b"1"]
    assert isinstance(page, RangeResult)
    assert [x.key for x in page.kvs] == [p + b"a", p + b"d/1"]
    assert (page.more, page.count) == (True, 3)
    assert (deleted, none_deleted) == (2, 0)
    assert isinstance(after, RangeResult) and [x.key for x in after.kvs] == [p + b"a"]
    assert all(isinstance(x, RangeResult) and 0 < x.revision <= r.revision for x in (get_a, page, after))
    # A read after a write in the same transaction is stamped with the new revision ...
    assert {x.revision for x in (get_a, page, after) if isinstance(x, RangeResult)} == {r.revision}
    # ... one before any write with the revision the transaction started from.
    r2 = await kv.txn([], [Get(p + b"a"), Put(p + b"a", b"2"), Get(p + b"a")])
    first, _, second = r2.responses
    assert isinstance(first, RangeResult) and isinstance(second, RangeResult)
    assert [x.value for x in first.kvs] == [b"1"] and first.revision == r.revision
    assert [x.value for x in second.kvs] == [b"2"] and second.revision == r2.revision == r.revision + 1
    got = await kv.get(p + b"d/1")
    assert got is None and r2.revision == await kv.current_revision()


@case
async def case_deletes(h: KVHarness) -> None:
    kv, p, k = h.kv, h.prefix, h.prefix + b"k"
    r1 = await put(kv, k, b"1")
    await put(kv, k, b"2")
    r = await kv.txn([], [Delete(k)])
    assert r.succeeded and r.responses == [1]
    deleted_at = r.revision
    assert await kv.get(k) is None
    # Deleting what is not there writes nothing.
    r = await kv.txn([], [Delete(k)])
    assert r.responses == [0] and r.revision == deleted_at
    # History before the deletion is still there.
    old = await kv.range(k, k + b"\x00", revision=deleted_at - 1)
    assert [x.value for x in old.kvs] == [b"2"]
    # A key put again after its deletion starts over.
    again = await put(kv, k, b"3")
    got = await kv.get(k)
    assert got is not None and (got.create_revision, got.mod_revision, got.version) == (again, again, 1)
    assert r1 < deleted_at < again
    # A range delete takes every key of [start, end), none outside, in one revision.
    for name in (b"r/a", b"r/b", b"r/c", b"r0", b"s"):
        await put(kv, p + name, b"x")
    r = await kv.txn([], [Delete(p + b"r/", prefix_end(p + b"r/"))])
    assert r.responses == [3]
    left = await kv.range(p, prefix_end(p), keys_only=True)
    assert [x.key for x in left.kvs] == [p + b"k", p + b"r0", p + b"s"]
    assert r.revision == await kv.current_revision()


@case
async def case_txn_rejections_apply_nothing(h: KVHarness) -> None:
    kv, k = h.kv, h.prefix + b"k"
    before = await kv.current_revision()
    # etcd refuses two writes of one key in one txn branch: nothing is applied.
    twice: list[list[TxnOp]] = [[Put(k, b"1"), Delete(k)], [Put(k, b"1"), Put(k, b"2")]]
    for ops in twice:
        with pytest.raises(KVError) as exc:
            await kv.txn([], ops)
        assert not isinstance(exc.value, KVUnavailable | KVUnknownOutcome)
        assert "duplicate key" in str(exc.value)
    # A put with a lease that does not exist is refused.
    with pytest.raises(KVError) as exc:
        await kv.txn([], [Put(k, b"v", lease=123456789)])
    assert not isinstance(exc.value, KVUnavailable | KVUnknownOutcome)
    assert "lease not found" in str(exc.value)
    assert await kv.get(k) is None
    assert await kv.current_revision() == before


@case
async def case_big_txn(h: KVHarness) -> None:
    # hareg's etcd runs with --max-txn-ops 4096 (the default is 128).
    ops = [Put(h.prefix + b"%04d" % i, b"v") for i in range(1000)]
    r = await h.kv.txn([], ops)
    assert r.succeeded and len(r.responses) == 1000
    res = await h.kv.range(h.prefix, prefix_end(h.prefix), keys_only=True)
    assert res.count == 1000 and {x.mod_revision for x in res.kvs} == {r.revision}


# -- leases ------------------------------------------------------------------------------


@case
async def case_lease_grant_attach_refresh_revoke(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    lease = await kv.grant_lease(30)
    other = await kv.grant_lease(30)
    assert lease > 0 and other not in (0, lease)
    k = p + b"leased"
    await put(kv, k, b"v", lease)
    await put(kv, p + b"other", b"v", other)
    await put(kv, p + b"free", b"v")
    got = await kv.get(k)
    assert got is not None and got.lease == lease
    assert 25 <= await kv.refresh_lease(lease) <= 30
    await kv.revoke_lease(lease)
    assert await kv.get(k) is None
    assert await kv.get(p + b"other") is not None and await kv.get(p + b"free") is not None
    assert await kv.refresh_lease(lease) == 0
    await kv.revoke_lease(lease)  # already gone: no error
    assert await kv.refresh_lease(987654321) == 0  # never existed
    await kv.revoke_lease(987654321)
    # Moving a key to another lease detaches it from the first.
    moved = p + b"moved"
    await put(kv, moved, b"v", other)
    await put(kv, moved, b"w")
    await put(kv, p + b"other2", b"v", other)
    before = await kv.current_revision()
    await kv.revoke_lease(other)
    assert await kv.get(p + b"other") is None and await kv.get(p + b"other2") is None
    got = await kv.get(moved)
    assert got is not None and got.lease == 0
    # A revocation deletes all of the lease's keys in one revision.
    assert await kv.current_revision() == before + 1


@case
async def case_lease_refresh_extends_and_expiry_deletes_keys(h: KVHarness) -> None:
    kv, k = h.kv, h.prefix + b"leased"
    # Long enough that the check below, 1 s past the grant's TTL, falls 4 s
    # within the refresh's: a busy machine would have to stall that long.
    ttl = 10
    granted = now()  # the grant's TTL ends no later than granted + ttl (+ the call)
    lease = await kv.grant_lease(ttl)
    rev = await put(kv, k, b"v", lease)
    assert await kv.refresh_lease(lease) == ttl
    await asyncio.sleep(ttl / 2)
    assert await kv.refresh_lease(lease) == ttl
    await asyncio.sleep(max(granted + ttl + 1 - now(), 0))  # past the grant's TTL, within the refresh's
    assert await kv.get(k) is not None, "a refreshed lease expired on its first TTL"
    deadline = now() + ttl + 30
    while await kv.get(k) is not None:
        assert now() < deadline, "leased key outlived its lease"
        await asyncio.sleep(0.2)
    assert await kv.refresh_lease(lease) == 0
    await kv.revoke_lease(lease)  # already gone: no error
    # Expiry is a deletion like any other: watches see it.
    async with watching(h.kv, h.prefix, prefix_end(h.prefix), rev + 1) as it:
        [(kind, key, value, expired_at)] = await collect_events(it, 1)
        assert (kind, key, value) == (EventType.DELETE, k, b"") and expired_at > rev


# -- watches -----------------------------------------------------------------------------


@case
async def case_watch_events_in_order(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    start = await kv.current_revision() + 1
    async with watching(kv, p, prefix_end(p), start) as it:
        r1 = await put(kv, p + b"a", b"1")
        r2 = await put(kv, p + b"b", b"2")
        await put(kv, prefix_end(p), b"outside")
        r3 = (await kv.txn([], [Delete(p + b"a"), Put(p + b"c", b"3")])).revision
        r4 = (await kv.txn([], [Delete(p, prefix_end(p))])).revision
        got = await collect_events(it, 6)
        assert got == [
            (EventType.PUT, p + b"a", b"1", r1),
            (EventType.PUT, p + b"b", b"2", r2),
            (EventType.DELETE, p + b"a", b"", r3),
            (EventType.PUT, p + b"c", b"3", r3),
            (EventType.DELETE, p + b"b", b"", r4),
            (EventType.DELETE, p + b"c", b"", r4),
        ]


@case
async def case_watch_event_key_values(h: KVHarness) -> None:
    # A PUT event carries the key-value as a read would see it; a DELETE only
    # the key and the deletion's revision.
    kv, p = h.kv, h.prefix
    start = await kv.current_revision() + 1
    lease = await kv.grant_lease(30)
    await put(kv, p + b"k", b"1")
    await put(kv, p + b"k", b"2", lease)
    put_kv = await kv.get(p + b"k")
    deleted = (await kv.txn([], [Delete(p + b"k")])).revision
    await kv.revoke_lease(lease)
    async with watching(kv, p, prefix_end(p), start) as it:
        events: list[Event] = []
        async with asyncio.timeout(30):
            while len(events) < 3:
                events += (await anext(it)).events
        assert [e.type for e in events] == [EventType.PUT, EventType.PUT, EventType.DELETE]
        assert events[1].kv == put_kv
        assert events[2].kv == KeyValue(p + b"k", b"", 0, deleted, 0, 0)


@case
async def case_watch_from_past_revision_replays_history(h: KVHarness) -> None:
    p = h.prefix
    revs = [await put(h.kv, p + b"k", b"%d" % i) for i in range(5)]
    async with watching(h.kv, p, prefix_end(p), revs[2]) as it:
        got = await collect_events(it, 3)
        assert [(v, r) for _, _, v, r in got] == [(b"2", revs[2]), (b"3", revs[3]), (b"4", revs[4])]


@case
async def case_watch_catch_up_over_many_revisions(h: KVHarness) -> None:
    # etcd sends catch-up events in batches of up to 1000 revisions.
    kv, p = h.kv, h.prefix
    start = await kv.current_revision() + 1
    n = 1200
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> int:
        async with sem:
            return await put(kv, p + b"%05d" % i, b"v")

    revs = sorted(await asyncio.gather(*(one(i) for i in range(n))))
    async with watching(kv, p, prefix_end(p), start) as it:
        got = await collect_events(it, n, within=60)
        assert [r for *_, r in got] == revs


@case
async def case_watch_from_now(h: KVHarness) -> None:
    # start_revision 0: from the revision after the one current when the watch
    # is created (a progress notification shows it is).
    kv, p = h.kv, h.prefix
    await put(kv, p + b"before", b"x")
    current = await kv.current_revision()
    async with watching(kv, p, prefix_end(p), 0) as it:
        batch = await next_batch(it, events=False)
        assert batch.revision >= current
        r = await put(kv, p + b"after", b"y")
        assert await collect_events(it, 1) == [(EventType.PUT, p + b"after", b"y", r)]


@case
async def case_watch_from_a_future_revision(h: KVHarness) -> None:
    # Events before the start revision are not delivered, even when the watch
    # was created before they were written.
    kv, p = h.kv, h.prefix
    start = await kv.current_revision() + 3
    async with watching(kv, p, prefix_end(p), start) as it:
        first = asyncio.ensure_future(collect_events(it, 1))
        await asyncio.sleep(0.5)  # the watch is open (if not yet, the case is weaker, never wrong)
        # Three puts reach ``start``, fewer if another client of a shared
        # etcd writes meanwhile (its revisions count too).
        revs: list[int] = []
        while not revs or revs[-1] < start:
            revs.append(await put(kv, p + b"k", b"%d" % len(revs)))
        assert len(revs) <= 3
        i = len(revs) - 1  # the first put at or after start: the only one delivered so far
        assert await first == [(EventType.PUT, p + b"k", b"%d" % i, revs[i])]


@case
async def case_watch_progress_notifications(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    current = await kv.current_revision()
    async with watching(kv, p, prefix_end(p), current + 1) as it:
        # An idle watch gets progress reports (periodic ones at least).
        batch = await next_batch(it, events=False)
        assert batch.events == [] and batch.revision >= current
        r = await put(kv, p + b"k", b"v")
        batch = await next_batch(it)
        assert batch.revision == r
        batch = await next_batch(it, events=False)
        assert batch.revision >= r
        # A write outside the range moves the revision a progress report shows.
        outside = await put(kv, prefix_end(p), b"moves the revision")
        kv.request_watch_progress()  # a hint: may come sooner, never out of order
        deadline = now() + 30
        while True:
            batch = await next_batch(it, events=False)
            assert batch.revision <= outside
            if batch.revision == outside:
                break
            assert now() < deadline, "no progress report reached the outside write"


@case
async def case_watch_compacted_raises(h: KVHarness) -> None:
    kv, p = h.kv, h.prefix
    r1 = await put(kv, p + b"k", b"1")
    await put(kv, p + b"k", b"2")
    r3 = await put(kv, p + b"k", b"3")
    await h.compact(r3)
    async with watching(kv, p, prefix_end(p), r1) as it:
        with pytest.raises(KVCompacted) as exc:
            async with asyncio.timeout(30):
                async for _ in it:
                    pass
        assert exc.value.compact_revision == r3
    # From the compact revision on, history is still there.
    async with watching(kv, p, prefix_end(p), r3) as it:
        assert [v for _, _, v, _ in await collect_events(it, 1)] == [b"3"]


# -- closing -----------------------------------------------------------------------------


@case
async def case_closed_client_raises(h: KVHarness) -> None:
    kv = h.kv
    await put(kv, h.prefix + b"k", b"v")
    await kv.close()
    with pytest.raises(KVUnavailable):
        await kv.get(h.prefix + b"k")
    with pytest.raises(KVUnavailable):
        await kv.txn([], [Put(h.prefix + b"k", b"w")])
    with pytest.raises(KVUnavailable):
        await kv.current_revision()
    with pytest.raises(KVUnavailable):
        await anext(kv.watch(h.prefix, prefix_end(h.prefix), 1))
    kv.request_watch_progress()  # never raises
    await kv.close()  # again: no error
