"""The watch-fed metadata cache and the read barrier, against a real etcd."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import random
import tracemalloc
import uuid
from pathlib import Path

import pytest
from background import background

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import Delete, KVError, KVUnavailable, KVUnknownOutcome, Put
from hareg.kv.etcd import EtcdKV, progress_requests_safe
from hareg.metadata.barrier import Freshness, ReadBarrier
from hareg.metadata.cache import MetadataCache, pack_digest, unpack_digest
from hareg.metadata.keys import Keys
from hareg.metadata.records import LinkRecord, ManifestRecord, TagRecord, encode
from hareg.metadata.reflector import Reflector
from hareg.metadata.store import MetadataStore
from hareg.processes.etcd import EtcdProcess

WAIT = 30.0  # for the watch or etcd: generous, the machine may be busy


def _tag(digest: str, seq: int = 1) -> bytes:
    return encode(TagRecord(digest, seq, 0.0, "test", "w"))


def mirror(kv: EtcdKV, keys: Keys, *, retry_delay: float = 0.5) -> MetadataCache:
    """A cache fed by a reflector of its own (as a replica's, with no settings)."""
    return MetadataCache(Reflector(kv, SystemClock(), retry_delay=retry_delay), keys)


def running(cache: MetadataCache) -> contextlib.AbstractAsyncContextManager[None]:
    """The cache's reflector at work, once the cache is loaded."""
    return background(cache.reflector.run(), lambda: cache.ready)


@pytest.fixture
def keys() -> Keys:
    return Keys(f"/cache-{uuid.uuid4().hex[:10]}")


async def test_lists_existing_keys_then_follows_puts_and_deletes(kv: EtcdKV, keys: Keys) -> None:
    await kv.txn([], [Put(keys.tag("r", "old"), _tag("sha256:1"))])
    cache = mirror(kv, keys)
    async with running(cache):
        tag = cache.tag("r", "old")
        assert tag == "sha256:1"
        result = await kv.txn([], [Put(keys.tag("r", "new"), _tag("sha256:2")), Delete(keys.tag("r", "old"))])
        async with asyncio.timeout(WAIT):
            await cache.wait_for(result.revision)
        assert cache.tag("r", "old") is None
        new = cache.tag("r", "new")
        assert new == "sha256:2"
        # Keys of other kinds (uploads, history) are not mirrored.
        await kv.txn([], [Put(keys.upload("u1"), b"x")])
        assert cache.size()["t"] == 1


async def test_barrier_makes_every_acknowledged_write_visible(kv: EtcdKV, keys: Keys, etcd_url: str) -> None:
    """Read-your-writes across replicas: a write made through another client is
    visible through this cache as soon as the write is acknowledged."""
    writer = await EtcdKV.connect([etcd_url])
    cache = mirror(kv, keys)
    barrier = ReadBarrier(kv, cache, SystemClock())
    try:
        async with running(cache):
            for i in range(100):
                await writer.txn([], [Put(keys.tag("r", "t"), _tag(f"sha256:{i}", i))])
                assert await barrier.sync() is Freshness.CURRENT
                tag = cache.tag("r", "t")
                assert tag == f"sha256:{i}"
    finally:
        await writer.close()


@pytest.mark.parametrize("interval", ["100ms", "1h"])
async def test_barrier_catches_up_when_only_other_prefixes_change(tmp_path: Path, interval: str) -> None:
    """Writes outside the watched prefix move the store revision without any
    event here.  The cache learns it is current from etcd's periodic progress
    report, or from an on-demand one where etcd orders those correctly
    (etcd#15220).  When neither comes in time the read must go to etcd
    (UNCACHED), never claim a freshness it cannot prove."""
    etcd = EtcdProcess("progress", tmp_path / "etcd", progress_notify_interval=interval)
    await etcd.start()
    kv = await EtcdKV.connect([etcd.client_url])
    try:
        on_demand = progress_requests_safe(await kv.server_version())
        cache = mirror(kv, Keys("/watched"))
        expected = Freshness.CURRENT if interval == "100ms" or on_demand else Freshness.UNCACHED
        # Where a report is due, a generous bound (a busy machine delays it); where
        # none can come, a short one: the sync waits for all of it, three times.
        catch_up = WAIT if expected is Freshness.CURRENT else 1.0
        barrier = ReadBarrier(kv, cache, SystemClock(), catch_up_timeout=catch_up)
        async with running(cache):
            for i in range(3):
                await kv.txn([], [Put(f"/elsewhere/{i}".encode(), b"x")])
                assert await barrier.sync() is expected
    finally:
        await kv.close()
        await etcd.stop()


async def test_reads_see_every_acknowledged_write_amid_unrelated_writes(
    kv: EtcdKV, keys: Keys, etcd_url: str
) -> None:
    """The linearizability check under the traffic that exposed etcd#15220: a
    busy watch stream (large events queued for delivery) while the revision
    also moves outside the prefix, so the cache must prove freshness."""
    writer = await EtcdKV.connect([etcd_url])
    cache = mirror(kv, keys)
    barrier = ReadBarrier(kv, cache, SystemClock())
    noise = f"/noise-{uuid.uuid4().hex}".encode()
    big = b"x" * 256 * 1024

    async def churn() -> None:
        for i in range(30):
            await writer.txn([], [Put(keys.upload(f"bulk{i % 4}"), big), Put(noise, str(i).encode())])

    try:
        async with running(cache):
            stale = 0
            for i in range(40):
                churner = asyncio.create_task(churn()) if i % 10 == 0 else None
                await writer.txn([], [Put(keys.link("r", "sha256:x"), encode(LinkRecord(i, 0.0)))])
                await writer.txn([], [Put(noise, b"after")])
                if await barrier.sync() is Freshness.CURRENT:
                    link = cache.link("r", "sha256:x")
                    stale += link is None or link.size != i
                if churner is not None:
                    await churner
            assert stale == 0, f"{stale} stale reads reported as current"
    finally:
        await writer.close()


async def test_concurrent_reads_share_revision_reads(kv: EtcdKV, keys: Keys) -> None:
    cache = mirror(kv, keys)
    barrier = ReadBarrier(kv, cache, SystemClock())
    async with running(cache):
        results = await asyncio.gather(*(barrier.sync() for _ in range(200)))
        assert all(r is Freshness.CURRENT for r in results)
        # Each call joins a round that starts after it; 200 calls fit in a few rounds.
        assert barrier.revision_reads <= 10


async def test_relists_after_falling_behind_compaction(kv: EtcdKV, keys: Keys, etcd_url: str) -> None:
    cache = mirror(kv, keys, retry_delay=0.05)
    async with running(cache):
        relists = cache.relists
    # While the cache's task is stopped, history it has not seen is written and compacted.
    writes = [await kv.txn([], [Put(keys.tag("r", f"t{i}"), _tag("sha256:x"))]) for i in range(3)]
    from etcd3aio import Etcd3Client

    async with Etcd3Client([etcd_url.removeprefix("http://")]) as raw:
        assert raw.kv is not None
        await raw.kv.compact(writes[-1].revision)
    assert cache.revision < writes[0].revision
    # Resuming from the compacted revision must re-list, not silently skip the gap.
    async with running(cache):
        async with asyncio.timeout(WAIT):
            while cache.relists == relists or not cache.ready:
                await asyncio.sleep(0.01)
        assert cache.relists == relists + 1
        assert all(cache.tag("r", f"t{i}") is not None for i in range(3))
        assert cache.tag_names("r", None, 0) == (["t0", "t1", "t2"], False)


async def test_tag_lists_from_the_cache_match_etcd_page_for_page(kv: EtcdKV, keys: Keys) -> None:
    """The cache's per-repository tag index answers what an etcd range would:
    byte order, ``last`` exclusive, ``more`` when the page is cut, through puts,
    deletes and a re-list; repositories whose names share a prefix stay apart."""
    rng = random.Random(5)
    names = ["latest", "v1", "v1.0", "v10", "V2", "_x", "a-b", "a.b", "a_b", "9"]
    for repo in ("app", "app-x"):
        await kv.txn([], [Put(keys.tag(repo, t), _tag("sha256:1")) for t in names])
    cache = mirror(kv, keys)
    uncached = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r")
    async with running(cache):
        for step in range(3):
            if step == 1:  # followed from the watch
                gone = rng.sample(names, 3)
                result = await kv.txn(
                    [],
                    [Delete(keys.tag("app", t)) for t in gone]
                    + [Put(keys.tag("app", "zz"), _tag("sha256:2"))],
                )
                async with asyncio.timeout(WAIT):
                    await cache.wait_for(result.revision)
            if step == 2:  # and after a re-list
                await cache.reflector.read()
            for repo in ("app", "app-x", "none"):
                expected = await uncached.list_tags(repo, None, 0)
                assert cache.tag_names(repo, None, 0) == expected
                all_names = expected[0]
                for last in [None, *all_names, "v", "zzz"]:
                    for limit in (0, 1, 2, 5, 100):
                        assert cache.tag_names(repo, last, limit) == await uncached.list_tags(
                            repo, last, limit
                        ), (
                            repo,
                            last,
                            limit,
                        )


async def test_quorum_loss_serves_stale_reads_and_fails_writes_fast(tmp_path: Path) -> None:
    etcd = EtcdProcess("stale", tmp_path / "etcd")
    await etcd.start()
    kv = await EtcdKV.connect([etcd.client_url], timeout=5.0)
    keys = Keys("/stale")
    try:
        # Two manifests listed, so not held whole: one with its body inline, one in the blob store.
        inline, stored = _digest(b"inline"), _digest(b"stored")
        elsewhere = encode(ManifestRecord("application/vnd.oci.image.index.v1+json", 7, 0.0))
        await kv.txn(
            [],
            [
                Put(keys.tag("r", "t"), _tag("sha256:before")),
                Put(keys.manifest("r", inline), _manifest(b"inline")),
                Put(keys.manifest("r", stored), elsewhere),
            ],
        )
        cache = mirror(kv, keys, retry_delay=0.1)
        # The probe interval is long enough that a busy machine cannot let it pass
        # between the syncs below; "at once" is anything well under the revision timeout.
        # No write grace: writes fail as soon as etcd is seen down (the grace is tested below).
        barrier = ReadBarrier(
            kv, cache, SystemClock(), revision_timeout=2.0, probe_interval=5.0, write_grace=0.0
        )
        async with running(cache):
            etcd.pause()
            try:
                assert await barrier.sync() is Freshness.STALE
                tag = cache.tag("r", "t")
                assert tag == "sha256:before"
                # Within the probe interval, reads do not wait for etcd again and writes fail fast.
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                assert await barrier.sync() is Freshness.STALE
                assert barrier.writes_blocked()
                assert loop.time() - t0 < 1.0
                # A write through the metadata store is refused at once, not after a timeout.
                store = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r", cache=cache, barrier=barrier)
                t0 = loop.time()
                with pytest.raises(KVUnavailable):
                    await store.delete_tag("r", "t")
                # A manifest not held whole: served from what the mirror keeps if its body is
                # in the blob store, else refused (503) at once, never waiting for etcd.
                rec = await store.get_manifest("r", stored)
                assert rec is not None and (rec.media_type, rec.size, rec.body) == (
                    "application/vnd.oci.image.index.v1+json",
                    7,
                    None,
                )
                with pytest.raises(KVUnavailable):
                    await store.get_manifest("r", inline)
                assert loop.time() - t0 < 1.0
            finally:
                etcd.resume()
            # Recovery by itself.
            async with asyncio.timeout(WAIT + barrier.probe_interval):
                while await barrier.sync() is not Freshness.CURRENT:
                    await asyncio.sleep(0.1)
            assert not barrier.writes_blocked()
            with contextlib.suppress(KVUnavailable, KVUnknownOutcome):
                await kv.txn([], [Put(keys.tag("r", "t"), _tag("sha256:after"))])
            assert await barrier.sync() is Freshness.CURRENT
            tag = cache.tag("r", "t")
            assert tag == "sha256:after"
            store = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r", cache=cache, barrier=barrier)
            rec = await store.get_manifest("r", inline)  # read from etcd again
            assert rec is not None and rec.body == b"inline"
    finally:
        await kv.close()
        await etcd.stop()


async def test_while_etcd_is_down_no_request_waits_and_the_probe_notices_recovery(tmp_path: Path) -> None:
    """After the sync that finds etcd down, syncs answer STALE at once however
    long the outage lasts (a request never waits on etcd again: a background
    probe does), writes stay blocked, and the probe alone clears the state
    once etcd answers."""
    etcd = EtcdProcess("probe", tmp_path / "etcd")
    await etcd.start()
    kv = await EtcdKV.connect([etcd.client_url], timeout=5.0)
    keys = Keys("/probe")
    try:
        cache = mirror(kv, keys, retry_delay=0.1)
        barrier = ReadBarrier(
            kv, cache, SystemClock(), revision_timeout=1.0, probe_interval=0.25, write_grace=0.0
        )
        async with running(cache):
            etcd.pause()
            try:
                assert await barrier.sync() is Freshness.STALE  # the one that waits (revision_timeout)
                loop = asyncio.get_running_loop()
                slowest = 0.0
                t_end = loop.time() + 3 * barrier.revision_timeout
                while loop.time() < t_end:
                    t0 = loop.time()
                    assert await barrier.sync() is Freshness.STALE
                    assert barrier.writes_blocked()
                    slowest = max(slowest, loop.time() - t0)
                    await asyncio.sleep(0.01)
                # Probes ran meanwhile (each waiting revision_timeout), no sync waited for one.
                assert slowest < barrier.revision_timeout / 2, slowest
                assert barrier.revision_reads >= 2
            finally:
                etcd.resume()
            async with asyncio.timeout(WAIT):
                while barrier.writes_blocked():
                    await asyncio.sleep(0.05)
            assert await barrier.sync() is Freshness.CURRENT
        await barrier.close()
    finally:
        await kv.close()
        await etcd.stop()


async def test_a_fresh_link_read_never_comes_from_a_stale_cache(tmp_path: Path) -> None:
    """A mount decides "already linked" on a read of etcd (``find_or_mount``,
    like ``get_link(fresh=True)``): while etcd cannot answer, the cache serves
    the link stale (a pull may use it), but the mount's read fails rather than
    acknowledge a link that another replica may have deleted meanwhile
    (docs/simulation.md finding 18)."""
    etcd = EtcdProcess("fresh", tmp_path / "etcd")
    await etcd.start()
    kv = await EtcdKV.connect([etcd.client_url], timeout=2.0)
    keys = Keys("/fresh")
    try:
        await kv.txn([], [Put(keys.link("r", "sha256:x"), encode(LinkRecord(3, 0.0, 0.0)))])
        cache = mirror(kv, keys, retry_delay=0.1)
        barrier = ReadBarrier(kv, cache, SystemClock(), revision_timeout=2.0, probe_interval=5.0)
        store = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r", cache=cache, barrier=barrier)
        async with running(cache):
            etcd.pause()
            try:
                stale = await store.get_link("r", "sha256:x")
                assert stale is not None and stale.size == 3
                with pytest.raises(KVUnavailable):
                    await store.get_link("r", "sha256:x", fresh=True)
                with pytest.raises(KVError):
                    await store.find_or_mount("r", "sha256:x", "src")
            finally:
                etcd.resume()
            found = await store.get_link("r", "sha256:x", fresh=True)
            assert found is not None and found.size == 3
    finally:
        await kv.close()
        await etcd.stop()


async def test_a_lent_sync_serves_one_read_of_the_same_request(kv: EtcdKV, keys: Keys) -> None:
    cache = mirror(kv, keys)
    barrier = ReadBarrier(kv, cache, SystemClock())
    async with running(cache):
        assert await barrier.sync() is Freshness.CURRENT
        reads = barrier.revision_reads
        barrier.lend()  # outside a request scope: nothing is lent
        assert await barrier.sync() is Freshness.CURRENT
        assert barrier.revision_reads == reads + 1
        with barrier.request_scope():
            barrier.lend()
            assert await barrier.sync() is Freshness.CURRENT  # the loan
            assert barrier.revision_reads == reads + 1
            assert await barrier.sync() is Freshness.CURRENT  # used once only
            assert barrier.revision_reads == reads + 2
            barrier.lend()
            barrier.take_back()  # the request wrote: its next read syncs anew
            await barrier.sync()
            assert barrier.revision_reads == reads + 3

        async def another_request() -> None:
            with barrier.request_scope():
                await barrier.sync()

        with barrier.request_scope():
            barrier.lend()
            await asyncio.create_task(another_request())  # a loan is this request's alone
            assert barrier.revision_reads == reads + 4


def _manifest(body: bytes) -> bytes:
    return encode(ManifestRecord("application/vnd.oci.image.manifest.v1+json", len(body), 0.0, body=body))


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


async def test_manifest_records_are_kept_by_bytes_and_read_back_at_the_cache_revision(
    kv: EtcdKV, keys: Keys
) -> None:
    """The body set holds at most its bound; an evicted (or listed, never kept)
    record is read from etcd at the cache's revision, and a read of it joins
    the one in flight."""
    # Incompressible padding: records are stored deflated, and the bound counts
    # their stored size (at least 1,200 bytes each here, so at most 3 fit).
    pad = [base64.b64encode(random.Random(i).randbytes(1200)).decode() for i in range(12)]
    bodies = [f'{{"n": {i}, "pad": "{pad[i]}"}}'.encode() for i in range(12)]
    await kv.txn([], [Put(keys.manifest("r", _digest(b)), _manifest(b)) for b in bodies[:4]])
    cache = MetadataCache(Reflector(kv, SystemClock()), keys, body_bytes=3 * 1200)
    async with running(cache):
        assert cache.size()["body"] == 0  # a listing does not fill the set
        for b in bodies[4:]:
            result = await kv.txn([], [Put(keys.manifest("r", _digest(b)), _manifest(b))])
        async with asyncio.timeout(WAIT):
            await cache.wait_for(result.revision)
        assert 0 < cache.size()["body"] <= 3 and cache.bodies_held <= cache.body_bytes
        assert cache.size()["m"] == 12
        for b in bodies:
            records = await asyncio.gather(*(cache.manifest("r", _digest(b)) for _ in range(3)))
            assert all(rec is not None and rec.body == b for rec in records)
            assert cache.bodies_held <= cache.body_bytes
        assert cache.body_misses >= 9
        assert await cache.manifest("r", _digest(b"absent")) is None
        # A record larger than the whole bound is read every time, never kept.
        big = b"y" * 5000
        result = await kv.txn([], [Put(keys.manifest("r", _digest(big)), _manifest(big))])
        async with asyncio.timeout(WAIT):
            await cache.wait_for(result.revision)
        rec = await cache.manifest("r", _digest(big))
        assert rec is not None and rec.body == big and cache.bodies_held <= cache.body_bytes


async def test_a_missed_body_is_the_one_of_the_tag_read_with_it(
    kv: EtcdKV, keys: Keys, etcd_url: str
) -> None:
    """With no body kept in memory, every tagged read reads its manifest from
    etcd.  While another client moves the tag back and forth (and deletes the
    manifest it moved off), every read returns a digest with that digest's
    body, and a read after a move is acknowledged returns the new one."""
    a, b = b'{"image": "a"}', b'{"image": "b"}'
    da, db = _digest(a), _digest(b)
    await kv.txn([], [Put(keys.manifest("r", da), _manifest(a)), Put(keys.tag("r", "t"), _tag(da))])
    writer = await EtcdKV.connect([etcd_url])
    cache = MetadataCache(Reflector(kv, SystemClock()), keys, body_bytes=0)
    barrier = ReadBarrier(kv, cache, SystemClock())
    store = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r", cache=cache, barrier=barrier)
    body_of = {da: a, db: b}
    wrong: list[tuple[str, bytes | None]] = []
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            found = await store.get_tagged_manifest("r", "t")
            assert found is not None
            digest, rec = found
            if rec is None or rec.body != body_of[digest]:
                wrong.append((digest, rec.body if rec else None))

    try:
        async with running(cache):
            readers = [asyncio.create_task(reader()) for _ in range(4)]
            for i in range(40):
                new, old = (db, da) if i % 2 == 0 else (da, db)
                body = body_of[new]
                # The new manifest and the tag move in one write, the old manifest deleted.
                await writer.txn(
                    [],
                    [
                        Put(keys.manifest("r", new), _manifest(body)),
                        Put(keys.tag("r", "t"), _tag(new, i + 2)),
                    ],
                )
                await writer.txn([], [Delete(keys.manifest("r", old))])
                found = await store.get_tagged_manifest("r", "t")
                assert found is not None and found[0] == new
                assert found[1] is not None and found[1].body == body
            stop.set()
            await asyncio.gather(*readers)
        assert wrong == []
        assert cache.body_misses > 40 and cache.size()["body"] == 0
    finally:
        stop.set()
        await writer.close()


async def test_a_relist_holds_one_copy_of_the_mirror(kv: EtcdKV, keys: Keys) -> None:
    """A listing is built in place: the memory it takes at its peak is far
    less than a second copy of the mirror."""
    for start in range(0, 2000, 80):
        ops = []
        for i in range(start, start + 80):
            body = f'{{"n": {i}}}'.encode()
            ops += [Put(keys.manifest(f"r{i % 20}", _digest(body)), _manifest(body))]
            ops += [Put(keys.tag(f"r{i % 20}", f"v{i}"), _tag(_digest(body)))]
        await kv.txn([], ops)
    cache = MetadataCache(Reflector(kv, SystemClock(), page=200), keys)
    # Collected before each measure: garbage an earlier test left (freed at
    # a random point of the measure otherwise) is not the listing's.
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await cache.reflector.read()
        held = tracemalloc.get_traced_memory()[0] - before
        assert cache.size()["m"] == cache.size()["t"] == 2000
        gc.collect()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        await cache.reflector.read()  # a re-list, as after compaction
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert cache.ready and cache.size()["m"] == 2000
    # Two copies would peak above ``held`` plus a page of keys in flight; one
    # copy built in place peaks at about a page (200 keys here).
    assert peak < held / 2, (peak, held)


@pytest.mark.parametrize(
    ("digest", "raw"),
    [
        ("sha256:" + "ab" * 32, 32),
        ("sha512:" + "cd" * 64, 64),
        ("sha256:" + "AB" * 32, None),  # not what a digest is written as: kept as text
        ("sha256:1", None),
        ("sha384:" + "ef" * 48, None),
    ],
)
def test_digests_are_kept_as_raw_bytes_where_they_read_back_the_same(digest: str, raw: int | None) -> None:
    packed = pack_digest(digest)
    assert (len(packed) if isinstance(packed, bytes) else None) == raw
    assert unpack_digest(packed) == digest
