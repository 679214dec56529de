"""Registry metadata operations, each one a KV transaction guarded by compares.

This is where the invariants are enforced at commit time:

* a manifest commits only if every blob and child manifest it references is
  linked in its repository *in the same transaction* (invariant 2);
* a blob link or manifest is removed only if no manifest in the repository
  references it, checked by a range compare that fails if any manifest was
  written since the check (no push can slip in between);
* a tag moves only by a compare on its mod_revision, and every move appends
  a history entry numbered by a per-tag sequence (invariant 5); a push also
  compares a tag it finds already in place, so it cannot be acknowledged
  while a concurrent delete removes that tag;
* every write transaction compares the cluster read-only switch
  (switch.py), so no write commits once the switch is on;
* a transaction whose outcome is unknown is verified by a read before it is
  reported as done, else it is reported as unavailable (invariant 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

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
    Put,
    RangeResult,
    TxnOp,
    TxnResult,
)
from hareg.metadata.barrier import Freshness, ReadBarrier
from hareg.metadata.cache import MetadataCache
from hareg.metadata.keys import Keys
from hareg.metadata.records import (
    BlobRecord,
    HistoryEntry,
    ImmutabilityRecord,
    LinkRecord,
    ManifestRecord,
    ReferrerRecord,
    RepoRecord,
    TagRecord,
    TagSeqRecord,
    UploadRecord,
    decode,
    encode,
)
from hareg.metadata.switch import ReadOnlyGuard
from hareg.plants import planted


class MetadataError(Exception):
    """Base of the metadata layer's own refusals (KV errors pass through)."""


class MissingReferences(MetadataError):
    def __init__(self, blobs: list[str], manifests: list[str]) -> None:
        super().__init__(f"missing blobs {blobs}, missing manifests {manifests}")
        self.blobs = blobs
        self.manifests = manifests


class ReferencedBy(MetadataError):
    def __init__(self, digests: list[str]) -> None:
        super().__init__(f"still referenced by {digests}")
        self.digests = digests


class ImmutableTag(MetadataError):
    """The tag matches one of the repository's immutability patterns: it may
    not move to another digest nor be deleted."""

    def __init__(self, repo: str, tag: str, pattern: str) -> None:
        super().__init__(f"tag {tag} in {repo} is immutable (pattern {pattern!r})")
        self.repo = repo
        self.tag = tag
        self.pattern = pattern


def immutable_pattern(patterns: Sequence[str], tag: str) -> str | None:
    """The first pattern that makes ``tag`` immutable (fnmatch, case-sensitive)."""
    return next((p for p in patterns if fnmatch.fnmatchcase(tag, p)), None)


def _patterns(rule: KeyValue | None) -> tuple[str, ...]:
    return decode(ImmutabilityRecord, rule.value).patterns if rule else ()


