"""An in-memory mirror of what reads need from etcd, fed by the reflector:
which tag names which digest, which manifests and blob links exist, each
repository's tags in order, the runtime access grants and robot accounts;
and, bounded by bytes, the most recently used manifest records with their
bodies.

The mirror is a snapshot of the store at ``revision``: the reflector
(reflector.py) lists the key ranges at one revision R, then follows the watch
from R+1; it re-lists after compaction (the mirror is not ``ready`` until the
listing is in) and resumes a broken watch from the last applied revision.

The cache alone gives reads that may lag the store by a watch delivery.  The
ReadBarrier (barrier.py) turns that into linearizable reads: it learns the
store's revision with one quorum read and waits until ``revision`` reaches it.

Its memory grows with the registry's *names*, not with its manifests' bytes
(docs/scaling.md): repository names are held once each, digests as their raw
32 (or 64) bytes, a manifest as one int (media type, size, where its body is),
a link as 24 packed bytes, a tag as a reference to its manifest's digest.  A
manifest's full record (references, annotations, an inline body of up to the
inline limit) is kept in a least-recently-used set bounded by
``body_bytes``; a read that misses it reads the record from etcd *at the
revision the cache reflects*, so it is exactly what the cache would have
served (never older than the barrier's revision, never newer than the tag it
was reached by).  Records written through the watch enter the set (what was
just pushed is what is pulled next); a listing does not fill it.

A listing (start-up, or after the watch fell behind compaction) is built in
place while the cache is not ready (nothing reads it then: the barrier sends
reads to etcd), so a re-list holds one copy of the mirror, not two.
"""

from __future__ import annotations

import asyncio
import bisect
import struct
from collections import OrderedDict
from dataclasses import dataclass

from hareg.kv.base import Event, EventType, KeyValue, KVCompacted, KVError, KVUnavailable
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

# The key kinds mirrored (keys.py): tags, manifests, links, grants, robot accounts.
KINDS = ("t", "m", "l", "g", "a")

# What a manifest's record costs the body set beyond its encoded size (the
# decoded record's objects, the set's entry and key).
_RECORD_OVERHEAD = 400
DEFAULT_BODY_BYTES = 64 * 1024 * 1024  # config limits.manifestCacheBytes

_LINK = struct.Struct("<qdd")  # size, created, touched
_MEDIA_TYPES_MAX = 1 << 15  # distinct media types packed into a manifest's int (more: not packed)

PackedDigest = bytes | str  # raw bytes of a sha256/sha512 digest, or the digest text for anything else


def pack_digest(digest: str) -> PackedDigest:
    """``sha256:<hex>`` as its 32 raw bytes (sha512: 64), anything else as given."""
    algorithm, _, hexdigest = digest.partition(":")
    if (algorithm, len(hexdigest)) in (("sha256", 64), ("sha512", 128)):
        try:
            raw = bytes.fromhex(hexdigest)
        except ValueError:
            return digest
        if raw.hex() == hexdigest:  # lowercase only: it must read back as written
            return raw
    return digest


def unpack_digest(digest: PackedDigest) -> str:
    if isinstance(digest, str):
        return digest
    return ("sha256:" if len(digest) == 32 else "sha512:") + digest.hex()


class _Repo:
    """One repository's mirrored names."""

    __slots__ = ("links", "manifests", "name", "tag_names", "tags")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tags: dict[str, PackedDigest] = {}  # tag -> digest
        self.tag_names: list[str] = []  # in byte order (etcd's range order), for tag lists
        self.manifests: dict[PackedDigest, int] = {}  # digest -> packed (size, media type, body stored)
        self.links: dict[PackedDigest, bytes] = {}  # digest -> _LINK-packed LinkRecord

    def empty(self) -> bool:
        return not (self.tags or self.manifests or self.links)


