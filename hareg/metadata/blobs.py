"""Blob records and their links into repositories.

A blob record (one per digest) says its bytes are stored and whether a
collector is deleting them; a link (one per repository and digest) is what
makes a blob part of a repository.  Every write that makes new use of a
blob's bytes guards against garbage collection of the same digest
(``blob_guard``); a link is removed only while no manifest of the repository
references it, checked by a range compare that fails if any manifest was
written since the check (no push can slip in between).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hareg.kv.base import Compare, Delete, KeyValue, KVUnavailable, Put, TxnOp
from hareg.metadata.errors import BlobCollected, ReferencedBy
from hareg.metadata.keys import Keys
from hareg.metadata.records import BlobRecord, LinkRecord, ManifestRecord, decode, encode
from hareg.metadata.references import ReferenceIndex
from hareg.metadata.writes import Done, Txn


@dataclass(frozen=True, slots=True)
class Mounted:
    """What a mount found or made: ``repo``'s link, and whether it was there before."""

    link: LinkRecord
    existed: bool


async def blob_guard(
    keys: Keys,
    digest: str,
    blob_kv: KeyValue | None,
    bytes_present: Callable[[], Awaitable[bool]] | None,
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
    return Compare.mod_revision_is(keys.blob(digest), blob_kv.mod_revision if blob_kv else 0)


class BlobMetadata(ReferenceIndex):
    async def get_link(self, repo: str, digest: str, *, fresh: bool = False) -> LinkRecord | None:
        """The link, from the cache once it may serve; ``fresh``: from etcd, for
        a write that decides on it (the cache may be stale while etcd is down)."""
        key = self.keys.link(repo, digest)
        return await self._record(key, LinkRecord, None if fresh else lambda c: c.link(repo, digest))

    async def get_blob(self, digest: str) -> BlobRecord | None:
        return await self._record(self.keys.blob(digest), BlobRecord)

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
        upload_key = self.keys.upload(upload_id) if upload_id is not None else None

        async def attempt() -> Txn[None]:
            reads = [blob_key, self.keys.repo(repo)] + ([upload_key] if upload_key is not None else [])
            blob_kv, repo_kv, *upload_kv = await self._read_many(reads)
            compares = [await blob_guard(self.keys, digest, blob_kv, bytes_present)]
            if repo_kv is None:
                compares.append(self._ensure_repo(repo)[0])
            if upload_key is not None and upload_kv and upload_kv[0] is not None:
                # The sealed session's record, deleted by this write: it fences
                # the write (a late first attempt finds it gone), so a closing
                # PUT whose reply was lost is re-sent like every fenced write.
                compares.append(Compare.mod_revision_is(upload_key, upload_kv[0].mod_revision))

            def build() -> Txn[None]:
                """One attempt; a re-send's link carries another time, its own."""
                now = self.clock.now()
                link = Put(link_key, encode(LinkRecord(size, now, now)))
                ops: list[TxnOp] = [Put(blob_key, encode(BlobRecord(size, now))), link]
                if upload_id is not None:
                    ops.append(Delete(self.keys.upload(upload_id)))
                if repo_kv is None:
                    ops.append(self._ensure_repo(repo)[1])
                # Fenced (re-sent after an unknown outcome) when the blob record
                # existed (a record compared missing could be created, collected
                # and be missing again before a late first attempt) or when it
                # closes an upload session whose record it compares.
                return Txn(compares, ops, lambda: self._wrote(link), None, again=build)

            return build()

        await self._write(f"link of blob {digest} into {repo}", attempt)

    async def touch_link(self, repo: str, digest: str, link: LinkRecord) -> bool:
        """Mark a link as just used (a HEAD or GET found it), so garbage
        collection spares it for its grace window.  False if the link is gone."""
        if self.etcd_known_down():  # fail fast rather than stall the read
            raise KVUnavailable("etcd is unavailable; the blob's use is not recorded")
        key = self.keys.link(repo, digest)
        touched = LinkRecord(link.size, link.created, self.clock.now())
        result = await self.kv.txn([Compare.exists(key)], [Put(key, encode(touched))])
        return result.succeeded

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> int | None:
        """Link a blob of ``from_repo`` into ``repo`` (re-written if it is there
        already); its size, None if the source does not have it."""
        mounted = await self._mount(repo, digest, from_repo, keep_existing=False)
        return mounted.link.size if mounted is not None else None

    async def find_or_mount(self, repo: str, digest: str, from_repo: str) -> Mounted | None:
        """``repo``'s link of the blob if it has one (``existed``, nothing
        written), else :meth:`mount_blob`'s new link; None if neither repository
        has it.  One read of etcd, never the cache: a link that a cache served
        stale while etcd was down may have been deleted (docs/simulation.md
        finding 18)."""
        return await self._mount(repo, digest, from_repo, keep_existing=True)

    async def _mount(self, repo: str, digest: str, from_repo: str, *, keep_existing: bool) -> Mounted | None:
        dst_key, src_key, blob_key = (
            self.keys.link(repo, digest),
            self.keys.link(from_repo, digest),
            self.keys.blob(digest),
        )
        # The target's link is read with the rest (one round trip) only when it decides.
        reads = [src_key, blob_key, self.keys.repo(repo)] + ([dst_key] if keep_existing else [])

        async def attempt() -> Txn[Mounted | None] | Done[Mounted | None]:
            src, blob, repo_kv, *dst = await self._read_many(reads)
            if dst and dst[0] is not None:
                return Done(Mounted(decode(LinkRecord, dst[0].value), existed=True))
            if src is None or blob is None:
                return Done(None)
            record = decode(BlobRecord, blob.value)
            if record.state != "live":
                return Done(None)  # being garbage collected: the client uploads it anew
            size = decode(LinkRecord, src.value).size
            compares = [Compare.exists(src_key), Compare.mod_revision_is(blob_key, blob.mod_revision)]
            if repo_kv is None:
                compares.append(self._ensure_repo(repo)[0])

            def build() -> Txn[Mounted | None]:
                """One attempt; a re-send's link carries another time, its own."""
                now = self.clock.now()
                made = LinkRecord(size, now, now)
                link = Put(dst_key, encode(made))
                ops: list[TxnOp] = [
                    link,
                    # Re-written so a collector that saw no link for it cannot commit.
                    Put(blob_key, encode(BlobRecord(record.size, record.created))),
                ]
                if repo_kv is None:
                    ops.append(self._ensure_repo(repo)[1])
                return Txn(
                    compares, ops, lambda: self._wrote(link), Mounted(made, existed=False), again=build
                )

            return build()

        return await self._write(f"mount of {digest} into {repo}", attempt)

    async def remove_link(self, repo: str, digest: str) -> bool:
        """Unlink a blob from a repository unless a manifest there references it:
        found in the reverse-reference index (metadata/manifests.py), or while
        that is not built yet, in every manifest of the repository."""
        link_key = self.keys.link(repo, digest)
        span = self.keys.manifests(repo)

        async def attempt() -> Txn[bool] | Done[bool]:
            link = await self._get(link_key)
            if link is None:
                return Done(False)
            compares = [Compare.mod_revision_is(link_key, link.mod_revision)]
            ops: list[TxnOp] = [Delete(link_key)]
            if await self.reference_index_ready():
                users = await self.users_of(repo, digest, as_child=False)
                if users.referrers:
                    raise ReferencedBy(users.referrers)
                compares += self._unreferenced(repo, digest, users)
                ops += [Delete(key) for key in users.stale]
            else:
                manifests = await self._range_all(span)
                referrers = [
                    self.keys.last_part(kv.key)
                    for kv in manifests.kvs
                    if digest in decode(ManifestRecord, kv.value).blobs
                ]
                if referrers:
                    raise ReferencedBy(referrers)
                compares.append(Compare.range_unchanged_since(span[0], span[1], manifests.revision))

            txn = Txn(
                compares,
                ops,
                lambda: self._absent_while_writable(link_key),
                True,
                again=lambda: txn,  # a delete carries no id: "gone" verifies either attempt
            )
            return txn

        return await self._write(f"delete of blob {digest} in {repo}", attempt)
