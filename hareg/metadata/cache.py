"""An in-memory mirror of tags, manifests and blob links, fed by one etcd watch.

The mirror is a snapshot of the store at ``revision``: it is built by paging
through the key ranges at one revision R, then kept current by a watch over
the whole prefix from R+1.  A watch that falls behind compaction re-lists; a
watch that disconnects resumes from the last applied revision (no gap).

The cache alone gives reads that may lag the store by a watch delivery.  The
ReadBarrier (barrier.py) turns that into linearizable reads: it learns the
store's revision with one quorum read and waits until ``revision`` reaches it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from typing import Any

from hareg.clock import Clock
from hareg.kv.base import KV, Event, EventType, KVCompacted, KVError, prefix_end
from hareg.metadata.keys import Keys
from hareg.metadata.records import LinkRecord, ManifestRecord, TagRecord, decode
from hareg.plants import planted

log = logging.getLogger("hareg.cache")

_PAGE = 1000
# The record type mirrored for each key kind; other kinds are not cached.
_KINDS: dict[str, type[Any]] = {"t": TagRecord, "m": ManifestRecord, "l": LinkRecord}


class MetadataCache:
    def __init__(self, kv: KV, keys: Keys, clock: Clock, *, retry_delay: float = 0.5) -> None:
        self.kv = kv
        self.keys = keys
        self.clock = clock
        self.retry_delay = retry_delay
        self.revision = 0  # every write up to this revision is reflected
        self.ready = False  # a full listing has been loaded
        self.connected = False  # the watch stream is live
        self._data: dict[str, dict[bytes, Any]] = {kind: {} for kind in _KINDS}
        self._prefixes = {kind: keys.kind_prefix(kind) for kind in _KINDS}
        # repo -> its tag names in byte order (etcd's range order), for tag lists
        # without an etcd range that decodes every key.
        self._tag_names: dict[str, list[str]] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.relists = 0
        self.events_applied = 0

    # ------------------------------------------------------------------ reads

    def tag(self, repo: str, tag: str) -> TagRecord | None:
        rec: TagRecord | None = self._data["t"].get(self.keys.tag(repo, tag))
        return rec

    def manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        rec: ManifestRecord | None = self._data["m"].get(self.keys.manifest(repo, digest))
        return rec

    def link(self, repo: str, digest: str) -> LinkRecord | None:
        rec: LinkRecord | None = self._data["l"].get(self.keys.link(repo, digest))
        return rec

    def tag_names(self, repo: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` (0: all) of ``repo``'s tags after ``last``, and whether more follow."""
        names = self._tag_names.get(repo, [])
        start = bisect.bisect_right(names, last) if last is not None else 0
        end = start + limit if limit else len(names)
        return names[start:end], end < len(names)

    def request_progress(self) -> None:
        if self.connected:
            self.kv.request_watch_progress()

    def size(self) -> dict[str, int]:
        return {kind: len(d) for kind, d in self._data.items()}

    # ---------------------------------------------------------------- waiting

    async def wait_for(self, revision: int) -> None:
        """Return once every write up to ``revision`` is reflected (the caller bounds the wait)."""
        if self.revision >= revision:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, fut))
        try:
            await fut
        finally:
            if not fut.done():
                fut.cancel()
            self._waiters = [(r, f) for r, f in self._waiters if f is not fut]

    def _advance(self, revision: int) -> None:
        if revision <= self.revision:
            return
        self.revision = revision
        if not self._waiters:
            return
        keep = []
        for rev, fut in self._waiters:
            if rev <= revision:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((rev, fut))
        self._waiters = keep

    # ---------------------------------------------------------------- feeding

    def _kind(self, key: bytes) -> str | None:
        for kind, prefix in self._prefixes.items():
            if key.startswith(prefix):
                return kind
        return None

    def _apply(self, event: Event) -> None:
        kind = self._kind(event.kv.key)
        if kind is None:
            return
        key, data = event.kv.key, self._data[kind]
        if event.type is EventType.DELETE:
            if kind == "t" and planted("cache-keeps-deleted-tag"):  # PLANTED BUG (simulator only)
                return
            if data.pop(key, None) is not None and kind == "t":
                self._index_tag(key, add=False)
        else:
            if kind == "t" and key not in data:
                self._index_tag(key, add=True)
            data[key] = decode(_KINDS[kind], event.kv.value)
        self.events_applied += 1

    def _repo_and_tag(self, key: bytes) -> tuple[str, str]:
        repo, _, tag = self.keys.strip("t", key).rpartition("@")
        return repo, tag

    def _index_tag(self, key: bytes, *, add: bool) -> None:
        repo, tag = self._repo_and_tag(key)
        names = self._tag_names.setdefault(repo, [])
        i = bisect.bisect_left(names, tag)
        if add:
            names.insert(i, tag)
        elif i < len(names) and names[i] == tag:
            del names[i]
            if not names:
                del self._tag_names[repo]

    async def _list(self) -> int:
        """Load every cached range at one revision; returns that revision."""
        revision = 0
        fresh: dict[str, dict[bytes, Any]] = {}
        for kind, prefix in self._prefixes.items():
            records: dict[bytes, Any] = {}
            start, end = prefix, prefix_end(prefix)
            while True:
                page = await self.kv.range(start, end, limit=_PAGE, revision=revision)
                revision = revision or page.revision
                for kv in page.kvs:
                    records[kv.key] = decode(_KINDS[kind], kv.value)
                if not page.more or not page.kvs:
                    break
                start = page.kvs[-1].key + b"\x00"
            fresh[kind] = records
        tag_names: dict[str, list[str]] = {}
        for key in fresh["t"]:  # listed in key order, so each repo's names come sorted
            repo, tag = self._repo_and_tag(key)
            tag_names.setdefault(repo, []).append(tag)
        self._data, self._tag_names = fresh, tag_names
        self.relists += 1
        return revision

    async def run(self) -> None:
        """List, then follow the watch, forever (cancel the task to stop)."""
        root = self.keys.root + b"/"
        # A restarted task keeps its snapshot and resumes after it (re-listing only
        # if that history has been compacted away).
        resume = self.revision + 1 if self.ready else 0
        while True:
            try:
                if resume == 0:
                    listed = await self._list()
                    # A relist may move revision backwards only if etcd was restored from
                    # an older snapshot; then start over from what it says now.
                    self.revision = listed
                    self._advance(listed)
                    self.ready = True
                    resume = listed + 1
                watch = self.kv.watch(root, prefix_end(root), resume)
                self.connected = True
                async for batch in watch:
                    for event in batch.events:
                        self._apply(event)
                    self._advance(batch.revision)
                    resume = self.revision + 1
            except KVCompacted as exc:
                self.ready = False
                log.warning(
                    "watch fell behind compaction; re-listing", extra={"fields": {"at": exc.compact_revision}}
                )
                resume = 0
            except KVError as exc:
                log.warning("metadata watch interrupted: %s", exc)
            finally:
                self.connected = False
            await self.clock.sleep(self.retry_delay)
