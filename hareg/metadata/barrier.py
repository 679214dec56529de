"""Linearizable reads from the watch-fed cache (the shape of Kubernetes' KEP-2340).

To read consistently, a request needs the cache to reflect every write that
was acknowledged before the request arrived.  It gets the store's current
revision R with one quorum read, then waits until the cache has applied R.

Quorum reads are shared: a request joins the next revision read that *starts
after it arrived* (a read that started earlier might have been served before
a write the request must see).  So at most two reads are outstanding — the
one in flight and the one that collects the requests arriving meanwhile — and
one etcd round trip serves any number of concurrent requests.

When etcd cannot answer (quorum loss, or an election), ``sync`` reports the
store as unavailable instead of raising, and callers serve what the cache
has: stale but never wrong for content-addressed data.  While the store is
unavailable no read waits on it again: a background probe reads the revision
every ``probe_interval`` and clears the state at its first answer, so pulls
stay fast and return to normal within ``probe_interval`` of etcd's recovery.
The probe waits for its answer as long as the etcd client allows (its own
deadline), not ``revision_timeout``: an etcd that is slow (fsync stalled on a
busy disk) rather than down answers it, which ends the outage before the
write grace below runs out.

Writes ride out an election: one that etcd refused unapplied (no leader, no
member reachable) waits in ``wait_writable`` for the probe's first answer and
is sent again, for at most ``write_grace`` from the outage's start (an etcd
election takes one to two election timeouts, 1 s each by default).  An
outage that lasts longer is a quorum loss: writes fail fast from then on
(``writes_blocked``) until the probe sees etcd again.

Within one request a sync can be *lent* to the request's next read
(``request_scope`` and ``lend``): the access check syncs before the handler
runs, and the handler's first read needs no second round trip, since a
sync that started after the request arrived is all linearizability asks.
A write in between takes the loan back (the request must read its own write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from contextvars import ContextVar
from enum import Enum

from hareg.clock import Clock
from hareg.kv.base import KV, KVError
from hareg.metadata.cache import MetadataCache

log = logging.getLogger("hareg.barrier")


class Freshness(Enum):
    CURRENT = "current"  # the cache reflects every write acknowledged before the call
    STALE = "stale"  # etcd is unreachable; the cache is as of its last update
    UNCACHED = "uncached"  # the cache is not loaded or fell behind: read etcd directly


class _Scope:
    """One request's loan: a CURRENT sync its next read may use."""

    __slots__ = ("lent",)

    def __init__(self) -> None:
        self.lent = False


class _RequestScope:
    """``ReadBarrier.request_scope``: a class, not a generator (entered once per request)."""

    __slots__ = ("_token", "_var")

    def __init__(self, var: ContextVar[_Scope | None]) -> None:
        self._var = var

    def __enter__(self) -> None:
        self._token = self._var.set(_Scope())

    def __exit__(self, *exc: object) -> None:
        self._var.reset(self._token)


