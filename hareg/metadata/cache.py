"""An in-memory mirror of tags, manifests and blob links (and of the runtime
access grants and robot accounts), fed by the reflector.

The mirror is a snapshot of the store at ``revision``: the reflector
(reflector.py) lists the key ranges at one revision R, then follows the watch
from R+1; it re-lists after compaction (the mirror is not ``ready`` until the
listing is in) and resumes a broken watch from the last applied revision.

The cache alone gives reads that may lag the store by a watch delivery.  The
ReadBarrier (barrier.py) turns that into linearizable reads: it learns the
store's revision with one quorum read and waits until ``revision`` reaches it.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Any

from hareg.kv.base import Event, EventType, KeyValue
from hareg.metadata.keys import Keys
from hareg.metadata.records import (
    GrantRecord,
    LinkRecord,
    ManifestRecord,
    RobotRecord,
    TagRecord,
    decode,
)
from hareg.metadata.reflector import Reflector
from hareg.plants import planted

# The record type mirrored for each key kind; other kinds are not cached.
_KINDS: dict[str, type[Any]] = {
    "t": TagRecord,
    "m": ManifestRecord,
    "l": LinkRecord,
    "g": GrantRecord,
    "a": RobotRecord,
}
_ACCESS_KINDS = frozenset({"g", "a"})


class MetadataCache:
    def __init__(self, reflector: Reflector, keys: Keys) -> None:
        self.reflector = reflector
        self.keys = keys
        self.revision = 0  # every write up to this revision is reflected
        self.ready = False  # a full listing has been loaded
        self._data: dict[str, dict[bytes, Any]] = {kind: {} for kind in _KINDS}
        self._prefixes = {kind: keys.kind_prefix(kind) for kind in _KINDS}
        self.prefixes = tuple(self._prefixes.values())
        # repo -> its tag names in byte order (etcd's range order), for tag lists
        # without an etcd range that decodes every key.
        self._tag_names: dict[str, list[str]] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.relists = 0
        self.events_applied = 0
        # Bumped by every change of a grant or robot account: what was derived
        # from them (a replica's bindings) is valid while it stays the same.
        self.access_version = 0
        self._grants: tuple[int, tuple[GrantRecord, ...]] = (-1, ())
        reflector.subscribe(self)

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

    def grants(self) -> tuple[GrantRecord, ...]:
        """Every runtime grant (one tuple per version of them: not copied per request)."""
        version, grants = self._grants
        if version != self.access_version:
            grants = tuple(self._data["g"].values())
            self._grants = (self.access_version, grants)
        return grants

    def robot(self, name: str) -> RobotRecord | None:
        rec: RobotRecord | None = self._data["a"].get(self.keys.robot(name))
        return rec

    def tag_names(self, repo: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` (0: all) of ``repo``'s tags after ``last``, and whether more follow."""
        names = self._tag_names.get(repo, [])
        start = bisect.bisect_right(names, last) if last is not None else 0
        end = start + limit if limit else len(names)
        return names[start:end], end < len(names)

    @property
    def connected(self) -> bool:
        """The watch that feeds the cache is live."""
        return self.reflector.connected

    def request_progress(self) -> None:
        self.reflector.request_progress()

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
            if kind == "t" and key in data and planted("cache-keeps-moved-tag"):  # PLANTED BUG (tests only)
                return
            if kind == "t" and key not in data:
                self._index_tag(key, add=True)
            data[key] = decode(_KINDS[kind], event.kv.value)
        if kind in _ACCESS_KINDS:
            self.access_version += 1
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

    # --------------------------------------------- fed by the reflector

    def listing(self) -> _Listing:
        return _Listing(self)

    def reset(self, data: dict[str, dict[bytes, Any]], revision: int) -> None:
        """Serve ``data`` (records by kind and key), a listing as of ``revision``."""
        tag_names: dict[str, list[str]] = {}
        for key in data["t"]:  # listed in key order, so each repo's names come sorted
            repo, tag = self._repo_and_tag(key)
            tag_names.setdefault(repo, []).append(tag)
        self._data, self._tag_names = data, tag_names
        self.relists += 1
        self.access_version += 1
        # Set, not advanced: a listing is behind the mirror only if etcd was
        # restored from an older snapshot, and then the listing is the truth.
        self.revision = 0
        self._advance(revision)
        self.ready = True

    def apply(self, events: list[Event], revision: int) -> None:
        for event in events:
            self._apply(event)
        self._advance(revision)

    def lost(self) -> None:
        self.ready = False


class _Listing:
    """A listing for the cache, decoded page by page and served once complete."""

    def __init__(self, cache: MetadataCache) -> None:
        self.cache = cache
        self.data: dict[str, dict[bytes, Any]] = {kind: {} for kind in _KINDS}

    def add(self, kvs: list[KeyValue]) -> None:
        for kv in kvs:
            kind = self.cache._kind(kv.key)
            if kind is not None:
                self.data[kind][kv.key] = decode(_KINDS[kind], kv.value)

    def done(self, revision: int) -> None:
        self.cache.reset(self.data, revision)
