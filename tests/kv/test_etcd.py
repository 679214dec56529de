"""EtcdKV against a real etcd (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client

from hareg.etcd_process import EtcdProcess
from hareg.kv import (
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
from hareg.kv.etcd import EtcdKV, parse_endpoints

pytestmark = pytest.mark.timeout(60)


async def put(kv: EtcdKV, key: bytes, value: bytes, lease: int = 0) -> int:
    r = await kv.txn([], [Put(key, value, lease)])
    assert r.succeeded
    return r.revision


async def put_when_up(kv: EtcdKV, key: bytes, value: bytes, within: float = 10.0) -> int:
    """put(), retried while etcd is unreachable (KVUnavailable: certainly not
    applied, so a retry cannot apply it twice); after a restart the client
    reconnects with a backoff of up to 2 s."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await put(kv, key, value)
        except KVUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def compact(endpoint: str, revision: int) -> None:
    async with Etcd3Client([endpoint.removeprefix("http://")]) as client:
        assert client.kv is not None
        await client.kv.compact(revision, physical=True, timeout=5)


async def next_batch(
    it: AsyncIterator[WatchBatch], *, events: bool = True, within: float = 5.0
) -> WatchBatch:
    """The next batch (with events, unless ``events`` is False)."""
    async with asyncio.timeout(within):
        while True:
            batch = await anext(it)
            if bool(batch.events) == events:
                return batch


async def collect_events(
    it: AsyncIterator[WatchBatch], n: int, within: float = 10.0
) -> list[tuple[EventType, bytes, bytes, int]]:
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


# -- endpoints -----------------------------------------------------------------


def test_parse_endpoints() -> None:
    assert parse_endpoints(["http://127.0.0.1:2379", "h2:23", "localhost:1"]) == (
        [("127.0.0.1", 2379), ("h2", 23), ("localhost", 1)],
        False,
    )
    assert parse_endpoints(["https://a:1", "https://b:2"]) == ([("a", 1), ("b", 2)], True)
    with pytest.raises(ValueError):
        parse_endpoints(["http://a:1", "https://b:2"])
    with pytest.raises(ValueError):
        parse_endpoints([])


# -- reads -----------------------------------------------------------------------


async def test_get(kv: EtcdKV, key_prefix: bytes) -> None:
    k = key_prefix + b"k"
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


async def test_range_limit_more_count_keys_only(kv: EtcdKV, key_prefix: bytes) -> None:
    keys = [key_prefix + bytes([c]) for c in b"edcba"]
    for k in keys:
        await put(kv, k, b"value-" + k)
    end = prefix_end(key_prefix)
    full = await kv.range(key_prefix, end)
    assert [x.key for x in full.kvs] == sorted(keys)
    assert (full.more, full.count) == (False, 5)
    assert full.revision == await kv.current_revision()

    page = await kv.range(key_prefix, end, limit=2)
    assert [x.key for x in page.kvs] == sorted(keys)[:2]
    assert (page.more, page.count) == (True, 5)

    rest = await kv.range(page.kvs[-1].key + b"\x00", end, limit=10)
    assert [x.key for x in rest.kvs] == sorted(keys)[2:]
    assert rest.more is False

    ko = await kv.range(key_prefix, end, keys_only=True)
    assert [x.key for x in ko.kvs] == sorted(keys)
    assert all(x.value == b"" and x.mod_revision > 0 for x in ko.kvs)

    empty = await kv.range(key_prefix + b"zz", end)
    assert (empty.kvs, empty.more, empty.count) == ([], False, 0)


async def test_range_at_revision(kv: EtcdKV, key_prefix: bytes) -> None:
    k = key_prefix + b"k"
    r1 = await put(kv, k, b"old")
    await put(kv, k, b"new")
    await put(kv, key_prefix + b"later", b"x")
    old = await kv.range(key_prefix, prefix_end(key_prefix), revision=r1)
    assert [(x.key, x.value) for x in old.kvs] == [(k, b"old")]
    assert old.revision >= r1


async def test_empty_start_key_means_from_the_first_key(kv: EtcdKV, key_prefix: bytes) -> None:
    await put(kv, key_prefix + b"a", b"1")
    res = await kv.range(b"", prefix_end(key_prefix), keys_only=True)
    assert key_prefix + b"a" in [x.key for x in res.kvs]


