"""One list-and-watch loop over the metadata prefix, for every in-memory mirror.

A replica keeps mirrors of parts of etcd in memory: the metadata cache
(tags, manifests, links: cache.py) and the cluster settings (the read-only
switch: hareg/registry/settings.py).  Each is a *subscriber* that names the
key prefixes it mirrors.  The reflector (the name is client-go's, whose
Reflector does the same for Kubernetes' informers) lists every subscriber's
prefixes at one revision R, hands each its keys, then watches from R+1 the
smallest range that covers them all (one watch per replica, whatever the
number of mirrors) and hands every batch to every subscriber, in order,
filtered to its prefixes.  A subscriber is therefore always a snapshot of
etcd at the revision it was last handed.

That range is the registry's whole prefix: the keys no mirror reads (upload
sessions, history, markers) are delivered and dropped unread.  A narrower
watch would miss the writes to them, and every such write moves etcd's
revision past the cache's until etcd reports the watch's progress: on demand
only from etcd 3.4.31 and 3.5.13 on (kv/etcd.py), else every
``--experimental-watch-progress-notify-interval``, which every read after
an upload's write would wait for (docs/consistency.md).

A watch that falls behind compaction cannot be resumed: the subscribers are
told their history is lost, then everything is listed again.  A watch that
breaks (etcd unreachable, leader change) resumes from the last delivered
revision: no gap, no repeat.  Retries wait ``retry_delay`` on the injected
clock, so the simulator runs this loop on virtual time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from hareg.clock import Clock
from hareg.kv.base import KV, Event, KeyValue, KVCompacted, KVError, prefix_end

log = logging.getLogger("hareg.reflector")

_PAGE = 1000  # keys per range read of a listing


class Listing(Protocol):
    """A listing being taken for one subscriber, not served until ``done`` (a
    listing that fails midway is dropped, or, built in place, left unserved
    until the next listing replaces it)."""

    def add(self, kvs: list[KeyValue]) -> None:
        """The next page of keys under the subscriber's prefixes, in key order."""
        ...

    def done(self, revision: int) -> None:
        """Every key is in, as of ``revision``: replace what the subscriber holds."""
        ...


class Subscriber(Protocol):
    """A mirror fed by the reflector.  Its methods run on the loop, between
    awaits: a subscriber sees each batch whole and a listing only once done."""

    @property
    def prefixes(self) -> tuple[bytes, ...]:
        """The key prefixes it mirrors (fixed for its lifetime)."""
        ...

    def listing(self) -> Listing:
        """Start taking a new listing of its prefixes."""
        ...

    def apply(self, events: list[Event], revision: int) -> None:
        """The watch events under its prefixes, in order; with them it reflects
        every write up to ``revision`` (``events`` may be empty: progress)."""
        ...

    def lost(self) -> None:
        """History since its revision was compacted away: a listing follows."""
        ...


def _common_prefix(prefixes: Sequence[bytes]) -> bytes:
    first, last = min(prefixes), max(prefixes)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


class Reflector:
    def __init__(self, kv: KV, clock: Clock, *, retry_delay: float = 0.5, page: int = _PAGE) -> None:
        self.kv = kv
        self.clock = clock
        self.retry_delay = retry_delay
        self.page = page  # keys per range read of a listing
        self.revision = 0  # every subscriber reflects every write up to this revision
        self.listed = False  # a full listing was handed over (the watch may resume after it)
        self.connected = False  # the watch stream is live
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Feed ``subscriber`` from the next listing on (subscribe before ``run``)."""
        if self.listed:
            raise RuntimeError("subscribe before the reflector lists: a late subscriber would miss history")
        self._subscribers.append(subscriber)

    def request_progress(self) -> None:
        """Ask etcd to report the watch's revision now (see KV.request_watch_progress)."""
        if self.connected:
            self.kv.request_watch_progress()

    async def read(self, subscribers: Sequence[Subscriber] | None = None) -> int:
        """List the prefixes of ``subscribers`` (default: all) at one revision
        and hand each its keys; returns that revision.  ``run`` lists with it;
        a subscriber may read itself once before ``run`` starts (the settings,
        before a replica serves)."""
        subscribers = self._subscribers if subscribers is None else subscribers
        revision = 0
        # Pages go to the subscribers as they come (a cache decodes them, the
        # raw pages do not pile up); what they serve changes only once every
        # listing is complete, so none is left half-replaced by a failure
        # (the metadata cache builds its listing in place, unserved until done).
        listings = [subscriber.listing() for subscriber in subscribers]
        for subscriber, listing in zip(subscribers, listings, strict=True):
            for prefix in subscriber.prefixes:
                start, end = prefix, prefix_end(prefix)
                while True:
                    page = await self.kv.range(start, end, limit=self.page, revision=revision)
                    revision = revision or page.revision
                    listing.add(page.kvs)
                    if not page.more or not page.kvs:
                        break
                    start = page.kvs[-1].key + b"\x00"
        for listing in listings:
            listing.done(revision)
        return revision

    async def run(self) -> None:
        """List, then follow the watch, forever (cancel the task to stop)."""
        if not self._subscribers:
            return
        root = _common_prefix([p for s in self._subscribers for p in s.prefixes])
        # A restarted task keeps its snapshot and resumes after it (re-listing
        # only if that history has been compacted away).
        resume = self.revision + 1 if self.listed else 0
        while True:
            try:
                if resume == 0:
                    # A listing may move the revision backwards only if etcd was
                    # restored from an older snapshot; then start over from it.
                    self.revision = await self.read()
                    self.listed = True
                    resume = self.revision + 1
                watch = self.kv.watch(root, prefix_end(root), resume)
                self.connected = True
                async for batch in watch:
                    for subscriber in self._subscribers:
                        mine = [e for e in batch.events if e.kv.key.startswith(subscriber.prefixes)]
                        subscriber.apply(mine, batch.revision)
                    self.revision = max(self.revision, batch.revision)
                    resume = self.revision + 1
            except KVCompacted as exc:
                log.warning(
                    "watch fell behind compaction; re-listing", extra={"fields": {"at": exc.compact_revision}}
                )
                self.listed = False
                for subscriber in self._subscribers:
                    subscriber.lost()
                resume = 0
            except KVError as exc:
                log.warning("metadata watch interrupted: %s", exc)
            finally:
                self.connected = False
            await self.clock.sleep(self.retry_delay)
