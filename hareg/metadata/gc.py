"""The metadata side of garbage collection: a snapshot of everything at one
etcd revision, and the fenced transactions that delete what the collector
chose.

Every deletion carries the caller's ``fence`` compares (the pruner leader's
key still holds its token), so a collector that lost leadership — paused past
its lease, partitioned — cannot delete anything.  Each deletion also
re-checks, by compares, that nothing it depends on changed since the
snapshot; a failed compare skips that batch until the next run.

Expiring a mirrored tag (docs/pull-through.md#expiry) is a fenced
transaction too: it deletes the tag with one "expire" history entry (the
tag's history still moves forward, invariant 5) and the tag's older entries
and its upstream-check record, if none of them changed since the snapshot.

The integrity check's quarantine (``hareg/registry/fsck.py``) uses the same
claim ("deleting") and fenced deletions, plus a release of a claim and the
removal of every link to one digest.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from hareg.kv.base import KV, Compare, Delete, Op, Put, Target, TxnOp, prefix_end
from hareg.metadata.keys import Keys
from hareg.metadata.records import (
    BlobRecord,
    HistoryEntry,
    LinkRecord,
    ManifestRecord,
    MirrorCheckRecord,
    TagRecord,
    TagSeqRecord,
    decode,
    encode,
)
from hareg.metadata.references import references

_PAGE = 1000
# Below etcd's default --max-txn-ops (128), leaving room for compares.
BATCH = 64


@dataclass
class Snapshot:
    revision: int
    tags: dict[str, dict[str, TagRecord]] = field(default_factory=lambda: defaultdict(dict))
    # (repo, tag) -> [(key, entry)] in history order
    history: dict[tuple[str, str], list[tuple[bytes, HistoryEntry]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    manifests: dict[str, dict[str, ManifestRecord]] = field(default_factory=lambda: defaultdict(dict))
    links: dict[str, dict[str, tuple[LinkRecord, int]]] = field(default_factory=lambda: defaultdict(dict))
    blobs: dict[str, tuple[BlobRecord, int]] = field(default_factory=dict)
    tag_revisions: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, tag) -> mod_revision
    # (repo, tag) -> when the pull-through cache last asked the upstream, and the key's mod_revision
    mirror_checks: dict[tuple[str, str], tuple[MirrorCheckRecord, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExpiredTag:
    """A mirrored tag (or only its check record, ``record`` None) the pruner
    expires, as the snapshot saw it."""

    repo: str
    tag: str
    record: TagRecord | None
    revision: int  # the tag key's mod_revision (0: no tag)
    check_revision: int  # the check record's mod_revision (0: none)
    history: tuple[bytes, ...] = ()


def _split(rest: str) -> tuple[str, str]:
    """'<repo>@<last>' -> (repo, last); repository names never contain '@'."""
    repo, _, last = rest.partition("@")
    return repo, last


class GcStore:
    def __init__(self, kv: KV, keys: Keys, *, batch: int = BATCH) -> None:
        self.kv = kv
        self.keys = keys
        # Deletions per transaction (the simulator uses a small one, so that
        # runs cross batch boundaries).
        self.batch = batch

    async def _pages(self, kind: str, revision: int) -> tuple[int, list[tuple[bytes, bytes, int]]]:
        start = self.keys.kind_prefix(kind)
        end = prefix_end(start)
        out: list[tuple[bytes, bytes, int]] = []
        while True:
            page = await self.kv.range(start, end, limit=_PAGE, revision=revision)
            revision = revision or page.revision
            out += [(kv.key, kv.value, kv.mod_revision) for kv in page.kvs]
            if not page.more or not page.kvs:
                return revision, out
            start = page.kvs[-1].key + b"\x00"

    async def snapshot(self) -> Snapshot:
        revision, tags = await self._pages("t", 0)
        snap = Snapshot(revision)
        for key, value, mod in tags:
            repo, tag = _split(self.keys.strip("t", key))
            snap.tags[repo][tag] = decode(TagRecord, value)
            snap.tag_revisions[(repo, tag)] = mod
        _, history = await self._pages("h", revision)
        for key, value, _ in history:
            repo, rest = _split(self.keys.strip("h", key))
            tag = rest.rsplit("@", 1)[0]
            snap.history[(repo, tag)].append((key, decode(HistoryEntry, value)))
        _, manifests = await self._pages("m", revision)
        for key, value, _ in manifests:
            repo, digest = _split(self.keys.strip("m", key))
            snap.manifests[repo][digest] = decode(ManifestRecord, value)
        _, links = await self._pages("l", revision)
        for key, value, mod in links:
            repo, digest = _split(self.keys.strip("l", key))
            snap.links[repo][digest] = (decode(LinkRecord, value), mod)
        _, blobs = await self._pages("b", revision)
        for key, value, mod in blobs:
            snap.blobs[self.keys.strip("b", key)] = (decode(BlobRecord, value), mod)
        _, checks = await self._pages("p", revision)
        for key, value, mod in checks:
            snap.mirror_checks[_split(self.keys.strip("p", key))] = (decode(MirrorCheckRecord, value), mod)
        return snap

    async def expire_mirror_tag(
        self, expired: ExpiredTag, now: float, replica: str, fence: Sequence[Compare]
    ) -> bool:
        """Delete a mirrored tag not pulled for its mirror's ``expireAfter``
        (hareg/registry/gc.py decides which), if neither it nor its check
        record changed since the snapshot (a pull since then re-checked it or
        re-fetched it): one "expire" history entry, its older entries and its
        check record go in the same transaction (older entries beyond what
        fits go right after, as trimming).  False: something changed, kept."""
        repo, tag = expired.repo, expired.tag
        check_key = self.keys.mirror_check(repo, tag)
        compares = [*fence, Compare.mod_revision_is(check_key, expired.check_revision)]
        ops: list[TxnOp] = [Delete(check_key)]
        rest: list[bytes] = []
        if expired.record is not None:
            tag_key, seq_key = self.keys.tag(repo, tag), self.keys.tag_seq(repo, tag)
            seq_kv = await self.kv.get(seq_key)
            seq = (decode(TagSeqRecord, seq_kv.value).seq if seq_kv else 0) + 1
            room = max(self.batch - 5, 1)  # the txn's other operations
            history, rest = list(expired.history[-room:]), list(expired.history[:-room])
            compares += [
                Compare.mod_revision_is(tag_key, expired.revision),
                Compare.mod_revision_is(seq_key, seq_kv.mod_revision if seq_kv else 0),
            ]
            entry = HistoryEntry(seq, now, expired.record.digest, None, replica, "expire")
            ops += [
                Delete(tag_key),
                Put(seq_key, encode(TagSeqRecord(seq))),
                Put(self.keys.history(repo, tag, seq), encode(entry)),
                *(Delete(k) for k in history),
            ]
        else:
            compares.append(Compare.missing(self.keys.tag(repo, tag)))
        result = await self.kv.txn(compares, ops)
        if result.succeeded and rest:
            await self.delete_history(rest, fence)
        return result.succeeded

    async def delete_history(self, keys: Sequence[bytes], fence: Sequence[Compare]) -> int:
        """Trim history entries (appends only ever add newer ones: no compare needed)."""
        done = 0
        for i in range(0, len(keys), self.batch):
            batch = keys[i : i + self.batch]
            result = await self.kv.txn(list(fence), [Delete(k) for k in batch])
            done += len(batch) if result.succeeded else 0
        return done

    async def delete_manifests(
        self,
        repo: str,
        manifests: Sequence[tuple[str, ManifestRecord]],
        revision: int,
        fence: Sequence[Compare],
    ) -> list[str]:
        """Delete unreachable manifests (digest, record) of one repository, in
        the order given, if no tag, manifest or history entry of the repository
        changed since ``revision`` (a new tag, index, referrer or rollback could
        reach them).  Returns the digests deleted: a batch whose guard fails
        stops the rest, and those before it stay deleted.

        A manifest, its referrer entry and its reverse-index entries go in the
        same transaction, never split across two: a later batch failing must not
        leave an entry in the referrers index for a manifest that is gone, nor
        an index entry that keeps what it referenced from being deleted."""
        guards = [
            *fence,
            Compare.range_unchanged_since(*self.keys.tags(repo), revision),
            Compare.range_unchanged_since(*self.keys.manifests(repo), revision),
        ]
        batches: list[tuple[list[str], list[TxnOp]]] = [([], [])]
        for digest, record in manifests:
            ops: list[TxnOp] = [Delete(self.keys.manifest(repo, digest))]
            if record.subject is not None:
                ops.append(Delete(self.keys.referrer(repo, record.subject, digest)))
            ops += [Delete(self.keys.reference(repo, t, digest)) for t in references(record)]
            if len(batches[-1][1]) + len(ops) > self.batch:
                batches.append(([], []))
            batches[-1][0].append(digest)
            batches[-1][1].extend(ops)
        deleted: list[str] = []
        for digests, ops in batches:
            if not ops:
                continue
            result = await self.kv.txn(guards, ops)
            if not result.succeeded:
                break
            deleted += digests
        return deleted

    async def delete_links(
        self, repo: str, links: Sequence[tuple[str, int]], revision: int, fence: Sequence[Compare]
    ) -> list[str]:
        """Delete unreferenced links (digest, mod_revision) of one repository if
        untouched since the snapshot and no manifest appeared there since."""
        deleted: list[str] = []
        manifests_unchanged = Compare.range_unchanged_since(*self.keys.manifests(repo), revision)
        step = max(self.batch // 2, 1)
        for i in range(0, len(links), step):
            batch = links[i : i + step]
            guards = [*fence, manifests_unchanged] + [
                Compare.mod_revision_is(self.keys.link(repo, d), mod) for d, mod in batch
            ]
            result = await self.kv.txn(guards, [Delete(self.keys.link(repo, d)) for d, _ in batch])
            if result.succeeded:
                deleted += [d for d, _ in batch]
        return deleted

    async def mark_blob_deleting(
        self, digest: str, record: BlobRecord, mod: int, fence: Sequence[Compare]
    ) -> bool:
        """Claim a blob for deletion, if its record is unchanged since the
        snapshot (every new link re-writes it)."""
        key = self.keys.blob(digest)
        marked = BlobRecord(record.size, record.created, state="deleting")
        result = await self.kv.txn([*fence, Compare.mod_revision_is(key, mod)], [Put(key, encode(marked))])
        return result.succeeded

    async def remove_blob_record(self, digest: str, fence: Sequence[Compare]) -> bool:
        """Drop a "deleting" record once its bytes are gone."""
        result = await self.kv.txn(list(fence), [Delete(self.keys.blob(digest))])
        return result.succeeded

    # ------------------------------------------------- quarantine (registry/fsck.py)

    async def blob_record(self, digest: str) -> tuple[BlobRecord | None, int]:
        """A blob's record and its mod_revision (0: no record)."""
        kv = await self.kv.get(self.keys.blob(digest))
        return (decode(BlobRecord, kv.value), kv.mod_revision) if kv else (None, 0)

    async def release_blob(
        self, digest: str, claimed: BlobRecord, original: BlobRecord | None, fence: Sequence[Compare]
    ) -> bool:
        """Undo a claim (``mark_blob_deleting``) that is still in place: put the
        original record back (a fresh mod_revision, so writers that read the
        claim retry), or remove the record the claim created."""
        key = self.keys.blob(digest)
        op: TxnOp = Put(key, encode(original)) if original is not None else Delete(key)
        result = await self.kv.txn([*fence, Compare(key, Target.VALUE, Op.EQUAL, encode(claimed))], [op])
        return result.succeeded

    async def unlink_everywhere(self, digest: str, claimed: BlobRecord, fence: Sequence[Compare]) -> int:
        """Delete every repository's link to a blob, while its record still holds
        ``claimed`` (no link can appear under a claim).  Returns how many went."""
        start = self.keys.kind_prefix("l")
        end = prefix_end(start)
        suffix = b"@" + digest.encode()
        found: list[bytes] = []
        while True:
            page = await self.kv.range(start, end, limit=_PAGE, keys_only=True)
            found += [kv.key for kv in page.kvs if kv.key.endswith(suffix)]
            if not page.more or not page.kvs:
                break
            start = page.kvs[-1].key + b"\x00"
        guards = [*fence, Compare(self.keys.blob(digest), Target.VALUE, Op.EQUAL, encode(claimed))]
        done = 0
        for i in range(0, len(found), BATCH):
            batch = found[i : i + BATCH]
            result = await self.kv.txn(guards, [Delete(k) for k in batch])
            if not result.succeeded:
                break
            done += len(batch)
        return done
