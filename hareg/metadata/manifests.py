"""Manifests: the push that commits a manifest with its tags and referrer
entry, its deletion, and the reads of both.

A manifest commits only if every blob and child manifest it references is
linked in its repository *in the same transaction* (invariant 2 of docs/invariants.md); a push also
compares a tag it finds already in place, so it cannot be acknowledged while
a concurrent delete removes that tag.

Every manifest's references are also kept the other way round, in the
reverse-reference index (``x/<repo>@<target><referrer>``, one empty key per
referenced blob or child manifest), written and deleted in the manifest's own
transactions.  A delete of a manifest or of a blob link reads only the index
entries of its target and commits under the compare that no entry for it
appeared since (``Compare.range_unchanged_since``): with the push's compare
that the target exists, one of two racing writes always fails, so no
reference can dangle (docs/gc.md, "Deletes and the reverse-reference index").
Until the index is built over data from an earlier version (the marker
``c/reference-index``), deletes look the old way, over every manifest of the
repository, under a range compare on all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from hareg.kv.base import Compare, Delete, KeyValue, KVCompacted, Put, TxnOp
from hareg.metadata.blobs import blob_guard
from hareg.metadata.errors import ImmutableTag, MissingReferences, ReferencedBy
from hareg.metadata.records import (
    BlobRecord,
    HistoryEntry,
    ManifestRecord,
    ReferrerRecord,
    TagRecord,
    TagSeqRecord,
    decode,
    encode,
)
from hareg.metadata.references import ReferenceIndex, references
from hareg.metadata.tags import immutable_pattern, rule_patterns, rule_unchanged, tag_delete_ops
from hareg.metadata.writes import Done, Txn
from hareg.plants import planted


@dataclass(frozen=True, slots=True)
class TagWrite:
    tag: str
    previous: str | None  # digest the tag pointed at before, None if new


def _as_stored(pushed: ManifestRecord, stored: ManifestRecord) -> ManifestRecord:
    """A re-push of a stored digest: the same bytes, so everything parsed from
    them stays as first stored (the Content-Type of a body without
    ``mediaType`` decided its type once); only the creation time is new, which
    spares it from the collector's age limit as a first push would."""
    return replace(
        pushed,
        media_type=stored.media_type,
        blobs=stored.blobs,
        manifests=stored.manifests,
        subject=stored.subject,
        artifact_type=stored.artifact_type,
        annotations=stored.annotations,
    )


