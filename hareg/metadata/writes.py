"""What every metadata operation shares: the store's state, reads of many keys
at one revision, the guarded write transaction, and the retry loop around it.

Every write follows one shape (``StoreBase._write``): read the keys it
depends on, build compares on what it read and the operations to apply, run
them as one transaction, and on a failed compare read again and retry, up to
``max_retries`` times, then give up with Contended.  The transaction
(``StoreBase._txn``) adds two guards of its own:

* it compares the cluster read-only switch (switch.py), so no write commits
  once the switch is on;
* a transaction whose outcome is unknown is verified by a read before it is
  reported as done (invariant 7 of docs/invariants.md); when the read shows it
  did not apply, and the write is *fenced* (below), it is sent again, at most
  ``max_resends`` times, with the same compares and a fresh write id, else it
  is reported as unavailable.

A transaction etcd refused unapplied for want of a leader (an election, or
the start of a quorum loss) waits for etcd and is sent again as it was
(``_commit``): for at most the read barrier's ``write_grace`` from the
outage's start, so an election costs a push latency, not a failure, and a
quorum loss still fails writes within a bound.

Why the re-send is safe (docs/consistency.md, "Writes whose outcome is
unknown"): a request whose reply was lost may still apply later (it may sit
in a frozen member's socket), so "not applied yet" is not "will never apply".
A fenced write compares ``mod_revision == m`` on a key its own operations
write, with ``m > 0`` or on a key that is never deleted once written (a tag's
sequence): whichever attempt applies first moves that key's mod_revision
past ``m`` for good (revisions never repeat), so every other attempt's
compare fails, whenever it arrives.  At most one attempt ever applies, and
each attempt's write id says which.  A re-send whose compare fails is
reported as unknown, never as a conflict to retry on a fresh read (that was
docs/simulation.md finding 3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from hareg.clock import Clock
from hareg.ids import IdSource
from hareg.kv.base import (
    KV,
    Compare,
    Delete,
    Get,
    KeyValue,
    KVError,
    KVUnavailable,
    KVUnknownOutcome,
    Op,
    Put,
    RangeResult,
    Target,
    TxnOp,
    TxnResult,
)
from hareg.metadata.barrier import Freshness, ReadBarrier
from hareg.metadata.cache import MetadataCache
from hareg.metadata.errors import Contended
from hareg.metadata.keys import Keys
from hareg.metadata.records import RepoRecord, decode, encode
from hareg.metadata.switch import ReadOnlyGuard, WritesFrozen
from hareg.plants import planted

T = TypeVar("T")
R = TypeVar("R")

# Keep manifests up to this size inline in etcd (one read, or the cache, serves a
# GET); larger ones go to the blob store.  Around 1.5 KB a body stops costing
# etcd less inline than a blob record does (bench/etcd_bytes.py, the table in
# docs/architecture.md); up to 4 KiB it costs at most about 100 bytes more,
# and single-platform image manifests and small indexes keep their one read.
DEFAULT_INLINE_LIMIT = 4 * 1024
# A compare-guarded write retries this often under contention before giving up.
DEFAULT_MAX_RETRIES = 32
# A fenced write whose outcome is unknown, and verified not applied, is sent
# again at most this often (each time after an unknown outcome) before the
# client gets 503: each lost reply costs a request timeout.
DEFAULT_MAX_RESENDS = 2
# etcd's default --max-txn-ops; diagnostic reads are batched below it.
READ_BATCH = 100
# Sends of one transaction refused unapplied (KVUnavailable) while it waits
# out an election: the write grace bounds the time, this the attempts.
UNAVAILABLE_TRIES = 8


@dataclass(frozen=True, slots=True)
class Txn(Generic[T]):
    """One attempt of a write: the transaction to run and what it returns if it commits."""

    compares: Sequence[Compare]
    ops: Sequence[TxnOp]
    # After an unknown outcome: whether this attempt's own write is in place.
    verify: Callable[[], Awaitable[bool]]
    result: T
    # After a failed compare, before the next attempt: may raise the reason
    # that retrying cannot help (a reference that went missing).
    on_conflict: Callable[[], Awaitable[None]] | None = None
    # The same attempt once more, for a re-send after an unknown outcome: the
    # same compares, operations carrying a fresh write id and a ``verify``
    # that recognises that id.  None: never re-sent (503 unless verified).
    again: Callable[[], Txn[T]] | None = None


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """An attempt that found nothing to write: the operation's result as it stands."""

    result: T