async def test_current_revision(kv: EtcdKV, key_prefix: bytes) -> None:
    before = await kv.current_revision()
    rev = await put(kv, key_prefix + b"k", b"v")
    assert rev > before
    assert await kv.current_revision() >= rev


async def test_large_values_over_grpc_default_limit(kv: EtcdKV, key_prefix: bytes) -> None:
    # Two 3 MiB values: the range answer exceeds gRPC's default 4 MiB receive limit.
    big = bytes(range(256)) * (3 * 4096)
    await put(kv, key_prefix + b"a", big)
    await put(kv, key_prefix + b"b", big)
    res = await kv.range(key_prefix, prefix_end(key_prefix))
    assert [x.value == big for x in res.kvs] == [True, True]


async def test_read_of_compacted_revision(kv: EtcdKV, key_prefix: bytes, etcd_url: str) -> None:
    r1 = await put(kv, key_prefix + b"k", b"1")
    r2 = await put(kv, key_prefix + b"k", b"2")
    await compact(etcd_url, r2)
    with pytest.raises(KVCompacted) as exc:
        await kv.range(key_prefix, prefix_end(key_prefix), revision=r1)
    assert exc.value.compact_revision >= r2
    res = await kv.range(key_prefix, prefix_end(key_prefix), revision=r2)
    assert [x.value for x in res.kvs] == [b"2"]


# -- transactions ------------------------------------------------------------------


async def test_txn_branches(kv: EtcdKV, key_prefix: bytes) -> None:
    k = key_prefix + b"k"
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
    assert not r.succeeded and r.responses == []
    got_kv = await kv.get(k)
    assert got_kv is not None and got_kv.value == b"updated"


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
async def test_txn_compare_kinds(
    kv: EtcdKV, key_prefix: bytes, target: Target, op: Op, value: int | bytes | str, expected: bool
) -> None:
    k = key_prefix + b"k"
    create = await put(kv, k, b"v1")
    mod = await put(kv, k, b"v2")
    resolved: int | bytes = {"create": create, "mod": mod}[value] if isinstance(value, str) else value
    r = await kv.txn([Compare(k, target, op, resolved)], [Get(k)], [])
    assert r.succeeded is expected


async def test_txn_compares_on_a_missing_key(kv: EtcdKV, key_prefix: bytes) -> None:
    k = key_prefix + b"nope"
    assert (await kv.txn([Compare(k, Target.VERSION, Op.EQUAL, 0)], [])).succeeded
    assert (await kv.txn([Compare(k, Target.CREATE, Op.EQUAL, 0)], [])).succeeded
    assert (await kv.txn([Compare(k, Target.MOD, Op.LESS, 1)], [])).succeeded
    # A VALUE compare on a missing key is always false, whatever the operator.
    assert not (await kv.txn([Compare(k, Target.VALUE, Op.EQUAL, b"")], [])).succeeded
    assert not (await kv.txn([Compare(k, Target.VALUE, Op.NOT_EQUAL, b"x")], [])).succeeded


async def test_txn_range_empty(kv: EtcdKV, key_prefix: bytes) -> None:
    lo, hi = key_prefix + b"r/", prefix_end(key_prefix + b"r/")
    await put(kv, key_prefix + b"q", b"outside")  # just below the range
    await put(kv, hi, b"outside")  # the exclusive end itself
    r = await kv.txn([Compare.range_empty(lo, hi)], [Put(lo + b"first", b"1")])
    assert r.succeeded
    r = await kv.txn([Compare.range_empty(lo, hi)], [Put(lo + b"second", b"2")])
    assert not r.succeeded
    assert await kv.get(lo + b"second") is None


async def test_txn_range_unchanged_since(kv: EtcdKV, key_prefix: bytes) -> None:
    lo, hi = key_prefix + b"r/", prefix_end(key_prefix + b"r/")
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
    now = await kv.current_revision()
    assert (await kv.txn([Compare.range_unchanged_since(lo, hi, now)], [])).succeeded
    await put(kv, lo + b"c", b"new")
    assert not (await kv.txn([Compare.range_unchanged_since(lo, hi, now)], [])).succeeded


async def test_txn_ops_and_responses(kv: EtcdKV, key_prefix: bytes) -> None:
    p = key_prefix
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