class ManifestMetadata(ReferenceIndex):
    async def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        key = self.keys.manifest(repo, digest)
        if (cache := await self._from_cache()) is not None:
            try:
                return await cache.manifest(repo, digest, etcd_down=self.etcd_known_down())
            except KVCompacted:  # the cache's revision is gone from etcd: read it now
                pass
        return await self._record(key, ManifestRecord)

    async def get_tagged_manifest(self, repo: str, tag: str) -> tuple[str, ManifestRecord | None] | None:
        """A tag and its manifest read at one point in time (one barrier, or one txn)."""
        if (cache := await self._from_cache()) is not None:
            digest = cache.tag(repo, tag)
            if digest is None:
                return None
            try:  # the manifest at the revision the tag was read at (cache.manifest)
                return digest, await cache.manifest(repo, digest, etcd_down=self.etcd_known_down())
            except KVCompacted:  # that revision is gone from etcd: both from etcd below
                pass
        # From etcd: the manifest read at the tag's revision, so that a tag moved
        # and its old manifest deleted in between cannot make it look absent
        # (the simulator's seed 5817: two reads half a second apart).
        tag_key = self.keys.tag(repo, tag)
        for attempt in range(3):
            tagged = await self.kv.range(tag_key, tag_key + b"\x00")
            if not tagged.kvs:
                return None
            digest = decode(TagRecord, tagged.kvs[0].value).digest
            key = self.keys.manifest(repo, digest)
            try:
                found = await self.kv.range(key, key + b"\x00", revision=tagged.revision)
            except KVCompacted:  # compacted in between: both again, at a newer revision
                if attempt == 2:
                    raise
                continue
            return digest, decode(ManifestRecord, found.kvs[0].value) if found.kvs else None
        raise AssertionError("unreachable")

    async def list_referrers(self, repo: str, subject: str) -> list[tuple[str, ReferrerRecord]]:
        result = await self._range_all(self.keys.referrers(repo, subject))
        return [(self.keys.last_part(kv.key), decode(ReferrerRecord, kv.value)) for kv in result.kvs]

    async def check_references(self, repo: str, record: ManifestRecord) -> None:
        """Raise MissingReferences if ``repo`` now lacks something ``record`` references.
        Only a pre-check (before work that a refused push would waste): put_manifest
        re-checks in its transaction."""
        if (missing := await self._missing_references(repo, record)) is not None:
            raise missing

    async def _missing_references(self, repo: str, record: ManifestRecord) -> MissingReferences | None:
        keys = [self.keys.link(repo, d) for d in record.blobs] + [
            self.keys.manifest(repo, d) for d in record.manifests
        ]
        found = await self._read_many(keys)
        nb = len(record.blobs)
        blobs = [d for d, kv in zip(record.blobs, found[:nb], strict=True) if kv is None]
        children = [d for d, kv in zip(record.manifests, found[nb:], strict=True) if kv is None]
        return MissingReferences(blobs, children) if blobs or children else None

    async def put_manifest(
        self,
        repo: str,
        digest: str,
        record: ManifestRecord,
        tags: Sequence[str] = (),
        *,
        body_present: Callable[[], Awaitable[bool]] | None = None,
        sparse: bool = False,
    ) -> list[TagWrite]:
        """Commit a manifest, its referrer entry and its tags in one transaction,
        guarded by the existence of everything it references.

        ``sparse``: without those guards.  Only the pull-through cache stores
        sparse manifests, in mirrored repositories (where pushes are refused),
        whose references are fetched from the upstream on demand
        (docs/pull-through.md); invariant 2 holds for every other repository.

        A manifest whose body is in the blob store (``record.body is None``)
        also writes the blob record of its digest, with the guard ``add_blob``
        uses against garbage collection: a record in state "deleting" is
        refused (BlobCollected), and with no record ``body_present`` must
        confirm that the bytes the caller stored are still there.

        A re-push of a digest already in the repository keeps what was stored
        for it (media type, references, subject: a body without ``mediaType``
        parsed under another Content-Type must not change what the digest is)
        and only refreshes its creation time.  Every named tag is compared,
        also one that already points at the digest: a delete committed in
        between must make this write retry (and re-create the tag), never
        leave an acknowledged tag push without its tag."""
        tags = list(dict.fromkeys(tags))  # one key may appear once in an etcd transaction
        manifest_key = self.keys.manifest(repo, digest)
        stored_body = record.body is None
        pushed = record

        async def attempt() -> Txn[list[TagWrite]]:
            pre_keys = [self.keys.repo(repo), manifest_key]
            for tag in tags:
                pre_keys += [self.keys.tag(repo, tag), self.keys.tag_seq(repo, tag)]
            pre = await self._read_many(
                [*pre_keys, self.keys.immutability(repo), *([self.keys.blob(digest)] if stored_body else [])]
            )
            blob_kv = pre.pop() if stored_body else None
            rule_kv = pre.pop()
            repo_kv, existing_kv, tag_kvs = pre[0], pre[1], pre[2:]
            record = pushed
            if existing_kv is not None:
                record = _as_stored(pushed, decode(ManifestRecord, existing_kv.value))
            # The annotations are kept once, in the referrers entry (the only
            # reader of them), not again in the manifest's record.
            manifest_value = encode(replace(record, annotations={}))
            compares = (
                []
                if sparse
                else [Compare.exists(self.keys.link(repo, d)) for d in record.blobs]
                + [Compare.exists(self.keys.manifest(repo, d)) for d in record.manifests]
            )
            compares.append(
                Compare.mod_revision_is(manifest_key, existing_kv.mod_revision if existing_kv else 0)
            )
            if stored_body:
                compares.append(await blob_guard(self.keys, digest, blob_kv, body_present))
            if repo_kv is None:
                compares.append(self._ensure_repo(repo)[0])
            writes: list[TagWrite] = []
            seqs: list[int] = []
            for i, tag in enumerate(tags):
                tag_kv, seq_kv = tag_kvs[2 * i], tag_kvs[2 * i + 1]
                current = decode(TagRecord, tag_kv.value) if tag_kv else None
                tag_guard = [
                    Compare.mod_revision_is(self.keys.tag(repo, tag), tag_kv.mod_revision if tag_kv else 0),
                    Compare.mod_revision_is(
                        self.keys.tag_seq(repo, tag), seq_kv.mod_revision if seq_kv else 0
                    ),
                ]
                if current is not None and current.digest == digest:
                    compares += tag_guard  # unchanged, but only while nothing deletes it
                    continue
                if current is not None and (pattern := immutable_pattern(rule_patterns(rule_kv), tag)):
                    raise ImmutableTag(repo, tag, pattern)
                if not planted("tag-no-compare"):  # PLANTED BUG (simulator only): the tag is unguarded
                    compares += tag_guard
                writes.append(TagWrite(tag, current.digest if current else None))
                seqs.append((decode(TagSeqRecord, seq_kv.value).seq if seq_kv else 0) + 1)
            if writes:
                compares.append(rule_unchanged(self.keys, repo, rule_kv))

            def build() -> Txn[list[TagWrite]]:
                """One attempt: its own write id and time (a re-send builds another)."""
                now, write_id = self.clock.now(), self.ids.new_id()
                ops: list[TxnOp] = [Put(manifest_key, manifest_value)]
                if stored_body:
                    ops.append(Put(self.keys.blob(digest), encode(BlobRecord(record.size, now))))
                if repo_kv is None:
                    ops.append(self._ensure_repo(repo)[1])
                for w, seq in zip(writes, seqs, strict=True):
                    ops += [
                        Put(
                            self.keys.tag(repo, w.tag),
                            encode(TagRecord(digest, seq, now, self.replica, write_id)),
                        ),
                        Put(self.keys.tag_seq(repo, w.tag), encode(TagSeqRecord(seq))),
                        Put(
                            self.keys.history(repo, w.tag, seq),
                            encode(HistoryEntry(seq, now, w.previous, digest, self.replica, "push")),
                        ),
                    ]
                # Every time, also for a manifest stored already: one stored
                # before the index existed gets its entries (a build of the
                # index skips a manifest re-written meanwhile).
                for target in references(record):
                    if not planted("reference-index-skip"):  # PLANTED BUG (simulator only): no entry
                        ops.append(Put(self.keys.reference(repo, target, digest), b""))
                # A stored manifest's referrers entry is in place (written and
                # deleted with it): only a first push writes it.
                if record.subject is not None and existing_kv is None:
                    ops.append(
                        Put(
                            self.keys.referrer(repo, record.subject, digest),
                            encode(
                                ReferrerRecord(
                                    record.media_type, record.size, record.artifact_type, record.annotations
                                )
                            ),
                        )
                    )

                async def committed() -> bool:
                    found = await self._read_many(
                        [manifest_key] + [self.keys.tag(repo, w.tag) for w in writes]
                    )
                    # Our own record (its creation time), not one an earlier push left: the
                    # collector spares a manifest by its age (keepYoungerThanDuration).
                    if found[0] is None or found[0].value != manifest_value:
                        return False
                    return all(
                        kv is not None and decode(TagRecord, kv.value).write_id == write_id
                        for kv in found[1:]
                    )

                # On a failed compare: a reference went missing (refused), or else a
                # tag or the repository changed under us (read again and retry).  A
                # sparse put compares no reference: a failed compare is always a race.
                on_conflict = None if sparse else (lambda: self.check_references(repo, record))
                return Txn(compares, ops, committed, writes, on_conflict, build)

            return build()

        return await self._write(f"manifest {digest} in {repo}", attempt)

    # ----------------------------------------------------------------- delete

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete a manifest and every tag that points at it, unless an index
        in the repository references it."""
        manifest_key = self.keys.manifest(repo, digest)
        m_span, t_span = self.keys.manifests(repo), self.keys.tags(repo)

        async def attempt() -> Txn[bool] | Done[bool]:
            if await self.reference_index_ready():
                found = await self._range_all((manifest_key, manifest_key + b"\x00"))
                if not found.kvs:
                    return Done(False)
                target = found.kvs[0]
                users = await self.users_of(repo, digest, as_child=True)
                if users.referrers:
                    raise ReferencedBy(users.referrers)
                tags = await self._range_all(t_span)
                stale = users.stale
                compares = [
                    *self._unreferenced(repo, digest, users),
                    Compare.range_unchanged_since(t_span[0], t_span[1], tags.revision),
                    # Also fences a re-send (metadata/writes.py): at most one attempt deletes.
                    Compare.mod_revision_is(manifest_key, target.mod_revision),
                ]
            else:
                # The index is not built yet: every manifest of the repository is read.
                manifests = await self._range_all(m_span)
                tags = await self._range_all(t_span, revision=manifests.revision)
                legacy: KeyValue | None = None
                referrers: list[str] = []
                for kv in manifests.kvs:
                    d = self.keys.last_part(kv.key)
                    if d == digest:
                        legacy = kv
                    elif digest in decode(ManifestRecord, kv.value).manifests:
                        referrers.append(d)
                if legacy is None:
                    return Done(False)
                if referrers:
                    raise ReferencedBy(referrers)
                target, stale, rev = legacy, [], manifests.revision
                compares = [
                    Compare.range_unchanged_since(m_span[0], m_span[1], rev),
                    Compare.range_unchanged_since(t_span[0], t_span[1], rev),
                    # Implied by the range guard, except that the range guard does
                    # not see a deletion: this compare also fences a re-send
                    # (metadata/writes.py), so at most one attempt ever deletes.
                    Compare.mod_revision_is(manifest_key, target.mod_revision),
                ]
            record = decode(ManifestRecord, target.value)
            deleted_tags: list[tuple[str, KeyValue | None]] = []
            pointing = [kv for kv in tags.kvs if decode(TagRecord, kv.value).digest == digest]
            if pointing:
                seqs = await self._read_many(
                    [self.keys.tag_seq(repo, self.keys.last_part(kv.key)) for kv in pointing]
                    + [self.keys.immutability(repo)]
                )
                rule_kv = seqs.pop()
                compares.append(rule_unchanged(self.keys, repo, rule_kv))
                for tag_kv, seq_kv in zip(pointing, seqs, strict=True):
                    tag = self.keys.last_part(tag_kv.key)
                    if pattern := immutable_pattern(rule_patterns(rule_kv), tag):
                        raise ImmutableTag(repo, tag, pattern)
                    compares += [
                        Compare.mod_revision_is(
                            self.keys.tag_seq(repo, tag), seq_kv.mod_revision if seq_kv else 0
                        ),
                        # The sequences were read after the tags: a tag deleted in
                        # between (which the range guard cannot see) must fail the
                        # txn, or it would get a second "delete" history entry.
                        Compare.mod_revision_is(tag_kv.key, tag_kv.mod_revision),
                    ]
                    deleted_tags.append((tag, seq_kv))
            lease = await self._lease_for_uploads()

            def build() -> Txn[bool]:
                """One attempt: its own marker id and time (a re-send builds another)."""
                ops: list[TxnOp] = [Delete(manifest_key)]
                for tag, seq_kv in deleted_tags:
                    ops += tag_delete_ops(
                        self.keys, repo, tag, digest, seq_kv, now=self.clock.now(), replica=self.replica
                    )
                if record.subject is not None:
                    ops.append(Delete(self.keys.referrer(repo, record.subject, digest)))
                # Its own index entries go with it; stale ones naming it as target too.
                ops += [Delete(self.keys.reference(repo, t, digest)) for t in references(record)]
                ops += [Delete(key) for key in stale]
                # Not "the manifest is gone" to verify a lost reply: a concurrent delete
                # also leaves it gone.  Our marker (a fresh write id) is proof.
                marker = Put(self.keys.deletion(repo, digest), self.ids.new_id().encode(), lease=lease)
                ops.append(marker)
                return Txn(compares, ops, lambda: self._wrote(marker), True, again=build)

            return build()

        return await self._write(f"delete of manifest {digest} in {repo}", attempt)