class ReadBarrier:
    def __init__(
        self,
        kv: KV,
        cache: MetadataCache,
        clock: Clock,
        *,
        revision_timeout: float = 1.0,
        catch_up_timeout: float = 0.5,
        probe_interval: float = 0.25,
        write_grace: float = 2.0,
    ) -> None:
        self.kv = kv
        self.cache = cache
        self.clock = clock
        self.revision_timeout = revision_timeout
        self.catch_up_timeout = catch_up_timeout
        self.probe_interval = probe_interval
        self.write_grace = write_grace
        self._in_flight: asyncio.Future[int] | None = None
        self._next: asyncio.Future[int] | None = None
        self._unavailable_since: float | None = None  # last seen unavailable (None: available)
        self._outage_started: float | None = None  # first seen unavailable, this outage
        self._prober: asyncio.Task[None] | None = None
        self.revision_reads = 0
        # How each sync() ended: CURRENT/STALE are cache hits, UNCACHED a miss (read etcd).
        self.results: Counter[Freshness] = Counter()
        # Per request (a context variable: each request runs in its own
        # context); None outside a request_scope: nothing is ever lent.
        self._scope: ContextVar[_Scope | None] = ContextVar(f"read-barrier-{id(self)}", default=None)

    @property
    def store_available(self) -> bool:
        return self._unavailable_since is None

    def writes_blocked(self) -> bool:
        """True once etcd has been seen unavailable for ``write_grace`` or more
        (until the background probe's first answer): longer than an election,
        so writes fail fast instead of waiting for a timeout."""
        started = self._outage_started
        return started is not None and self.clock.monotonic() - started >= self.write_grace

    def note_unavailable(self) -> None:
        """etcd did not answer a revision read: serve reads from the cache
        and probe in the background until it answers."""
        now = self.clock.monotonic()
        if self._unavailable_since is None:
            log.warning("etcd unavailable: serving reads from the cache; writes wait for it up to the grace")
            self._outage_started = now
        self._unavailable_since = now
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe())

    async def wait_writable(self) -> bool:
        """A write was refused unapplied (no leader, no member reachable):
        True once etcd answers again within ``write_grace`` of the outage's
        start (the write may be sent again), False when the outage has lasted
        longer (a quorum loss: the write fails)."""
        if self._unavailable_since is None:
            # The write's refusal may be the first sign of the outage.
            try:
                await self.current_revision()
            except KVError:
                self.note_unavailable()
            else:
                return True
        while self._unavailable_since is not None:
            assert self._outage_started is not None
            left = self._outage_started + self.write_grace - self.clock.monotonic()
            if left <= 0:
                return False
            await self.clock.sleep(min(self.probe_interval, left))
        return True

    async def _probe(self) -> None:
        """Read the revision every ``probe_interval`` until etcd answers."""
        while self._unavailable_since is not None:
            await self.clock.sleep(self.probe_interval)
            self.revision_reads += 1
            try:
                await self.kv.current_revision()
            except KVError:
                self._unavailable_since = self.clock.monotonic()
                continue
            log.info("etcd available again")
            self._unavailable_since = self._outage_started = None

    async def close(self) -> None:
        """Stop the background probe (the registry is stopping)."""
        prober, self._prober = self._prober, None
        if prober is not None and not prober.done():
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prober

    def _start_round(self, fut: asyncio.Future[int]) -> None:
        self._in_flight = fut
        asyncio.get_running_loop().create_task(self._round(fut))

    async def _round(self, fut: asyncio.Future[int]) -> None:
        self.revision_reads += 1
        try:
            async with asyncio.timeout(self.revision_timeout):
                revision = await self.kv.current_revision()
        except (KVError, TimeoutError) as exc:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, KVError) else KVError("revision read timed out"))
            fut.exception()  # mark retrieved: waiters may all have gone
        else:
            if not fut.done():
                fut.set_result(revision)
        finally:
            self._in_flight = None
            if self._next is not None:
                nxt, self._next = self._next, None
                self._start_round(nxt)

    async def current_revision(self) -> int:
        """A store revision read that started after this call (shared with concurrent callers)."""
        loop = asyncio.get_running_loop()
        if self._next is not None:
            fut = self._next
        elif self._in_flight is None:
            fut = loop.create_future()
            self._start_round(fut)
        else:
            fut = self._next = loop.create_future()
        return await asyncio.shield(fut)

    async def sync(self) -> Freshness:
        scope = self._scope.get()
        if scope is not None and scope.lent and self.cache.ready:
            scope.lent = False
            result = Freshness.CURRENT
        else:
            result = await self._sync()
        self.results[result] += 1
        return result

    def request_scope(self) -> contextlib.AbstractContextManager[None]:
        """One request: a sync lent inside it serves only this request."""
        return _RequestScope(self._scope)

    def lend(self) -> None:
        """The sync just passed (CURRENT) serves this request's next read too."""
        scope = self._scope.get()
        if scope is not None:
            scope.lent = True

    def take_back(self) -> None:
        """A write of this request: its later reads must sync anew."""
        scope = self._scope.get()
        if scope is not None:
            scope.lent = False

    async def _sync(self) -> Freshness:
        if self._current_if_ready() is Freshness.UNCACHED:
            return Freshness.UNCACHED
        if self._unavailable_since is not None:  # etcd is seen down: the probe, not this request, waits on it
            return Freshness.STALE
        # After each await the cache may have started a new listing, which it
        # builds in place (cache.py): then it holds nothing to serve.
        try:
            revision = await self.current_revision()
        except KVError:
            self.note_unavailable()
            return Freshness.STALE if self.cache.ready else Freshness.UNCACHED
        if self._current_if_ready() is Freshness.UNCACHED:
            return Freshness.UNCACHED
        if self.cache.revision >= revision:
            return Freshness.CURRENT
        self.cache.request_progress()
        try:
            async with asyncio.timeout(self.catch_up_timeout):
                await self.cache.wait_for(revision)
        except TimeoutError:
            return Freshness.UNCACHED
        return self._current_if_ready()

    def _current_if_ready(self) -> Freshness:
        return Freshness.CURRENT if self.cache.ready else Freshness.UNCACHED