async def test_txn_rejected_is_a_plain_kv_error(kv: EtcdKV, key_prefix: bytes) -> None:
    k = key_prefix + b"k"
    # etcd refuses two writes of one key in one txn branch: nothing is applied.
    with pytest.raises(KVError) as exc:
        await kv.txn([], [Put(k, b"1"), Delete(k)])
    assert not isinstance(exc.value, KVUnavailable | KVUnknownOutcome)
    assert "duplicate key" in str(exc.value)
    assert await kv.get(k) is None


async def test_big_txn(kv: EtcdKV, key_prefix: bytes) -> None:
    # hareg's etcd runs with --max-txn-ops 4096 (the default is 128).
    ops = [Put(key_prefix + b"%04d" % i, b"v") for i in range(1000)]
    assert (await kv.txn([], ops)).succeeded
    assert (await kv.range(key_prefix, prefix_end(key_prefix), keys_only=True)).count == 1000


# -- leases ------------------------------------------------------------------------


async def test_lease_grant_refresh_revoke(kv: EtcdKV, key_prefix: bytes) -> None:
    lease = await kv.grant_lease(30)
    k = key_prefix + b"leased"
    await put(kv, k, b"v", lease)
    got = await kv.get(k)
    assert got is not None and got.lease == lease
    assert 25 <= await kv.refresh_lease(lease) <= 30
    await kv.revoke_lease(lease)
    assert await kv.get(k) is None
    assert await kv.refresh_lease(lease) == 0
    await kv.revoke_lease(lease)  # already gone: no error


async def test_lease_expiry_deletes_keys(kv: EtcdKV, key_prefix: bytes) -> None:
    lease = await kv.grant_lease(2)
    k = key_prefix + b"leased"
    await put(kv, k, b"v", lease)
    deadline = time.monotonic() + 15
    while await kv.get(k) is not None:
        assert time.monotonic() < deadline, "leased key outlived its lease"
        await asyncio.sleep(0.2)
    assert await kv.refresh_lease(lease) == 0


async def test_put_with_unknown_lease_is_rejected(kv: EtcdKV, key_prefix: bytes) -> None:
    with pytest.raises(KVError) as exc:
        await kv.txn([], [Put(key_prefix + b"k", b"v", lease=123456789)])
    assert not isinstance(exc.value, KVUnavailable | KVUnknownOutcome)


# -- watch -------------------------------------------------------------------------


async def test_watch_events_in_order(kv: EtcdKV, key_prefix: bytes) -> None:
    start = await kv.current_revision() + 1
    it = kv.watch(key_prefix, prefix_end(key_prefix), start)
    try:
        r1 = await put(kv, key_prefix + b"a", b"1")
        r2 = await put(kv, key_prefix + b"b", b"2")
        await put(kv, prefix_end(key_prefix), b"outside")
        r3 = (await kv.txn([], [Delete(key_prefix + b"a"), Put(key_prefix + b"c", b"3")])).revision
        got = await collect_events(it, 4)
        assert got == [
            (EventType.PUT, key_prefix + b"a", b"1", r1),
            (EventType.PUT, key_prefix + b"b", b"2", r2),
            (EventType.DELETE, key_prefix + b"a", b"", r3),
            (EventType.PUT, key_prefix + b"c", b"3", r3),
        ]
    finally:
        await aclose(it)


async def test_watch_from_past_revision_replays_history(kv: EtcdKV, key_prefix: bytes) -> None:
    revs = [await put(kv, key_prefix + b"k", b"%d" % i) for i in range(5)]
    it = kv.watch(key_prefix, prefix_end(key_prefix), revs[2])
    try:
        got = await collect_events(it, 3)
        assert [(v, r) for _, _, v, r in got] == [(b"2", revs[2]), (b"3", revs[3]), (b"4", revs[4])]
    finally:
        await aclose(it)


async def test_watch_catch_up_over_many_revisions(kv: EtcdKV, key_prefix: bytes) -> None:
    # etcd sends catch-up events in batches of up to 1000 revisions.
    start = await kv.current_revision() + 1
    n = 1200
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> int:
        async with sem:
            return await put(kv, key_prefix + b"%05d" % i, b"v")

    revs = sorted(await asyncio.gather(*(one(i) for i in range(n))))
    it = kv.watch(key_prefix, prefix_end(key_prefix), start)
    try:
        got = await collect_events(it, n, within=30)
        assert [r for *_, r in got] == revs
    finally:
        await aclose(it)