@dataclass(slots=True)
class _Pending:
    """A record being read from etcd after a miss: still valid to keep once read
    unless the watch changed its key (or a listing replaced everything) meanwhile."""

    revision: int
    future: asyncio.Future[ManifestRecord | None]
    valid: bool = True
    task: asyncio.Task[None] | None = None  # the read (held: the loop keeps only a weak reference)


class MetadataCache:
    def __init__(self, reflector: Reflector, keys: Keys, *, body_bytes: int = DEFAULT_BODY_BYTES) -> None:
        self.reflector = reflector
        self.kv = reflector.kv  # where a miss of the body set is read
        self.keys = keys
        self.body_bytes = body_bytes  # the body set's bound (0: records are always read from etcd)
        self.revision = 0  # every write up to this revision is reflected
        self.ready = False  # a full listing has been loaded
        self._prefixes = {kind: keys.kind_prefix(kind) for kind in KINDS}
        self.prefixes = tuple(self._prefixes.values())
        self._repos: dict[str, _Repo] = {}
        self._grants: dict[bytes, GrantRecord] = {}
        self._robots: dict[bytes, RobotRecord] = {}
        self._media_types: dict[str, int] = {}
        self._media_type_names: list[str] = []
        # key -> (record, weight), least recently used first
        self._bodies: OrderedDict[bytes, tuple[ManifestRecord, int]] = OrderedDict()
        self.bodies_held = 0  # the weights of what _bodies holds
        self._pending: dict[bytes, _Pending] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.relists = 0
        self.events_applied = 0
        self.body_hits = 0
        self.body_misses = 0
        # Bumped by every change of a grant or robot account: what was derived
        # from them (a replica's bindings) is valid while it stays the same.
        self.access_version = 0
        self._grant_tuple: tuple[int, tuple[GrantRecord, ...]] = (-1, ())
        reflector.subscribe(self)

    # ------------------------------------------------------------------ reads

    def tag(self, repo: str, tag: str) -> str | None:
        """The digest ``tag`` names, None if there is no such tag."""
        r = self._repos.get(repo)
        digest = r.tags.get(tag) if r is not None else None
        return None if digest is None else unpack_digest(digest)

    async def manifest(self, repo: str, digest: str, *, etcd_down: bool = False) -> ManifestRecord | None:
        """The manifest's record as of ``revision`` (read when called: a tag read
        just before and this read are one snapshot), None if there is none.

        From the body set, or else from etcd at ``revision`` (one read shared by
        concurrent misses); raises what the read raises (KVCompacted if etcd no
        longer has that revision, KVError while it is unreachable) except for a
        manifest whose body is in the blob store: without etcd its record is
        rebuilt from what the mirror keeps (type and size, which is what a pull
        needs; its references stay unknown).  ``etcd_down``: etcd is known
        unreachable, so a miss does not wait on it (KVUnavailable at once)."""
        r = self._repos.get(repo)
        packed = r.manifests.get(pack_digest(digest)) if r is not None else None
        if packed is None:
            return None
        key = self.keys.manifest(repo, digest)
        held = self._bodies.get(key)
        if held is not None:
            self._bodies.move_to_end(key)
            self.body_hits += 1
            return held[0]
        self.body_misses += 1
        if etcd_down:
            return self._offline(packed)
        pending = self._pending.get(key)
        if pending is None or pending.revision != self.revision:
            pending = self._read_record(key, self.revision)
        try:
            return await asyncio.shield(pending.future)
        except KVCompacted:
            raise
        except KVError:
            return self._offline(packed)

    def _offline(self, packed: int) -> ManifestRecord:
        """A missed record while etcd cannot be read: what a pull of a manifest
        whose body is in the blob store needs, else KVUnavailable."""
        media_type = self._media_type_of(packed)
        if packed & 1 and media_type is not None:
            return ManifestRecord(media_type=media_type, size=packed >> 17, created=0.0)
        raise KVUnavailable("etcd is unreachable and the manifest is not in the cache's body set")

    def _read_record(self, key: bytes, revision: int) -> _Pending:
        pending = _Pending(revision, asyncio.get_running_loop().create_future())
        self._pending[key] = pending

        async def read() -> None:
            try:
                found = await self.kv.range(key, key + b"\x00", revision=revision)
            except asyncio.CancelledError:
                pending.future.cancel()
                raise
            except Exception as exc:
                pending.future.set_exception(exc)
                pending.future.exception()  # retrieved: every waiter may have gone
            else:
                record = decode(ManifestRecord, found.kvs[0].value) if found.kvs else None
                if record is not None and pending.valid:
                    self._keep(key, record, len(found.kvs[0].value))
                pending.future.set_result(record)
            finally:
                if self._pending.get(key) is pending:
                    del self._pending[key]

        pending.task = asyncio.get_running_loop().create_task(read())
        return pending

    def link(self, repo: str, digest: str) -> LinkRecord | None:
        r = self._repos.get(repo)
        packed = r.links.get(pack_digest(digest)) if r is not None else None
        return None if packed is None else LinkRecord(*_LINK.unpack(packed))

    def grants(self) -> tuple[GrantRecord, ...]:
        """Every runtime grant (one tuple per version of them: not copied per request)."""
        version, grants = self._grant_tuple
        if version != self.access_version:
            grants = tuple(self._grants.values())
            self._grant_tuple = (self.access_version, grants)
        return grants

    def robot(self, name: str) -> RobotRecord | None:
        return self._robots.get(self.keys.robot(name))

    def tag_names(self, repo: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` (0: all) of ``repo``'s tags after ``last``, and whether more follow."""
        r = self._repos.get(repo)
        names = r.tag_names if r is not None else []
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
        """Entries by key kind (and ``body``: manifest records held in full)."""
        repos = self._repos.values()
        return {
            "t": sum(len(r.tags) for r in repos),
            "m": sum(len(r.manifests) for r in repos),
            "l": sum(len(r.links) for r in repos),
            "g": len(self._grants),
            "a": len(self._robots),
            "body": len(self._bodies),
        }

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

    # ------------------------------------------------------------ the body set

    def _keep(self, key: bytes, record: ManifestRecord, encoded: int) -> None:
        weight = encoded + _RECORD_OVERHEAD
        old = self._bodies.pop(key, None)
        if old is not None:
            self.bodies_held -= old[1]
        if weight > self.body_bytes:
            return
        self._bodies[key] = (record, weight)
        self.bodies_held += weight
        while self.bodies_held > self.body_bytes:
            _, (_, evicted) = self._bodies.popitem(last=False)
            self.bodies_held -= evicted

    def _forget(self, key: bytes) -> None:
        old = self._bodies.pop(key, None)
        if old is not None:
            self.bodies_held -= old[1]
        pending = self._pending.get(key)
        if pending is not None:
            pending.valid = False

    def _media_type_index(self, media_type: str) -> int | None:
        index = self._media_types.get(media_type)
        if index is None and len(self._media_type_names) < _MEDIA_TYPES_MAX:
            index = self._media_types[media_type] = len(self._media_type_names)
            self._media_type_names.append(media_type)
        return index

    def _media_type_of(self, packed: int) -> str | None:
        index = (packed >> 1) & 0xFFFF
        return self._media_type_names[index - 1] if index else None

    def _pack_manifest(self, media_type: str, size: int, stored: bool) -> int:
        """size << 17 | (media type index + 1, 0: not packed) << 1 | body in the blob store."""
        index = self._media_type_index(media_type)
        return size << 17 | (0 if index is None else index + 1) << 1 | stored

    # ---------------------------------------------------------------- feeding

    def _kind(self, key: bytes) -> str | None:
        for kind, prefix in self._prefixes.items():
            if key.startswith(prefix):
                return kind
        return None

    def _split(self, kind: str, key: bytes) -> tuple[_Repo | None, str, str]:
        """The repository (None if not mirrored yet), its name and the key's last part."""
        repo, _, last = key[len(self._prefixes[kind]) :].decode().rpartition("@")
        return self._repos.get(repo), repo, last

    def _repo(self, r: _Repo | None, name: str) -> _Repo:
        if r is None:
            r = self._repos[name] = _Repo(name)
        return r

    def _put(self, kind: str, kv: KeyValue, *, watched: bool) -> None:
        key = kv.key
        if kind == "g":
            self._grants[key] = decode(GrantRecord, kv.value)
            return
        if kind == "a":
            self._robots[key] = decode(RobotRecord, kv.value)
            return
        r, name, last = self._split(kind, key)
        if kind == "t":
            if (
                r is not None and last in r.tags and planted("cache-keeps-moved-tag")
            ):  # PLANTED BUG (tests only)
                return
            r = self._repo(r, name)
            digest = pack_digest(decode(TagRecord, kv.value).digest)
            if last not in r.tags:
                bisect.insort(r.tag_names, last)
            r.tags[last] = digest
        elif kind == "m":
            r = self._repo(r, name)
            record = decode(ManifestRecord, kv.value)
            r.manifests[pack_digest(last)] = self._pack_manifest(
                record.media_type, record.size, record.body is None
            )
            self._forget(key)
            if watched:  # a manifest just pushed: likely pulled next
                self._keep(key, record, len(kv.value))
        else:  # "l"
            r = self._repo(r, name)
            link = decode(LinkRecord, kv.value)
            r.links[pack_digest(last)] = _LINK.pack(link.size, link.created, link.touched)

    def _delete(self, kind: str, key: bytes) -> None:
        if kind == "g":
            self._grants.pop(key, None)
            return
        if kind == "a":
            self._robots.pop(key, None)
            return
        r, _, last = self._split(kind, key)
        if kind == "m":
            self._forget(key)
        if r is None:
            return
        if kind == "t":
            if planted("cache-keeps-deleted-tag"):  # PLANTED BUG (simulator only)
                return
            if r.tags.pop(last, None) is not None:
                i = bisect.bisect_left(r.tag_names, last)
                if i < len(r.tag_names) and r.tag_names[i] == last:
                    del r.tag_names[i]
        elif kind == "m":
            r.manifests.pop(pack_digest(last), None)
        else:
            r.links.pop(pack_digest(last), None)
        if r.empty():
            del self._repos[r.name]

    def _apply(self, event: Event) -> None:
        kind = self._kind(event.kv.key)
        if kind is None:
            return
        if event.type is EventType.DELETE:
            self._delete(kind, event.kv.key)
        else:
            self._put(kind, event.kv, watched=True)
        if kind in ("g", "a"):
            self.access_version += 1
        self.events_applied += 1

    # --------------------------------------------- fed by the reflector

    def listing(self) -> _Listing:
        """A listing built in place: the mirror is emptied and not served (not
        ``ready``) until the listing is done, so it is never held twice."""
        self.ready = False
        self._repos = {}
        self._grants = {}
        self._robots = {}
        self._bodies.clear()
        self.bodies_held = 0
        for pending in self._pending.values():
            pending.valid = False
        self.access_version += 1
        return _Listing(self)

    def listed(self, revision: int) -> None:
        """Every key of a listing as of ``revision`` is in: serve it."""
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
    """A listing for the cache: each page goes straight into the (unserved) mirror."""

    def __init__(self, cache: MetadataCache) -> None:
        self.cache = cache

    def add(self, kvs: list[KeyValue]) -> None:
        cache = self.cache
        for kv in kvs:
            kind = cache._kind(kv.key)
            if kind is not None:
                cache._put(kind, kv, watched=False)

    def done(self, revision: int) -> None:
        self.cache.listed(revision)
