"""The integrity check of the blob store (``hareg fsck``).

Reads every object stored in the blob store — blobs, and the bodies of
manifests too large to keep inline — one at a time and streamed, re-hashes
it and reports each one whose bytes do not hash to the digest it is stored
under (invariant 3 of docs/invariants.md).

With ``repair`` a damaged object is quarantined, so that pulls fail loudly
(BLOB_UNKNOWN, MANIFEST_UNKNOWN) instead of serving wrong bytes, and the
next honest push of the same digest stores it anew.  Quarantine follows the
garbage collector's protocol (docs/gc.md), each step fenced by the pruner's
leadership:

1. claim the blob record (state "deleting", guarded by its mod_revision; a
   record is created in that state if there is none): from then on no
   upload, mount or manifest push can make new use of the digest (they are
   refused with a 503 and retry);
2. hash the bytes again: an honest push may have replaced them with correct
   bytes since the first read — then the claim is released and nothing is
   removed;
3. remove every repository's link to the digest (a "layer already exists"
   HEAD then says 404, so clients upload it again), then the bytes, then the
   record.

A record already "deleting" belongs to the garbage collector and is left to
it.  The caller serializes quarantines with garbage collection
(``exclusive``) and runs one check at a time per replica.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hareg.clock import Clock
from hareg.kv.base import Compare
from hareg.metadata.gc import GcStore
from hareg.metadata.records import BlobRecord
from hareg.registry.digests import new_hasher
from hareg.registry.hashing import Hashing, InlineHashing, feed
from hareg.storage.base import BlobNotFound, BlobStore

log = logging.getLogger("hareg.fsck")

# A report lists at most this many damaged objects (each one is also logged);
# beyond it they are only counted, so a thoroughly damaged store cannot make a
# report (or its JSON answer) grow without bound.
MAX_LISTED = 10_000


class FsckBusy(Exception):
    """A check is already running on this replica."""

    def __init__(self, started: float, checked: int) -> None:
        super().__init__(
            f"an integrity check is already running on this replica ({checked} objects checked so far); "
            "wait for it to finish"
        )
        self.started = started
        self.checked = checked


@dataclass(frozen=True, slots=True)
class Finding:
    digest: str
    reason: str
    quarantined: bool = False
    note: str | None = None  # why a repair left it (changed meanwhile, being collected ...)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"digest": self.digest, "reason": self.reason, "quarantined": self.quarantined}
        if self.note:
            doc["note"] = self.note
        return doc


@dataclass
class FsckReport:
    repair: bool
    started: float
    finished: float | None = None
    checked: int = 0
    bytes: int = 0
    corrupt: list[Finding] = field(default_factory=list)  # the first MAX_LISTED
    corrupt_total: int = 0
    quarantined_total: int = 0

    @property
    def unrepaired(self) -> int:
        return self.corrupt_total - self.quarantined_total

    def add(self, finding: Finding) -> None:
        self.corrupt_total += 1
        self.quarantined_total += finding.quarantined
        if len(self.corrupt) < MAX_LISTED:
            self.corrupt.append(finding)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "corrupt": [f.to_json() for f in self.corrupt],
            "counts": {"corrupt": self.corrupt_total, "quarantined": self.quarantined_total},
            "truncated": self.corrupt_total > len(self.corrupt),
            "repair": self.repair,
            "bytes": self.bytes,
            "started": self.started,
            "finished": self.finished,
        }


@dataclass(frozen=True, slots=True)
class _Hashed:
    size: int
    actual: str | None  # the digest the bytes hash to; None: no such object


class IntegrityChecker:
    def __init__(
        self,
        gc_store: GcStore,
        store: BlobStore,
        clock: Clock,
        *,
        hashing: Hashing | None = None,
    ) -> None:
        self.gc_store = gc_store
        self.store = store
        self.clock = clock
        self.hashing: Hashing = hashing or InlineHashing()
        self.last_report: FsckReport | None = None
        self._current: FsckReport | None = None

    @property
    def running(self) -> bool:
        return self._current is not None

    async def _hash(self, digest: str) -> _Hashed:
        """Stream the stored object through a hasher of its algorithm."""
        hasher = new_hasher(digest.split(":", 1)[0])
        size = 0
        try:
            async for chunk in self.store.read(digest):
                size += len(chunk)
                await feed(self.hashing, hasher, chunk)
        except BlobNotFound:
            return _Hashed(size, None)
        return _Hashed(size, f"{hasher.name}:{hasher.hexdigest()}")

    async def run(
        self,
        *,
        repair: bool = False,
        fence: Sequence[Compare] = (),
        exclusive: contextlib.AbstractAsyncContextManager[Any] | None = None,
    ) -> FsckReport:
        """Check every stored object; with ``repair`` quarantine the damaged ones,
        each under ``exclusive`` (the pruner's lock: never beside a garbage collection)
        and with ``fence`` in every etcd write.  Raises FsckBusy if a check is
        already running here; StorageError and KVError end the run."""
        if self._current is not None:
            raise FsckBusy(self._current.started, self._current.checked)
        report = self._current = FsckReport(repair, self.clock.now())
        try:
            async for digest in self.store.list_blobs():
                hashed = await self._hash(digest)
                if hashed.actual is None:
                    continue  # collected since it was listed
                report.checked += 1
                report.bytes += hashed.size
                if hashed.actual == digest:
                    continue
                reason = f"its {hashed.size} bytes hash to {hashed.actual}"
                log.error(
                    "integrity check: stored bytes do not match their digest",
                    extra={"fields": {"digest": digest, "size": hashed.size, "actual": hashed.actual}},
                )
                finding: Finding | None = Finding(digest, reason)
                if repair:
                    async with exclusive or contextlib.nullcontext():
                        finding = await self._quarantine(digest, reason, fence)
                if finding is not None:
                    report.add(finding)
            report.finished = self.clock.now()
            self.last_report = report
            log.info(
                "integrity check finished",
                extra={
                    "fields": {
                        "checked": report.checked,
                        "corrupt": report.corrupt_total,
                        "unrepaired": report.unrepaired,
                        "repair": repair,
                    }
                },
            )
            return report
        finally:
            self._current = None

    async def _quarantine(self, digest: str, reason: str, fence: Sequence[Compare]) -> Finding | None:
        """Quarantine one damaged object; None if a push repaired it meanwhile."""
        record, mod = await self.gc_store.blob_record(digest)
        if record is not None and record.state != "live":
            return Finding(digest, reason, note="being garbage collected; left to the collector")
        if record is None:
            claimed = BlobRecord(await self.store.stat(digest) or 0, self.clock.now(), state="deleting")
        else:
            claimed = BlobRecord(record.size, record.created, state="deleting")
        if not await self.gc_store.mark_blob_deleting(digest, claimed, mod, fence):
            return Finding(
                digest,
                reason,
                note="not quarantined: it changed during the check (a push or a collection used it, "
                "or this replica lost the pruner leadership); the next run checks it again",
            )
        # Under the claim no push can record new use of it, but one may have
        # replaced the bytes before the claim: hash them again before removing.
        again = await self._hash(digest)
        if again.actual == digest:
            await self.gc_store.release_blob(digest, claimed, record, fence)
            log.info(
                "integrity check: a push repaired the object meanwhile", extra={"fields": {"digest": digest}}
            )
            return None
        links = await self.gc_store.unlink_everywhere(digest, claimed, fence)
        await self.store.delete(digest)
        removed = await self.gc_store.remove_blob_record(digest, fence)
        log.warning(
            "integrity check: quarantined a damaged object",
            extra={"fields": {"digest": digest, "links": links, "record_removed": removed}},
        )
        return Finding(digest, reason, quarantined=True)