async def test_watch_progress_notifications(kv: EtcdKV, key_prefix: bytes) -> None:
    now = await kv.current_revision()
    it = kv.watch(key_prefix, prefix_end(key_prefix), now + 1)
    try:
        batch = await next_batch(it, events=False, within=10)
        assert batch.events == [] and batch.revision >= now
        r = await put(kv, key_prefix + b"k", b"v")
        batch = await next_batch(it)
        assert batch.revision == r
        batch = await next_batch(it, events=False, within=10)
        assert batch.revision >= r
    finally:
        await aclose(it)


async def test_watch_compacted_raises(kv: EtcdKV, key_prefix: bytes, etcd_url: str) -> None:
    r1 = await put(kv, key_prefix + b"k", b"1")
    await put(kv, key_prefix + b"k", b"2")
    r3 = await put(kv, key_prefix + b"k", b"3")
    await compact(etcd_url, r3)
    it = kv.watch(key_prefix, prefix_end(key_prefix), r1)
    try:
        with pytest.raises(KVCompacted) as exc:
            async with asyncio.timeout(10):
                async for _ in it:
                    pass
        assert exc.value.compact_revision == r3
    finally:
        await aclose(it)
    # From the compact revision on, history is still there.
    it = kv.watch(key_prefix, prefix_end(key_prefix), r3)
    try:
        assert [v for _, _, v, _ in await collect_events(it, 1)] == [b"3"]
    finally:
        await aclose(it)


async def test_watch_resumes_after_restart_without_gaps(own_etcd: EtcdProcess) -> None:
    async with EtcdKV([own_etcd.client_url], timeout=2.0) as kv:
        p = b"/w/"
        start = await kv.current_revision() + 1
        it = kv.watch(p, prefix_end(p), start)
        try:
            before = [await put(kv, p + b"%d" % i, b"before") for i in range(3)]
            got = await collect_events(it, 3)
            # Restart etcd; write while the watch is disconnected, then more.
            await own_etcd.stop()
            await own_etcd.start()
            during = [await put_when_up(kv, p + b"%d" % i, b"during") for i in range(3)]
            got += await collect_events(it, 3, within=20)
            await own_etcd.kill()
            await own_etcd.start()
            after = [await put_when_up(kv, p + b"x%d" % i, b"after") for i in range(3)]
            got += await collect_events(it, 3, within=20)
            assert [r for *_, r in got] == before + during + after
        finally:
            await aclose(it)


# -- failures ------------------------------------------------------------------------


async def test_hung_etcd_times_out_instead_of_hanging(own_etcd: EtcdProcess) -> None:
    async with EtcdKV([own_etcd.client_url], timeout=1.0) as kv:
        await put(kv, b"k", b"v")  # connected
        own_etcd.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises((KVUnknownOutcome, KVUnavailable)):
                await kv.txn([Compare.exists(b"k")], [Put(b"k", b"w")])
            with pytest.raises(KVUnavailable):
                await kv.get(b"k")
            with pytest.raises(KVUnavailable):
                await kv.current_revision()
            with pytest.raises((KVUnknownOutcome, KVUnavailable)):
                await kv.grant_lease(10)
            assert time.monotonic() - t0 < 4 * 2.5
        finally:
            own_etcd.resume()
        # Once etcd answers again the client works again.
        got = await kv.get(b"k")
        assert got is not None


async def test_txn_sent_to_hung_etcd_is_unknown_outcome(own_etcd: EtcdProcess) -> None:
    async with EtcdKV([own_etcd.client_url], timeout=1.0) as kv:
        await put(kv, b"k", b"v")
        own_etcd.pause()
        try:
            # The connection is up, so the request is sent: its fate is unknown.
            with pytest.raises(KVUnknownOutcome):
                await kv.txn([], [Put(b"k", b"maybe")])
        finally:
            own_etcd.resume()
        # It may or may not have been applied (etcd usually sees the client's
        # cancellation first); either way the store is consistent.
        got = await kv.get(b"k")
        assert got is not None and got.value in (b"v", b"maybe")