class StoreBase:
    def __init__(
        self,
        kv: KV,
        keys: Keys,
        clock: Clock,
        ids: IdSource,
        replica: str,
        *,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_resends: int = DEFAULT_MAX_RESENDS,
        upload_ttl: int = 24 * 3600,
        upload_lease_window: int = 3600,
        cache: MetadataCache | None = None,
        barrier: ReadBarrier | None = None,
    ) -> None:
        self.kv = kv
        self.keys = keys
        self.clock = clock
        self.ids = ids
        self.replica = replica
        self.inline_limit = inline_limit
        self.max_retries = max_retries
        self.max_resends = max_resends
        self.upload_ttl = upload_ttl
        self.upload_lease_window = upload_lease_window
        # With a cache, tag, manifest and link reads are served from memory after
        # the barrier (linearizable), or stale while etcd is unreachable.
        self.cache = cache
        # The reverse-reference index is complete (its marker seen): deletes use it.
        self._reference_index_ready = False
        self.barrier = barrier
        # Every write transaction compares the cluster read-only switch.
        self.read_only_guard = ReadOnlyGuard(kv, keys)
        # Uploads share one lease per time window (lease TTL = ttl + window), so a
        # POST does not cost a lease grant; each PATCH moves the record to the
        # current window's lease, which keeps an active upload alive.
        self._upload_lease: tuple[int, int] | None = None
        self._upload_lease_lock = asyncio.Lock()

    # ------------------------------------------------------------------- reads

    async def _get(self, key: bytes) -> KeyValue | None:
        return await self.kv.get(key)

    async def _from_cache(self) -> MetadataCache | None:
        """The cache, once it reflects every write acknowledged before this call
        (or holds the last known state while etcd is down); None: read etcd."""
        if self.cache is None or self.barrier is None:
            return None
        freshness = await self.barrier.sync()
        return None if freshness is Freshness.UNCACHED else self.cache

    async def _record(
        self, key: bytes, kind: type[R], cached: Callable[[MetadataCache], R | None] | None = None
    ) -> R | None:
        """The record at ``key`` decoded as ``kind``, None if there is none; with
        ``cached``, taken from the cache instead once it may serve (``_from_cache``)."""
        if cached is not None and (cache := await self._from_cache()) is not None:
            return cached(cache)
        kv = await self._get(key)
        return decode(kind, kv.value) if kv else None

    async def _read_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        """Several keys read at one revision per batch: the pre-reads of writes,
        so they fail fast too while etcd is known to be down, and wait out an
        election as the writes do."""
        self._check_writable()
        out: list[KeyValue | None] = []
        for i in range(0, len(keys), READ_BATCH):
            batch = keys[i : i + READ_BATCH]
            result = await self._commit([], [Get(k) for k in batch])
            for resp in result.responses:
                assert isinstance(resp, RangeResult)
                out.append(resp.kvs[0] if resp.kvs else None)
        return out

    async def _range_all(self, span: tuple[bytes, bytes], revision: int = 0) -> RangeResult:
        return await self.kv.range(span[0], span[1], revision=revision)

    # ------------------------------------------------------------------ writes

    def etcd_known_down(self) -> bool:
        """etcd was just seen unreachable (no quorum, or an election): reads
        are served stale and nothing on a read's path waits for etcd."""
        return self.barrier is not None and not self.barrier.store_available

    async def _absent_while_writable(self, key: bytes) -> bool:
        """How a delete whose answer was lost is verified: ``key`` is gone and
        the read-only switch is off now.  "Gone" alone cannot tell this delete
        from an earlier one, and while the switch is on this request may not
        be linearized as a no-op before it (the simulator's seed 7384: an
        immutability rule removed, acknowledged, for a request that ran wholly
        under the switch); it is then answered as the unknown outcome it is."""
        if await self._get(key) is not None:
            return False
        try:
            await self.read_only_guard.refresh()
        except WritesFrozen:
            return False
        return True

    async def check_writes_allowed(self) -> None:
        """Raise WritesFrozen if the cluster read-only switch is on now: for a
        write request that turns out to change nothing (a mount of a blob
        already linked), so that it is refused exactly as a real write, and
        for an upload's chunk before its bytes are staged."""
        await self.read_only_guard.refresh()

    def _check_writable(self) -> None:
        if self.barrier is not None and self.barrier.writes_blocked():
            raise KVUnavailable("etcd is unavailable (no quorum); writes are refused until it recovers")

    async def _through_election(self, call: Callable[[], Awaitable[R]]) -> R:
        """``call()``, one step of a write (its transaction, a pre-read, its
        verification, its lease): refused unapplied (KVUnavailable: no leader,
        no member reachable), it waits for etcd within the barrier's write
        grace and runs again, which is safe since nothing applied;
        KVUnavailable once the grace is over."""
        for _ in range(UNAVAILABLE_TRIES - 1):
            try:
                return await call()
            except KVUnavailable:
                if self.barrier is None or not await self.barrier.wait_writable():
                    raise
        return await call()

    async def _commit(self, compares: Sequence[Compare], ops: Sequence[TxnOp]) -> TxnResult:
        """A write's transaction, riding out an election (``_through_election``)."""
        return await self._through_election(lambda: self.kv.txn(compares, ops))

    async def _get_for_write(self, key: bytes) -> KeyValue | None:
        """A write's pre-read of ``key``, riding out an election."""
        self._check_writable()
        return await self._through_election(lambda: self.kv.get(key))

    async def _write(self, what: str, attempt: Callable[[], Awaitable[Txn[T] | Done[T]]]) -> T:
        """Run ``attempt`` (read, then build the transaction) and its transaction
        until one commits or the attempt finds nothing to write; after
        ``max_retries`` failed compares raise Contended(``what``)."""
        for _ in range(self.max_retries):
            step = await attempt()
            if isinstance(step, Done):
                return step.result
            committed = await self._txn(step)
            if committed is not None:
                return committed.result
            if step.on_conflict is not None:
                await step.on_conflict()
        raise Contended(what)

    async def _txn(self, step: Txn[T]) -> Txn[T] | None:
        """Run a write txn: the attempt that committed (``step`` or, after an
        unknown outcome, a re-sent one: ``_settle``), or None if its compare
        failed (the caller reads again)."""
        self._check_writable()
        if self.barrier is not None:
            self.barrier.take_back()
        guard = await self.read_only_guard.compare()  # raises WritesFrozen while read-only
        compares = [*step.compares, guard]
        try:
            result: TxnResult = await self._commit(compares, step.ops)
        except KVUnknownOutcome as exc:
            if planted("ambiguous-ack"):  # PLANTED BUG (simulator only): success, unverified
                return step
            if planted("naive-resend"):  # PLANTED BUG (simulator only): finding 3's re-send
                return (
                    step if await step.verify() or (await self.kv.txn(compares, step.ops)).succeeded else None
                )
            return await self._settle(step, compares, exc)
        if not result.succeeded:
            # Perhaps the switch changed: refused if it is on now, else the caller retries.
            await self.read_only_guard.refresh()
            return None
        return step

    async def _settle(self, first: Txn[T], compares: Sequence[Compare], lost: KVUnknownOutcome) -> Txn[T]:
        """After ``first``'s outcome was lost: the attempt that is verified to
        have applied, re-sending ``first`` (fresh write id, the same
        ``compares``) while verification shows none did and the write is
        fenced (``fenced``), at most ``max_resends`` times; else raise
        KVUnknownOutcome (invariant 7 of docs/invariants.md: never a success
        unverified, never a compare failure that the caller would retry on a
        fresh read, docs/simulation.md finding 3)."""
        sent = [first]
        resends = self.max_resends if first.again is not None and self.fenced(compares, first.ops) else 0
        try:
            while True:
                for step in sent:
                    if await self._verified(step):
                        return step
                if len(sent) > resends:
                    raise lost
                assert first.again is not None
                step = first.again()
                sent.append(step)
                self._check_writable()
                try:
                    result = await self._commit(compares, step.ops)
                except KVUnknownOutcome as exc:
                    lost = exc
                    continue
                if result.succeeded:
                    return step
                # Its compare failed: an earlier attempt applied after the last
                # read, or someone else wrote; only an attempt's id tells which.
                for earlier in sent[:-1]:
                    if await self._verified(earlier):
                        return earlier
                raise KVUnknownOutcome("a write whose reply was lost was re-sent and its compare failed")
        except KVUnknownOutcome:
            raise
        except KVError as exc:
            # Unavailable now, but an earlier attempt may still apply: unknown.
            raise KVUnknownOutcome(f"a write whose reply was lost could not be verified: {exc}") from exc

    async def _verified_read(self, key: bytes) -> KeyValue | None:
        """How an unknown outcome is checked: ``key`` read from etcd, riding
        out an election; KVUnknownOutcome if etcd cannot answer in the grace."""
        try:
            return await self._through_election(lambda: self.kv.get(key))
        except KVError as exc:
            raise KVUnknownOutcome(f"a write whose reply was lost could not be verified: {exc}") from exc

    async def _verified(self, step: Txn[T]) -> bool:
        """``step.verify()``, riding out an election."""
        return await self._through_election(step.verify)

    def fenced(self, compares: Sequence[Compare], ops: Sequence[TxnOp]) -> bool:
        """Whether at most one of several attempts with these ``compares`` can
        ever apply: one compares ``mod_revision == m`` on a key that ``ops``
        write or delete, with ``m > 0`` (revisions never repeat) or on a key
        that is never deleted once written (so it never reads as 0 again)."""
        written = {
            op.key for op in ops if isinstance(op, Put) or (isinstance(op, Delete) and op.range_end is None)
        }
        return any(
            c.range_end is None
            and c.target is Target.MOD
            and c.op is Op.EQUAL
            and c.key in written
            and (c.value != 0 or self.keys.never_deleted(c.key))
            for c in compares
        )

    async def _wrote(self, put: Put) -> bool:
        """Whether ``put``'s own value is in place: how an unknown outcome is verified.

        Not "the key exists": a link that was there before, made by an earlier
        upload, would pass for this one, and garbage collection would judge it
        by its old ``touched`` (the simulator's seed 9576)."""
        found = await self._get(put.key)
        return found is not None and found.value == put.value

    def _ensure_repo(self, repo: str) -> tuple[Compare, Put]:
        """The compare and write that create ``repo``'s record with a write that
        finds none: a repository exists from its first blob or manifest."""
        return Compare.missing(self.keys.repo(repo)), Put(
            self.keys.repo(repo), encode(RepoRecord(self.clock.now()))
        )

    async def _lease_for_uploads(self) -> int:
        """The current window's lease, shared by records that must expire on
        their own: upload sessions and manifest deletion markers."""
        window = int(self.clock.now() // self.upload_lease_window)
        async with self._upload_lease_lock:
            if self._upload_lease is None or self._upload_lease[0] != window:
                lease = await self.kv.grant_lease(self.upload_ttl + self.upload_lease_window)
                self._upload_lease = (window, lease)
            return self._upload_lease[1]
