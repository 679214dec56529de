"""The retry loop every metadata write runs (StoreBase._write), against the real
etcd: a failed compare is retried on a fresh read, up to max_retries, then
Contended; a reason that retrying cannot help ends it at once; an unknown
outcome is verified (invariant 7 of docs/invariants.md) and, for a fenced
write only, re-sent with the same compares and a fresh write id, at most
max_resends times, never retried on a fresh read."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, cast

import pytest
from background import background

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import Compare, Delete, KVUnavailable, KVUnknownOutcome, Put
from hareg.kv.etcd import EtcdKV
from hareg.metadata.barrier import Freshness, ReadBarrier
from hareg.metadata.cache import MetadataCache
from hareg.metadata.errors import Contended, MissingReferences
from hareg.metadata.keys import Keys
from hareg.metadata.reflector import Reflector
from hareg.metadata.store import MetadataStore
from hareg.metadata.switch import Switch, WritesFrozen
from hareg.metadata.writes import DEFAULT_MAX_RESENDS, Done, StoreBase, Txn
from hareg.processes.etcd import EtcdProcess

from .faulty_kv import UnknownOutcomeKV
from .support import digest


async def unapplied() -> bool:
    return False


def store(kv: EtcdKV | UnknownOutcomeKV, keys: Keys, *, max_retries: int = 3) -> StoreBase:
    return StoreBase(kv, keys, SystemClock(), RandomIds(), "r", max_retries=max_retries)


async def test_a_commit_returns_the_attempts_result(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys)
    key = keys.setting("written")
    put = Put(key, b"v")

    async def attempt() -> Txn[str]:
        return Txn([Compare.missing(key)], [put], lambda: base._wrote(put), "done")

    assert await base._write("the write", attempt) == "done"
    found = await kv.get(key)
    assert found is not None and found.value == b"v"


async def test_a_failed_compare_is_retried_on_a_fresh_read_then_contended(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys, max_retries=3)
    held, target = keys.setting("held"), keys.setting("target")
    await kv.txn([], [Put(held, b"x")])
    reads: list[int] = []
    conflicts: list[int] = []

    async def conflict() -> None:
        conflicts.append(len(reads))

    async def attempt() -> Txn[None]:
        found = await base._read_many([held])
        reads.append(found[0].mod_revision if found[0] else 0)
        # Always stale: the compare names a revision the key does not have.
        return Txn([Compare.mod_revision_is(held, 0)], [Put(target, b"y")], unapplied, None, conflict)

    with pytest.raises(Contended, match="the contended write"):
        await base._write("the contended write", attempt)
    assert len(reads) == 3 and conflicts == [1, 2, 3]
    assert await kv.get(target) is None


async def test_a_reason_that_retrying_cannot_help_ends_the_loop(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys, max_retries=5)
    held = keys.setting("held")
    await kv.txn([], [Put(held, b"x")])
    attempts: list[None] = []

    async def refuse() -> None:
        raise MissingReferences(["sha256:gone"], [])

    async def attempt() -> Txn[None]:
        attempts.append(None)
        return Txn([Compare.missing(held)], [Put(keys.setting("t"), b"y")], unapplied, None, refuse)

    with pytest.raises(MissingReferences):
        await base._write("the write", attempt)
    assert len(attempts) == 1


async def test_an_attempt_with_nothing_to_write_runs_no_transaction(kv: EtcdKV, keys: Keys) -> None:
    flaky = UnknownOutcomeKV(kv, apply=False)  # any write transaction would raise
    base = store(flaky, keys)

    async def attempt() -> Done[int]:
        return Done(7)

    assert await base._write("the write", attempt) == 7
    assert flaky.times == 1


@pytest.mark.parametrize("applied", [True, False])
async def test_an_unfenced_unknown_outcome_is_verified_and_never_retried(
    kv: EtcdKV, keys: Keys, applied: bool
) -> None:
    base = store(UnknownOutcomeKV(kv, apply=applied), keys)
    key = keys.setting("lost-reply")
    put = Put(key, b"ours")
    attempts: list[None] = []

    async def attempt() -> Txn[str]:
        attempts.append(None)
        return Txn([], [put], lambda: base._wrote(put), "verified")

    if applied:
        assert await base._write("the write", attempt) == "verified"
    else:
        with pytest.raises(KVUnknownOutcome):
            await base._write("the write", attempt)
        assert await kv.get(key) is None
    assert len(attempts) == 1


async def test_no_write_commits_while_the_read_only_switch_is_on(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys)
    await kv.txn([], [Put(base.read_only_guard.key, Switch(True, "", "admin").encode())])
    key = keys.setting("frozen")

    async def attempt() -> Txn[None]:
        return Txn([], [Put(key, b"v")], unapplied, None)

    with pytest.raises(WritesFrozen):
        await base._write("the write", attempt)
    assert await kv.get(key) is None


@pytest.mark.parametrize("what", ["immutability rule", "blob link"])
async def test_a_lost_delete_is_not_acknowledged_once_the_switch_is_on(
    kv: EtcdKV, keys: Keys, what: str
) -> None:
    """A delete whose reply is lost finds its key gone (nothing to delete, or
    another client's delete), but the read-only switch was turned on
    meanwhile: the answer stays unknown (503), never a success under the switch."""
    other = MetadataStore(kv, keys, SystemClock(), RandomIds(), "other")
    if what == "blob link":
        await other.add_blob("repo", digest("b"), 1)

    async def gone_then_switch_on() -> None:
        if what == "blob link":
            assert await other.remove_link("repo", digest("b"))
        await kv.txn([], [Put(keys.setting("read-only"), Switch(True, "now", "other").encode())])

    lossy = UnknownOutcomeKV(kv, apply=False, meanwhile=gone_then_switch_on, deletes=True)
    meta = MetadataStore(lossy, keys, SystemClock(), RandomIds(), "r")  # type: ignore[arg-type]
    with pytest.raises(KVUnknownOutcome):
        if what == "immutability rule":
            await meta.set_immutability("repo", [])  # there is no rule to delete
        else:
            await meta.remove_link("repo", digest("b"))


# --------------------------------------------------- re-send after an unknown outcome


async def fenced_write(base: StoreBase, key: bytes, reads: list[int]) -> Txn[str]:
    """An attempt that moves ``key`` by a compare on the mod_revision it read
    (fenced: it writes the key it compares); its result is its write id, the
    value it puts."""
    found = (await base._read_many([key]))[0]
    assert found is not None
    reads.append(found.mod_revision)
    compares = [Compare.mod_revision_is(key, found.mod_revision)]

    def build() -> Txn[str]:
        write_id = base.ids.new_id()
        put = Put(key, write_id.encode())
        return Txn(compares, [put], lambda: base._wrote(put), write_id, again=build)

    return build()


async def value(kv: EtcdKV, key: bytes) -> bytes | None:
    found = await kv.get(key)
    return found.value if found else None


async def test_a_lost_reply_that_did_not_apply_is_sent_again_with_its_own_write_id(
    kv: EtcdKV, keys: Keys
) -> None:
    key = keys.setting("resent")
    await kv.txn([], [Put(key, b"before")])
    flaky = UnknownOutcomeKV(kv, apply=False)
    base = store(flaky, keys)
    reads: list[int] = []
    ids: list[str] = []

    async def attempt() -> Txn[str]:
        step = await fenced_write(base, key, reads)
        ids.append(step.result)
        return step

    written = await base._write("the write", attempt)
    assert await value(kv, key) == written.encode()
    assert written not in ids  # the re-send's own id, not the lost attempt's
    assert len(reads) == 1 and flaky.writes == 2  # one read, the lost txn and its re-send


async def test_a_lost_reply_that_applied_is_verified_and_not_sent_again(kv: EtcdKV, keys: Keys) -> None:
    key = keys.setting("applied")
    await kv.txn([], [Put(key, b"before")])
    flaky = UnknownOutcomeKV(kv, apply=True)
    base = store(flaky, keys)
    written = await base._write("the write", lambda: fenced_write(base, key, []))
    assert await value(kv, key) == written.encode()
    assert flaky.writes == 1


async def test_re_sends_are_bounded_and_end_as_unknown(kv: EtcdKV, keys: Keys) -> None:
    key = keys.setting("always-lost")
    await kv.txn([], [Put(key, b"before")])
    flaky = UnknownOutcomeKV(kv, apply=False, times=100)
    base = store(flaky, keys)
    with pytest.raises(KVUnknownOutcome):
        await base._write("the write", lambda: fenced_write(base, key, []))
    assert flaky.writes == 1 + DEFAULT_MAX_RESENDS
    assert await value(kv, key) == b"before"


async def test_a_first_attempt_that_applies_late_is_recognised_and_the_re_send_fails(
    kv: EtcdKV, keys: Keys
) -> None:
    """The lost txn was not applied when it was verified, but applies just
    before its re-send (a request stuck at a member): the re-send's compare
    fails, and the first attempt's write id shows the write is done."""
    key = keys.setting("late")
    await kv.txn([], [Put(key, b"before")])
    before = await kv.get(key)
    assert before is not None
    flaky = UnknownOutcomeKV(kv, apply=False, late=True, deliver_before_next_write=True)
    base = store(flaky, keys)
    ids: list[str] = []

    async def attempt() -> Txn[str]:
        step = await fenced_write(base, key, [])
        ids.append(step.result)
        return step

    assert await base._write("the write", attempt) == ids[0]
    after = await kv.get(key)
    assert after is not None and after.value == ids[0].encode()
    assert after.version == before.version + 1  # one of the two attempts applied
    assert flaky.writes == 2


async def test_a_first_attempt_that_arrives_after_its_re_send_cannot_apply(kv: EtcdKV, keys: Keys) -> None:
    key = keys.setting("later")
    await kv.txn([], [Put(key, b"before")])
    flaky = UnknownOutcomeKV(kv, apply=False, late=True)
    base = store(flaky, keys)
    written = await base._write("the write", lambda: fenced_write(base, key, []))
    assert [r.succeeded for r in await flaky.deliver()] == [False]  # its compare fails for good
    assert await value(kv, key) == written.encode()


@pytest.mark.parametrize("applied", [True, False])
async def test_a_racing_writer_makes_the_outcome_unknown_never_a_retry_on_a_fresh_read(
    kv: EtcdKV, keys: Keys, applied: bool
) -> None:
    """docs/simulation.md finding 3: while the reply is lost another client
    moves the key.  The re-send's compare fails; that is not "someone else
    wrote, read again and write once more" (our first attempt may have applied
    before the other client): the outcome is unknown, and nothing more is
    written."""
    key = keys.setting("raced")
    await kv.txn([], [Put(key, b"before")])

    async def racer() -> None:
        await kv.txn([], [Put(key, b"theirs")])

    flaky = UnknownOutcomeKV(kv, apply=applied, meanwhile=racer)
    base = store(flaky, keys)
    reads: list[int] = []
    with pytest.raises(KVUnknownOutcome):
        await base._write("the write", lambda: fenced_write(base, key, reads))
    assert await value(kv, key) == b"theirs"
    assert len(reads) == 1 and flaky.writes == 2


@pytest.mark.parametrize(
    "how",
    ["no compare", "a compare on a key it does not write", "missing, on a key that may be deleted"],
)
async def test_an_unfenced_write_is_never_sent_again(kv: EtcdKV, keys: Keys, how: str) -> None:
    """Without a compare that only one attempt can ever pass, a first attempt
    arriving late could apply after its re-send: two effects of one request."""
    key, other = keys.setting("unfenced"), keys.setting("elsewhere")
    await kv.txn([], [Put(other, b"x")])
    flaky = UnknownOutcomeKV(kv, apply=False)
    base = store(flaky, keys)
    found = await kv.get(other)
    assert found is not None
    compares = {
        "no compare": [],
        "a compare on a key it does not write": [Compare.mod_revision_is(other, found.mod_revision)],
        "missing, on a key that may be deleted": [Compare.mod_revision_is(key, 0)],
    }[how]

    async def attempt() -> Txn[str]:
        def build() -> Txn[str]:
            put = Put(key, base.ids.new_id().encode())
            return Txn(compares, [put], lambda: base._wrote(put), "done", again=build)

        return build()

    with pytest.raises(KVUnknownOutcome):
        await base._write("the write", attempt)
    assert flaky.writes == 1 and await kv.get(key) is None


def test_what_fences_a_write(keys: Keys) -> None:
    base = StoreBase(None, keys, SystemClock(), RandomIds(), "r")  # type: ignore[arg-type]
    tag, seq = keys.tag("repo", "t"), keys.tag_seq("repo", "t")
    assert base.fenced([Compare.mod_revision_is(tag, 7)], [Put(tag, b"v")])
    assert base.fenced([Compare.mod_revision_is(tag, 7)], [Delete(tag)])
    assert base.fenced([Compare.mod_revision_is(seq, 0)], [Put(seq, b"1")])  # a sequence is never deleted
    assert not base.fenced([Compare.mod_revision_is(tag, 0)], [Put(tag, b"v")])  # a tag may be deleted again
    assert not base.fenced([Compare.mod_revision_is(tag, 7)], [Put(seq, b"1")])
    assert not base.fenced([Compare.exists(tag)], [Delete(tag)])  # re-created, it exists again
    assert not base.fenced(
        [Compare.range_unchanged_since(tag, tag + b"\xff", 7)], [Delete(tag, tag + b"\xff")]
    )


async def _no_leader(kv: EtcdKV) -> None:
    """Until the member left says it has no leader (a write sent before may be
    caught in a proposal the old leader accepted: an unknown outcome, as
    tests/kv/test_etcd.py shows)."""
    async with asyncio.timeout(60):
        while True:
            t0 = time.monotonic()
            with contextlib.suppress(KVUnavailable):
                await kv.get(b"/grace/probe")
            if time.monotonic() - t0 < 0.2:
                try:
                    await kv.get(b"/grace/probe")
                except KVUnavailable:
                    return


async def test_a_write_rides_out_an_election_and_fails_once_the_grace_is_over(
    etcd_cluster: list[EtcdProcess], tmp_path: Path
) -> None:
    """Two of three members down: a write refused for want of a leader waits
    for etcd (the barrier's write grace, from the outage's start) and is sent
    again once a leader is back; an outage longer than the grace fails the
    write, and every later one at once, until etcd answers again."""
    members = etcd_cluster
    keys = Keys("/grace")
    async with EtcdKV([m.client_url for m in members], timeout=5.0, member_timeout=0.5) as kv:
        cache = MetadataCache(Reflector(kv, SystemClock(), retry_delay=0.1), keys)
        async with background(cache.reflector.run(), lambda: cache.ready):
            # Generous: the grace must outlast the restart below on a busy machine.
            barrier = ReadBarrier(kv, cache, SystemClock(), probe_interval=0.1, write_grace=60.0)
            meta = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r", cache=cache, barrier=barrier)
            await asyncio.gather(members[1].kill(), members[2].kill())
            await _no_leader(kv)
            write = asyncio.ensure_future(meta.create_upload("u1", "repo", "sha256"))
            async with asyncio.timeout(60):
                while barrier.store_available:  # the write found no leader and waits
                    assert not write.done(), write
                    await asyncio.sleep(0.05)
            assert not write.done() and not barrier.writes_blocked()
            await asyncio.gather(members[1].start(startup_timeout=60), members[2].start(startup_timeout=60))
            async with asyncio.timeout(60):
                record = await write
            assert record.repo == "repo"
            assert await kv.get(keys.upload("u1")) is not None

            # Longer than the grace: the write fails, later ones at once.
            barrier.write_grace = 1.0
            await asyncio.gather(members[1].kill(), members[2].kill())
            await _no_leader(kv)
            t0 = time.monotonic()
            with pytest.raises(KVUnavailable):
                await meta.create_upload("u2", "repo", "sha256")
            first = time.monotonic() - t0
            assert barrier.writes_blocked()
            t0 = time.monotonic()
            with pytest.raises(KVUnavailable):
                await meta.create_upload("u3", "repo", "sha256")
            later = time.monotonic() - t0
            print(f"\nafter the grace: first write failed in {first:.2f}s, the next in {later:.3f}s")
            assert first < 30 and later < 1.0
            await barrier.close()


class SlowRevisionKV:
    """A real etcd whose revision reads answer only after ``delay`` (etcd's
    fsync stalled on a busy disk, say); every other call goes straight through."""

    def __init__(self, inner: EtcdKV, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def current_revision(self) -> int:
        await asyncio.sleep(self.delay)
        return await self.inner.current_revision()


async def test_a_slow_etcd_sends_reads_to_the_cache_but_refuses_no_write(kv: EtcdKV, keys: Keys) -> None:
    """Revision reads slower than the barrier's timeout, for longer than the
    write grace: reads are served from the cache, yet the probe's answers end
    each outage, so writes are never refused as under quorum loss."""
    slow = SlowRevisionKV(kv, delay=0.6)
    cache = MetadataCache(Reflector(kv, SystemClock(), retry_delay=0.1), keys)
    async with background(cache.reflector.run(), lambda: cache.ready):
        barrier = ReadBarrier(
            cast(EtcdKV, slow),
            cache,
            SystemClock(),
            revision_timeout=0.2,
            probe_interval=0.05,
            write_grace=2.0,
        )
        meta = MetadataStore(kv, keys, SystemClock(), RandomIds(), "r", cache=cache, barrier=barrier)
        try:
            stale = 0
            started = time.monotonic()
            async with asyncio.timeout(60):
                while time.monotonic() - started < 2 * barrier.write_grace:
                    stale += await barrier.sync() is Freshness.STALE
                    assert not barrier.writes_blocked()
                    await asyncio.sleep(0.05)
            assert stale > 0
            record = await meta.create_upload("u1", "repo", "sha256")
            assert record.repo == "repo"
        finally:
            await barrier.close()