async def test_txn_in_flight_when_etcd_crashes_is_unknown_outcome(own_etcd: EtcdProcess) -> None:
    async with EtcdKV([own_etcd.client_url], timeout=5.0) as kv:
        await put(kv, b"k", b"v")
        own_etcd.pause()
        task = asyncio.create_task(kv.txn([], [Put(b"k", b"maybe")]))
        await asyncio.sleep(0.3)  # the request is on the wire
        await own_etcd.kill()  # the connection drops under it: UNAVAILABLE, but after sending
        t0 = time.monotonic()
        with pytest.raises(KVUnknownOutcome) as exc:
            await task
        assert time.monotonic() - t0 < 2.0, "should fail on the dropped connection, not the timeout"
        assert "UNAVAILABLE" in str(exc.value)


async def test_stopped_etcd_is_unavailable(own_etcd: EtcdProcess) -> None:
    async with EtcdKV([own_etcd.client_url], timeout=1.0) as kv:
        await put(kv, b"k", b"v")
        await own_etcd.stop()
        t0 = time.monotonic()
        with pytest.raises(KVUnavailable):
            await kv.get(b"k")
        with pytest.raises(KVUnavailable):
            await kv.range(b"a", b"z")
        # Nothing listens: the request certainly did not reach etcd.
        with pytest.raises(KVUnavailable):
            await kv.txn([], [Put(b"k", b"w")])
        with pytest.raises(KVUnavailable):
            await kv.revoke_lease(1)
        assert time.monotonic() - t0 < 4 * 2.5
        await own_etcd.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                got = await kv.get(b"k")
                break
            except KVUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert got is not None and got.value == b"v"


async def test_localhost_endpoint(etcd_process: EtcdProcess) -> None:
    async with EtcdKV([f"localhost:{etcd_process.client_port}"], timeout=2) as kv:
        assert await kv.current_revision() > 0


async def test_connect_check_fails_fast_when_nothing_listens() -> None:
    from hareg.etcd_process import free_port

    with pytest.raises(KVUnavailable):
        await EtcdKV.connect([f"127.0.0.1:{free_port()}"], timeout=1.0, check=True)


async def test_closed_client_raises(etcd_url: str) -> None:
    kv = await EtcdKV.connect([etcd_url])
    await kv.close()
    with pytest.raises(KVUnavailable):
        await kv.get(b"k")
    with pytest.raises(KVUnavailable):
        await anext(kv.watch(b"a", b"b", 1))


def test_progress_requests_safe_versions() -> None:
    from hareg.kv.etcd import progress_requests_safe

    assert not progress_requests_safe("3.4.23")
    assert progress_requests_safe("3.4.31")
    assert not progress_requests_safe("3.5.12")
    assert progress_requests_safe("3.5.13")
    assert progress_requests_safe("3.6.0")
    assert not progress_requests_safe("garbage")


async def test_request_watch_progress(tmp_path: Path) -> None:
    # An etcd whose periodic progress reports are too rare to matter here.
    async with (
        EtcdProcess("quiet", tmp_path / "etcd", progress_notify_interval="10m") as proc,
        EtcdKV([proc.client_url], timeout=2) as kv,
    ):
        now = await kv.current_revision()
        # Cancelling anext() would end the watch generator: pump it into a queue.
        batches: asyncio.Queue[WatchBatch] = asyncio.Queue()

        async def pump() -> None:
            async for b in kv.watch(b"/p/", prefix_end(b"/p/"), now + 1):
                await batches.put(b)

        task = asyncio.create_task(pump())
        try:
            await put(kv, b"/p/k", b"v")
            first = await asyncio.wait_for(batches.get(), 5)
            assert first.events and first.revision == now + 1
            # etcd 3.4.23 answers progress requests out of order with events
            # (etcd#15220), so EtcdKV does not send them there ...
            assert not kv._progress_requests_safe
            kv.request_watch_progress()
            await asyncio.sleep(1.5)
            assert batches.empty()
            # ... but the mechanism works when the server is new enough.
            kv._progress_requests_safe = True
            kv.request_watch_progress()
            batch = await asyncio.wait_for(batches.get(), 5)
            assert (batch.events, batch.revision) == ([], now + 1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