class BlobCollected(MetadataError):
    """The blob is being (or was just) garbage collected: upload it again."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is being garbage collected")
        self.digest = digest


class Contended(MetadataError):
    """Gave up after too many concurrent changes to the same keys."""


@dataclass(frozen=True, slots=True)
class TagWrite:
    tag: str
    previous: str | None  # digest the tag pointed at before, None if new


# Keep manifests up to this size inline in etcd (one read serves a GET); larger
# ones go to the blob store, since etcd's request limit is about 1.5 MiB.
DEFAULT_INLINE_LIMIT = 256 * 1024
# A compare-guarded write retries this often under contention before giving up.
DEFAULT_MAX_RETRIES = 32
# etcd's default --max-txn-ops; diagnostic reads are batched below it.
_READ_BATCH = 100


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


class MetadataStore:
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
        self.upload_ttl = upload_ttl
        self.upload_lease_window = upload_lease_window
        # With a cache, tag, manifest and link reads are served from memory after
        # the barrier (linearizable), or stale while etcd is unreachable.
        self.cache = cache
        self.barrier = barrier
        # Every write transaction compares the cluster read-only switch.
        self.read_only_guard = ReadOnlyGuard(kv, keys)
        # Uploads share one lease per time window (lease TTL = ttl + window), so a
        # POST does not cost a lease grant; each PATCH moves the record to the
        # current window's lease, which keeps an active upload alive.
        self._upload_lease: tuple[int, int] | None = None
        self._upload_lease_lock = asyncio.Lock()

    # ----------------------------------------------------------------- helpers

    async def _get(self, key: bytes) -> KeyValue | None:
        return await self.kv.get(key)

    async def _from_cache(self) -> MetadataCache | None:
        """The cache, once it reflects every write acknowledged before this call
        (or holds the last known state while etcd is down); None: read etcd."""
        if self.cache is None or self.barrier is None:
            return None
        freshness = await self.barrier.sync()
        return None if freshness is Freshness.UNCACHED else self.cache

    def etcd_known_down(self) -> bool:
        """etcd was just seen unreachable (no quorum): reads are served stale."""
        return self.barrier is not None and self.barrier.writes_blocked()

    async def check_writes_allowed(self) -> None:
        """Raise WritesFrozen if the cluster read-only switch is on now: for a
        write request that turns out to change nothing (a mount of a blob
        already linked), so that it is refused exactly as a real write."""
        await self.read_only_guard.refresh()

    def _check_writable(self) -> None:
        if self.barrier is not None and self.barrier.writes_blocked():
            raise KVUnavailable("etcd is unavailable (no quorum); writes are refused until it recovers")

    async def _read_many(self, keys: Sequence[bytes]) -> list[KeyValue | None]:
        """Several keys read at one revision per batch: the pre-reads of writes,
        so they fail fast too while etcd is known to be down."""
        self._check_writable()
        out: list[KeyValue | None] = []
        for i in range(0, len(keys), _READ_BATCH):
            batch = keys[i : i + _READ_BATCH]
            result = await self.kv.txn([], [Get(k) for k in batch])
            for resp in result.responses:
                assert isinstance(resp, RangeResult)
                out.append(resp.kvs[0] if resp.kvs else None)
        return out

    async def _txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        verify: Callable[[], Awaitable[bool]],
    ) -> bool:
        """Run a write txn; on an unknown outcome, report success only if ``verify``
        shows it applied (invariant 7), else re-raise the unknown outcome.

        (Re-sending the transaction once after an unverified unknown outcome
        was tried and reverted: the simulator's seed 6 found it violates tag
        linearizability.)"""
        self._check_writable()
        guard = await self.read_only_guard.compare()  # raises WritesFrozen while read-only
        try:
            result: TxnResult = await self.kv.txn([*compares, guard], success)
        except KVUnknownOutcome:
            if planted("ambiguous-ack"):  # PLANTED BUG (simulator only): success, unverified
                return True
            if await verify():
                return True
            raise
        if not result.succeeded:
            # Perhaps the switch changed: refused if it is on now, else the caller retries.
            await self.read_only_guard.refresh()
        return result.succeeded

    async def _wrote(self, put: Put) -> bool:
        """Whether ``put``'s own value is in place: how an unknown outcome is verified.

        Not "the key exists": a link that was there before, made by an earlier
        upload, would pass for this one, and garbage collection would judge it
        by its old ``touched`` (the simulator's seed 9576)."""
        found = await self._get(put.key)
        return found is not None and found.value == put.value

    async def _range_all(self, span: tuple[bytes, bytes], revision: int = 0) -> RangeResult:
        return await self.kv.range(span[0], span[1], revision=revision)

    # ---------------------------------------------------------------- settings

    async def shared_setting(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A cluster-wide value: the first replica to ask creates it (``make``),
        every replica then reads the same one."""
        key = self.keys.setting(name)
        for _ in range(self.max_retries):
            existing = await self._get(key)
            if existing is not None:
                return existing.value
            # Whichever replica's value won (even after an unknown outcome) is read back.
            with contextlib.suppress(KVUnknownOutcome):
                await self.kv.txn([Compare.missing(key)], [Put(key, make())])
        raise Contended(f"setting {name}")

    # ------------------------------------------------------------ repositories

    async def repo_exists(self, repo: str) -> bool:
        return await self._get(self.keys.repo(repo)) is not None

    async def list_repos(self, last: str | None, limit: int) -> tuple[list[str], bool]:
        start, end = self.keys.repos()
        if last is not None:
            start = self.keys.repo(last) + b"\x00"
        result = await self.kv.range(start, end, limit=limit, keys_only=True)
        return [self.keys.strip("r", kv.key) for kv in result.kvs], result.more

    def _ensure_repo(self, repo: str) -> tuple[Compare, Put]:
        return Compare.missing(self.keys.repo(repo)), Put(
            self.keys.repo(repo), encode(RepoRecord(self.clock.now()))
        )

    # ------------------------------------------------------------------- blobs

    async def get_link(self, repo: str, digest: str) -> LinkRecord | None:
        if (cache := await self._from_cache()) is not None:
            return cache.link(repo, digest)
        kv = await self._get(self.keys.link(repo, digest))
        return decode(LinkRecord, kv.value) if kv else None

    async def get_blob(self, digest: str) -> BlobRecord | None:
        kv = await self._get(self.keys.blob(digest))
        return decode(BlobRecord, kv.value) if kv else None

    async def add_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        upload_id: str | None = None,
        *,
        bytes_present: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Record a blob whose bytes are already stored, link it into ``repo``
        and close the upload session, in one transaction.

        Guarded against garbage collection of the same digest: the transaction
        compares the blob record's mod_revision, refuses a record in state
        "deleting", and when there is no record asks ``bytes_present`` — the
        upload may have found the bytes already stored (and dropped its own)
        just before a collector removed them."""
        blob_key, link_key = self.keys.blob(digest), self.keys.link(repo, digest)
        for _ in range(self.max_retries):
            blob_kv, repo_kv = await self._read_many([blob_key, self.keys.repo(repo)])
            compares = [await self._blob_guard(digest, blob_kv, bytes_present)]
            now = self.clock.now()
            link = Put(link_key, encode(LinkRecord(size, now, now)))
            ops: list[TxnOp] = [Put(blob_key, encode(BlobRecord(size, now))), link]
            if upload_id is not None:
                ops.append(Delete(self.keys.upload(upload_id)))
            if repo_kv is None:
                missing_repo, put_repo = self._ensure_repo(repo)
                compares.append(missing_repo)
                ops.append(put_repo)

            async def verify(link: Put = link) -> bool:
                return await self._wrote(link)

            if await self._txn(compares, ops, verify):
                return
        raise Contended(f"link of blob {digest} into {repo}")

    async def _blob_guard(
        self, digest: str, blob_kv: KeyValue | None, bytes_present: Callable[[], Awaitable[bool]] | None
    ) -> Compare:
        """The guard against garbage collection of ``digest`` for a write that makes
        new use of its bytes (a link, or a manifest body stored there) and
        re-writes its blob record: a record in state "deleting" is refused, and
        with no record ``bytes_present`` must confirm the bytes are still there
        (the collector deletes bytes before the record, so no record means no
        collector is still deleting).  The compare on the record's mod_revision
        makes a claim after this read fail, or this write."""
        if blob_kv is None:
            if bytes_present is not None and not await bytes_present():
                raise BlobCollected(digest)
        elif decode(BlobRecord, blob_kv.value).state != "live":
            raise BlobCollected(digest)
        return Compare.mod_revision_is(self.keys.blob(digest), blob_kv.mod_revision if blob_kv else 0)

    async def touch_link(self, repo: str, digest: str, link: LinkRecord) -> bool:
        """Mark a link as just used (a HEAD or GET found it), so garbage
        collection spares it for its grace window.  False if the link is gone."""
        self._check_writable()  # while etcd is known down, fail fast rather than stall the read
        key = self.keys.link(repo, digest)
        touched = LinkRecord(link.size, link.created, self.clock.now())
        result = await self.kv.txn([Compare.exists(key)], [Put(key, encode(touched))])
        return result.succeeded

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> int | None:
        """Link a blob of ``from_repo`` into ``repo``; None if the source does not have it."""
        src_key, blob_key = self.keys.link(from_repo, digest), self.keys.blob(digest)
        for _ in range(self.max_retries):
            src, blob, repo_kv = await self._read_many([src_key, blob_key, self.keys.repo(repo)])
            if src is None or blob is None:
                return None
            record = decode(BlobRecord, blob.value)
            if record.state != "live":
                return None  # being garbage collected: the client uploads it anew
            size = decode(LinkRecord, src.value).size
            now = self.clock.now()
            compares = [Compare.exists(src_key), Compare.mod_revision_is(blob_key, blob.mod_revision)]
            link = Put(self.keys.link(repo, digest), encode(LinkRecord(size, now, now)))
            ops: list[TxnOp] = [
                link,
                # Re-written so a collector that saw no link for it cannot commit.
                Put(blob_key, encode(BlobRecord(record.size, record.created))),
            ]
            if repo_kv is None:
                missing_repo, put_repo = self._ensure_repo(repo)
                compares.append(missing_repo)
                ops.append(put_repo)

            async def verify(link: Put = link) -> bool:
                return await self._wrote(link)

            if await self._txn(compares, ops, verify):
                return size
        raise Contended(f"mount of {digest} into {repo}")

    async def remove_link(self, repo: str, digest: str) -> bool:
        """Unlink a blob from a repository unless a manifest there references it."""
        link_key = self.keys.link(repo, digest)
        span = self.keys.manifests(repo)
        for _ in range(self.max_retries):
            link = await self._get(link_key)
            if link is None:
                return False
            manifests = await self._range_all(span)
            users = [
                self.keys.last_part(kv.key)
                for kv in manifests.kvs
                if digest in decode(ManifestRecord, kv.value).blobs
            ]
            if users:
                raise ReferencedBy(users)
            compares = [
                Compare.mod_revision_is(link_key, link.mod_revision),
                Compare.range_unchanged_since(span[0], span[1], manifests.revision),
            ]

            async def verify() -> bool:
                return await self._get(link_key) is None

            if await self._txn(compares, [Delete(link_key)], verify):
                return True
        raise Contended(f"delete of blob {digest} in {repo}")

    # --------------------------------------------------------------- manifests

    async def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        if (cache := await self._from_cache()) is not None:
            return cache.manifest(repo, digest)
        kv = await self._get(self.keys.manifest(repo, digest))
        return decode(ManifestRecord, kv.value) if kv else None

    async def get_tag(self, repo: str, tag: str) -> TagRecord | None:
        if (cache := await self._from_cache()) is not None:
            return cache.tag(repo, tag)
        kv = await self._get(self.keys.tag(repo, tag))
        return decode(TagRecord, kv.value) if kv else None

    async def get_tagged_manifest(self, repo: str, tag: str) -> tuple[str, ManifestRecord | None] | None:
        """A tag and its manifest read at one point in time (one barrier, or one txn)."""
        if (cache := await self._from_cache()) is not None:
            rec = cache.tag(repo, tag)
            return (rec.digest, cache.manifest(repo, rec.digest)) if rec else None
        tag_kv = await self._get(self.keys.tag(repo, tag))
        if tag_kv is None:
            return None
        digest = decode(TagRecord, tag_kv.value).digest
        return digest, await self.get_manifest(repo, digest)

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
    ) -> list[TagWrite]:
        """Commit a manifest, its referrer entry and its tags in one transaction,
        guarded by the existence of everything it references.

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
        for _ in range(self.max_retries):
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
            manifest_value = encode(record)
            now = self.clock.now()
            write_id = self.ids.new_id()
            compares = [Compare.exists(self.keys.link(repo, d)) for d in record.blobs] + [
                Compare.exists(self.keys.manifest(repo, d)) for d in record.manifests
            ]
            compares.append(
                Compare.mod_revision_is(manifest_key, existing_kv.mod_revision if existing_kv else 0)
            )
            ops: list[TxnOp] = [Put(manifest_key, manifest_value)]
            if stored_body:
                compares.append(await self._blob_guard(digest, blob_kv, body_present))
                ops.append(Put(self.keys.blob(digest), encode(BlobRecord(record.size, now))))
            if repo_kv is None:
                missing_repo, put_repo = self._ensure_repo(repo)
                compares.append(missing_repo)
                ops.append(put_repo)
            writes: list[TagWrite] = []
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
                if current is not None and (pattern := immutable_pattern(_patterns(rule_kv), tag)):
                    raise ImmutableTag(repo, tag, pattern)
                seq = (decode(TagSeqRecord, seq_kv.value).seq if seq_kv else 0) + 1
                old = current.digest if current else None
                if not planted("tag-no-compare"):  # PLANTED BUG (simulator only): the tag is unguarded
                    compares += tag_guard
                ops += [
                    Put(
                        self.keys.tag(repo, tag), encode(TagRecord(digest, seq, now, self.replica, write_id))
                    ),
                    Put(self.keys.tag_seq(repo, tag), encode(TagSeqRecord(seq))),
                    Put(
                        self.keys.history(repo, tag, seq),
                        encode(HistoryEntry(seq, now, old, digest, self.replica, "push")),
                    ),
                ]
                writes.append(TagWrite(tag, old))
            if writes:
                compares.append(self._rule_unchanged(repo, rule_kv))
            if record.subject is not None:
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

            async def verify(
                written: list[TagWrite] = writes, wid: str = write_id, manifest_value: bytes = manifest_value
            ) -> bool:
                found = await self._read_many([manifest_key] + [self.keys.tag(repo, w.tag) for w in written])
                # Our own record (its creation time), not one an earlier push left: the
                # collector spares a manifest by its age (keepYoungerThanDuration).
                if found[0] is None or found[0].value != manifest_value:
                    return False
                return all(kv is not None and decode(TagRecord, kv.value).write_id == wid for kv in found[1:])

            if await self._txn(compares, ops, verify):
                return writes
            missing = await self._missing_references(repo, record)
            if missing is not None:
                raise missing
            # Otherwise a tag or the repository changed under us: read again and retry.
        raise Contended(f"manifest {digest} in {repo}")

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        """Delete a manifest and every tag that points at it, unless an index
        in the repository references it."""
        manifest_key = self.keys.manifest(repo, digest)
        m_span, t_span = self.keys.manifests(repo), self.keys.tags(repo)
        for _ in range(self.max_retries):
            manifests = await self._range_all(m_span)
            tags = await self._range_all(t_span, revision=manifests.revision)
            target: KeyValue | None = None
            users: list[str] = []
            for kv in manifests.kvs:
                d = self.keys.last_part(kv.key)
                if d == digest:
                    target = kv
                elif digest in decode(ManifestRecord, kv.value).manifests:
                    users.append(d)
            if target is None:
                return False
            if users:
                raise ReferencedBy(users)
            record = decode(ManifestRecord, target.value)
            rev = manifests.revision
            compares = [
                Compare.range_unchanged_since(m_span[0], m_span[1], rev),
                Compare.range_unchanged_since(t_span[0], t_span[1], rev),
            ]
            ops: list[TxnOp] = [Delete(manifest_key)]
            pointing = [kv for kv in tags.kvs if decode(TagRecord, kv.value).digest == digest]
            if pointing:
                seqs = await self._read_many(
                    [self.keys.tag_seq(repo, self.keys.last_part(kv.key)) for kv in pointing]
                    + [self.keys.immutability(repo)]
                )
                rule_kv = seqs.pop()
                compares.append(self._rule_unchanged(repo, rule_kv))
                for tag_kv, seq_kv in zip(pointing, seqs, strict=True):
                    tag = self.keys.last_part(tag_kv.key)
                    if pattern := immutable_pattern(_patterns(rule_kv), tag):
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
                    ops += self._tag_delete_ops(repo, tag, digest, seq_kv)
            if record.subject is not None:
                ops.append(Delete(self.keys.referrer(repo, record.subject, digest)))
            # Not "the manifest is gone" to verify a lost reply: a concurrent delete
            # also leaves it gone.  Our marker (a fresh write id) is proof.
            marker = Put(
                self.keys.deletion(repo, digest),
                self.ids.new_id().encode(),
                lease=await self._lease_for_uploads(),
            )
            ops.append(marker)

            async def verify(marker: Put = marker) -> bool:
                found = await self._get(marker.key)
                return found is not None and found.value == marker.value

            if await self._txn(compares, ops, verify):
                return True
        raise Contended(f"delete of manifest {digest} in {repo}")

    def _rule_unchanged(self, repo: str, rule_kv: KeyValue | None) -> Compare:
        """Guard of a tag write checked against the immutability rule ``rule_kv``:
        a rule changed before the commit fails the transaction."""
        return Compare.mod_revision_is(self.keys.immutability(repo), rule_kv.mod_revision if rule_kv else 0)

    def _tag_delete_ops(self, repo: str, tag: str, old: str, seq_kv: KeyValue | None) -> list[TxnOp]:
        seq = (decode(TagSeqRecord, seq_kv.value).seq if seq_kv else 0) + 1
        entry = HistoryEntry(seq, self.clock.now(), old, None, self.replica, "delete")
        return [
            Delete(self.keys.tag(repo, tag)),
            Put(self.keys.tag_seq(repo, tag), encode(TagSeqRecord(seq))),
            Put(self.keys.history(repo, tag, seq), encode(entry)),
        ]

    async def delete_tag(self, repo: str, tag: str) -> bool:
        tag_key, seq_key = self.keys.tag(repo, tag), self.keys.tag_seq(repo, tag)
        for _ in range(self.max_retries):
            tag_kv, seq_kv, rule_kv = await self._read_many([tag_key, seq_key, self.keys.immutability(repo)])
            if tag_kv is None:
                return False
            if pattern := immutable_pattern(_patterns(rule_kv), tag):
                raise ImmutableTag(repo, tag, pattern)
            compares = [
                Compare.mod_revision_is(tag_key, tag_kv.mod_revision),
                Compare.mod_revision_is(seq_key, seq_kv.mod_revision if seq_kv else 0),
                self._rule_unchanged(repo, rule_kv),
            ]
            ops = self._tag_delete_ops(repo, tag, decode(TagRecord, tag_kv.value).digest, seq_kv)
            entry = ops[-1]
            assert isinstance(entry, Put)

            async def verify(entry: Put = entry) -> bool:
                # Not "the tag is gone": a concurrent delete also leaves it gone.
                # Our own history entry (this replica, this instant) is proof.
                found = await self._get(entry.key)
                return found is not None and found.value == entry.value

            if await self._txn(compares, ops, verify):
                return True
        raise Contended(f"delete of tag {tag} in {repo}")

    async def list_tags(self, repo: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        if (cache := await self._from_cache()) is not None:
            return cache.tag_names(repo, last, limit)
        start, end = self.keys.tags(repo)
        if last is not None:
            start = self.keys.tag(repo, last) + b"\x00"
        result = await self.kv.range(start, end, limit=limit, keys_only=True)
        return [self.keys.last_part(kv.key) for kv in result.kvs], result.more

    async def list_referrers(self, repo: str, subject: str) -> list[tuple[str, ReferrerRecord]]:
        result = await self._range_all(self.keys.referrers(repo, subject))
        return [(self.keys.last_part(kv.key), decode(ReferrerRecord, kv.value)) for kv in result.kvs]

    async def tag_history(self, repo: str, tag: str) -> list[HistoryEntry]:
        result = await self._range_all(self.keys.histories(repo, tag))
        return [decode(HistoryEntry, kv.value) for kv in result.kvs]

    async def move_tag(
        self, repo: str, tag: str, digest: str, action: str = "rollback"
    ) -> HistoryEntry | None:
        """Point ``tag`` at ``digest``, a manifest already in the repository, and
        append a new forward history entry recording ``action`` (history is never
        rewritten).  None if the tag already points there.  Raises
        MissingReferences if the manifest is not in the repository and
        ImmutableTag if an immutability rule forbids moving the tag."""
        tag_key, seq_key = self.keys.tag(repo, tag), self.keys.tag_seq(repo, tag)
        manifest_key, rule_key = self.keys.manifest(repo, digest), self.keys.immutability(repo)
        self._check_writable()
        for _ in range(self.max_retries):
            tag_kv, seq_kv, manifest_kv, rule_kv = await self._read_many(
                [tag_key, seq_key, manifest_key, rule_key]
            )
            if manifest_kv is None:
                raise MissingReferences([], [digest])
            current = decode(TagRecord, tag_kv.value) if tag_kv else None
            if current is not None and current.digest == digest:
                await self.check_writes_allowed()  # a no-op, but refused as any write while read-only
                return None
            if current is not None and (pattern := immutable_pattern(_patterns(rule_kv), tag)):
                raise ImmutableTag(repo, tag, pattern)
            seq = (decode(TagSeqRecord, seq_kv.value).seq if seq_kv else 0) + 1
            now, write_id = self.clock.now(), self.ids.new_id()
            entry = HistoryEntry(seq, now, current.digest if current else None, digest, self.replica, action)
            compares = [
                Compare.mod_revision_is(tag_key, tag_kv.mod_revision if tag_kv else 0),
                Compare.mod_revision_is(seq_key, seq_kv.mod_revision if seq_kv else 0),
                # The target is still there, unchanged, when the tag moves (invariant 2).
                Compare.mod_revision_is(manifest_key, manifest_kv.mod_revision),
                self._rule_unchanged(repo, rule_kv),
            ]
            ops: list[TxnOp] = [
                Put(tag_key, encode(TagRecord(digest, seq, now, self.replica, write_id))),
                Put(seq_key, encode(TagSeqRecord(seq))),
                Put(self.keys.history(repo, tag, seq), encode(entry)),
            ]

            async def verify(wid: str = write_id) -> bool:
                kv = await self._get(tag_key)
                return kv is not None and decode(TagRecord, kv.value).write_id == wid

            if await self._txn(compares, ops, verify):
                return entry
            # The tag, its sequence, the manifest or the rule changed: read again.
        raise Contended(f"move of tag {tag} in {repo}")

    # ------------------------------------------------------------ immutability

    async def get_immutability(self, repo: str) -> ImmutabilityRecord | None:
        kv = await self._get(self.keys.immutability(repo))
        return decode(ImmutabilityRecord, kv.value) if kv else None

    async def set_immutability(self, repo: str, patterns: Sequence[str]) -> ImmutabilityRecord | None:
        """Replace the repository's immutability patterns (none: remove the rule).
        Every tag write compares the rule's mod_revision, so no tag move checked
        against the old rule can commit after this one."""
        key = self.keys.immutability(repo)
        self._check_writable()
        if not patterns:

            async def removed() -> bool:
                return await self._get(key) is None

            for _ in range(self.max_retries):
                if await self._txn([], [Delete(key)], removed):
                    return None
            raise Contended(f"immutability rule of {repo}")
        record = ImmutabilityRecord(tuple(patterns), self.clock.now(), self.replica, self.ids.new_id())

        async def written() -> bool:
            kv = await self._get(key)
            return kv is not None and decode(ImmutabilityRecord, kv.value).write_id == record.write_id

        for _ in range(self.max_retries):
            if await self._txn([], [Put(key, encode(record))], written):
                return record
        raise Contended(f"immutability rule of {repo}")

    async def check_tag_moves(self, repo: str, digest: str, tags: Sequence[str]) -> None:
        """Raise ImmutableTag if pointing ``tags`` at ``digest`` would move an
        immutable tag.  Only a pre-check (before work a refused push would
        waste): put_manifest re-checks in its transaction."""
        if not tags:
            return
        found = await self._read_many([self.keys.immutability(repo)] + [self.keys.tag(repo, t) for t in tags])
        patterns = _patterns(found[0])
        for tag, kv in zip(tags, found[1:], strict=True):
            if kv is None or decode(TagRecord, kv.value).digest == digest:
                continue
            if pattern := immutable_pattern(patterns, tag):
                raise ImmutableTag(repo, tag, pattern)

    # ----------------------------------------------------------------- uploads

    async def _lease_for_uploads(self) -> int:
        window = int(self.clock.now() // self.upload_lease_window)
        async with self._upload_lease_lock:
            if self._upload_lease is None or self._upload_lease[0] != window:
                lease = await self.kv.grant_lease(self.upload_ttl + self.upload_lease_window)
                self._upload_lease = (window, lease)
            return self._upload_lease[1]

    async def _put_upload(self, upload_id: str, record: UploadRecord, revision: int | None = None) -> bool:
        """Write the upload record on the current window's lease; with
        ``revision``, only if the record is still at that mod_revision.  Like
        every write, it compares the read-only switch: WritesFrozen once it is on."""
        key = self.keys.upload(upload_id)
        compares = [] if revision is None else [Compare.mod_revision_is(key, revision)]
        renewed = False
        for _ in range(self.max_retries + 1):
            lease = await self._lease_for_uploads()
            guard = await self.read_only_guard.compare()  # raises WritesFrozen while read-only
            try:
                result = await self.kv.txn([*compares, guard], [Put(key, encode(record), lease=lease)])
            except (KVUnavailable, KVUnknownOutcome):
                raise
            except KVError:
                # Most likely the lease is gone (revoked, or etcd restored): take a new one.
                self._upload_lease = None
                if renewed:
                    raise
                renewed = True
                continue
            if result.succeeded:
                return True
            await self.read_only_guard.refresh()  # WritesFrozen if the switch is on now
            if await self.read_only_guard.compare() == guard:
                return False  # the switch is as it was: the record's compare failed
        raise Contended(f"write of upload {upload_id}")

    async def create_upload(self, upload_id: str, repo: str, algorithm: str) -> UploadRecord:
        now = self.clock.now()
        record = UploadRecord(repo, algorithm, now, now)
        await self._put_upload(upload_id, record)
        return record

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        kv = await self._get(self.keys.upload(upload_id))
        return decode(UploadRecord, kv.value) if kv else None

    async def confirm_upload(self, upload_id: str, repo: str) -> bool:
        """After a chunk was written: whether the upload is still open (not
        closed, cancelled or sealed by a closing PUT since), so the chunk may
        be acknowledged.  Also moves an open upload to the current lease
        window so it does not expire; that write is conditional, so it can
        neither re-open a sealed upload nor bring back a deleted one.  Raises
        WritesFrozen if the read-only switch is on: read beside the record, so a
        chunk is never acknowledged after the switch was."""
        # Two reads, not one read-only transaction: a read is retried after a
        # timeout, a transaction never is, and an unknown answer here would
        # refuse a chunk whose bytes are already staged.
        kv, switch = await asyncio.gather(
            self._get(self.keys.upload(upload_id)), self._get(self.read_only_guard.key)
        )
        self.read_only_guard.observe(switch)
        if kv is None:
            return False
        record = decode(UploadRecord, kv.value)
        if record.repo != repo or record.sealed:
            return False
        window = int(self.clock.now() // self.upload_lease_window)
        if int(record.updated // self.upload_lease_window) != window:
            touched = UploadRecord(record.repo, record.algorithm, record.created, self.clock.now())
            # A lost race here means a seal or another touch came after this
            # chunk was written: the chunk is in either way.
            await self._put_upload(upload_id, touched, kv.mod_revision)
        return True

    async def seal_upload(self, upload_id: str, repo: str, digest: str) -> UploadRecord | None:
        """Mark the upload as being closed with ``digest``; from then on no
        chunk is acknowledged.  Returns the sealed record, or None if the
        upload is gone, belongs to another repository, or was sealed for
        another digest (a repeated close with the same digest may go on)."""
        key = self.keys.upload(upload_id)
        for _ in range(self.max_retries):
            kv = await self._get(key)
            if kv is None:
                return None
            record = decode(UploadRecord, kv.value)
            if record.repo != repo:
                return None
            if record.sealed:
                return record if record.sealed == digest else None
            sealed = UploadRecord(record.repo, record.algorithm, record.created, self.clock.now(), digest)
            if await self._put_upload(upload_id, sealed, kv.mod_revision):
                return sealed
        raise Contended(f"seal of upload {upload_id}")

    async def cancel_upload(self, upload_id: str, repo: str) -> bool:
        """Delete an open upload's record; False if it is gone, belongs to
        another repository, or a closing PUT has sealed it (the close wins)."""
        key = self.keys.upload(upload_id)
        for _ in range(self.max_retries):
            kv = await self._get(key)
            if kv is None:
                return False
            record = decode(UploadRecord, kv.value)
            if record.repo != repo or record.sealed:
                return False
            guard = await self.read_only_guard.compare()  # raises WritesFrozen while read-only
            result = await self.kv.txn([Compare.mod_revision_is(key, kv.mod_revision), guard], [Delete(key)])
            if result.succeeded:
                return True
            await self.read_only_guard.refresh()
        raise Contended(f"cancel of upload {upload_id}")

    async def delete_upload(self, upload_id: str) -> bool:
        result = await self.kv.txn([], [Delete(self.keys.upload(upload_id))])
        deleted = result.responses[0] if result.responses else 0
        return isinstance(deleted, int) and deleted > 0

    async def count_uploads(self) -> int:
        """Upload sessions in progress in the whole registry (one cheap count read)."""
        result = await self.kv.range(*self.keys.uploads(), limit=1, keys_only=True)
        return result.count

    async def count_repo_uploads(self, repo: str) -> int:
        """Upload sessions in progress in ``repo``: reads every session record
        (their keys do not name the repository), so call it only when needed."""
        result = await self.kv.range(*self.keys.uploads())
        return sum(1 for kv in result.kvs if decode(UploadRecord, kv.value).repo == repo)

    async def list_upload_ids(self) -> list[str]:
        result = await self.kv.range(*self.keys.uploads(), keys_only=True)
        return [self.keys.strip("u", kv.key) for kv in result.kvs]
