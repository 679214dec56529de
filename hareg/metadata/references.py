"""The reverse-reference index: for each manifest, one empty key per blob or
child manifest it references, ``x/<repo>@<target><referrer>`` (digests in
the short form of metadata/keys.py), written and deleted in the manifest's
own transactions (metadata/manifests.py), so that a delete of a blob link or
of a manifest reads only the entries of its target rather than every
manifest of the repository.

Exact under concurrency: a push that references a target compares that the
target exists (its link, or its manifest key) and writes the entry in the
same transaction; a delete of the target compares that no entry for it was
written since it read the entries (``Compare.range_unchanged_since`` over
the target's range).  etcd orders the two transactions, and whichever comes
second fails its compare: the push is refused (the reference is missing) or
the delete reads again and finds the new user.

Data written by an earlier version has no entries: the first replica to
start builds them (``build_reference_index``) and then writes the marker
``c/reference-index``; until a replica sees the marker, its deletes look the
old way, over every manifest of the repository (docs/gc.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hareg.kv.base import Compare, KeyValue, KVCompacted, Put, TxnOp, prefix_end
from hareg.metadata.errors import Contended
from hareg.metadata.records import ManifestRecord, decode
from hareg.metadata.writes import READ_BATCH, StoreBase

# Manifests read per page while the index is built.
_BUILD_PAGE = 500


def references(record: ManifestRecord) -> list[str]:
    """What a manifest references, each once: its blobs, then its child manifests."""
    return list(dict.fromkeys((*record.blobs, *record.manifests)))


def _role(record: ManifestRecord, as_child: bool) -> tuple[str, ...]:
    return record.manifests if as_child else record.blobs


@dataclass(frozen=True, slots=True)
class Users:
    """What the reverse index says refers to a target: the referring
    manifests, the index entries that are stale (their manifest is gone: left
    by a write that could not finish, removed by the delete that finds them;
    one left behind is harmless, it only stays stale), the revision of the
    read, and the manifests the stale entries name."""

    referrers: list[str]
    stale: list[bytes]
    revision: int
    stale_referrers: list[str]


class ReferenceIndex(StoreBase):
    async def reference_index_ready(self) -> bool:
        """Whether every manifest's reverse-index entries exist (the marker is
        written once, never removed: a True is remembered)."""
        if not self._reference_index_ready:
            self._reference_index_ready = await self._get(self.keys.reference_index_built()) is not None
        return self._reference_index_ready

    async def users_of(self, repo: str, target: str, *, as_child: bool) -> Users:
        """The manifests of ``repo`` that reference ``target`` as a blob (or,
        ``as_child``, as a child manifest), from its index entries and those
        manifests' records alone, read a page at a time at one revision until
        one is found (one is enough to refuse).  An entry of a manifest that
        names the digest in the other role (a digest both a blob and a
        manifest) is neither a user nor stale; stale ones (their manifest is
        gone) are returned for the delete to remove, at most a page of them."""
        span = self.keys.references_to(repo, target)
        for _ in range(self.max_retries):
            start, revision = span[0], 0
            stale: list[tuple[str, bytes]] = []
            try:
                while True:
                    page = await self.kv.range(start, span[1], limit=READ_BATCH, revision=revision)
                    revision = revision or page.revision
                    named = [(self.keys.reference_parts(kv.key)[2], kv.key) for kv in page.kvs]
                    present = await self._read_many([self.keys.manifest(repo, r) for r, _ in named])
                    live = [
                        r
                        for (r, _), kv in zip(named, present, strict=True)
                        if kv is not None and target in _role(decode(ManifestRecord, kv.value), as_child)
                    ]
                    stale += [(r, key) for (r, key), kv in zip(named, present, strict=True) if kv is None]
                    if live or not page.more or not page.kvs:
                        stale = stale[:READ_BATCH]
                        return Users(live, [key for _, key in stale], revision, [r for r, _ in stale])
                    start = page.kvs[-1].key + b"\x00"
            except KVCompacted:  # compacted under a long read: from the start, at a newer revision
                continue
        raise Contended(f"reverse-index entries of {target} in {repo}")

    def _unreferenced(self, repo: str, target: str, users: Users) -> list[Compare]:
        """The compares of a delete of ``target`` that found no live user: no
        index entry for it appeared since the read (a push that references it
        writes one in its own transaction) and the stale ones it removes are
        still stale (their manifests still missing)."""
        span = self.keys.references_to(repo, target)
        return [
            Compare.range_unchanged_since(span[0], span[1], users.revision),
            *(Compare.missing(self.keys.manifest(repo, r)) for r in users.stale_referrers),
        ]

    async def reference_index_trivial(self) -> bool:
        """Whether building the index needs no work: built already, or no
        manifest stored at all (a new registry: only the marker to write)."""
        if await self.reference_index_ready():
            return True
        start = self.keys.kind_prefix("m")
        return not (await self.kv.range(start, prefix_end(start), limit=1, keys_only=True)).kvs

    async def build_reference_index(self) -> int:
        """Give every manifest stored by an earlier version (without index
        entries) its entries, then write the marker: deletes look up the index
        from then on.  Each batch is guarded by its manifests' mod_revisions (a
        manifest deleted meanwhile gets none; one re-pushed wrote its own).
        Returns the manifests indexed here; 0 if the index was built already.

        Each page is read as it is now (not at one revision, which compaction
        could take away under a long build): a manifest written after the
        build began wrote its own entries.  Not a client's write: it does not
        compare the read-only switch, so a replica starts while it is on."""
        if await self.reference_index_ready():
            return 0
        start = self.keys.kind_prefix("m")
        end, done = prefix_end(start), 0
        while True:
            page = await self.kv.range(start, end, limit=_BUILD_PAGE)
            batch: list[tuple[KeyValue, list[TxnOp]]] = []
            for kv in page.kvs:
                repo, _, digest = self.keys.strip("m", kv.key).partition("@")
                record = decode(ManifestRecord, kv.value)
                batch.append(
                    (kv, [Put(self.keys.reference(repo, t, digest), b"") for t in references(record)])
                )
            done += await self._index_batch(batch)
            if not page.more or not page.kvs:
                break
            start = page.kvs[-1].key + b"\x00"
        marker = self.keys.reference_index_built()
        await self._commit([Compare.missing(marker)], [Put(marker, str(self.clock.now()).encode())])
        self._reference_index_ready = True
        return done

    async def _index_batch(self, batch: Sequence[tuple[KeyValue, list[TxnOp]]]) -> int:
        """Write the entries of several manifests in transactions of at most
        ``READ_BATCH`` operations, each guarded by its manifests' revisions;
        a transaction refused (one of them changed) goes again one by one."""
        groups: list[list[tuple[KeyValue, list[TxnOp]]]] = [[]]
        for kv, puts in batch:
            if puts and groups[-1] and sum(len(p) for _, p in groups[-1]) + len(puts) > READ_BATCH:
                groups.append([])
            if puts:
                groups[-1].append((kv, puts))
        done = 0
        for group in groups:
            if not group:
                continue
            guard = [Compare.mod_revision_is(kv.key, kv.mod_revision) for kv, _ in group]
            if (await self._commit(guard, [op for _, puts in group for op in puts])).succeeded:
                done += len(group)
            elif len(group) > 1:
                for one in group:
                    done += await self._index_batch([one])
        return done
