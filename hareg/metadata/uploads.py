"""Upload sessions: their records, on a lease shared per time window, and
the states a session goes through (open, claimed by a request staging a
chunk, sealed by a closing PUT, gone).  The record keeps the acknowledged
size: a chunk counts once its writer's claim is released with the new size,
so a request that died leaves the upload as it was (docs/consistency.md).

Like every write, each record write compares the cluster read-only switch
(switch.py): no session starts, moves or closes once the switch is on.
These writes keep loops of their own rather than ``StoreBase._write`` (a
record write takes a new lease when its lease is gone) around its
transaction step, ``StoreBase._txn``: an unknown outcome is verified by the
record's write id and, for a write that compares the record's revision, re-sent
while it did not apply; like every write they ride out an etcd election.
"""

from __future__ import annotations

from dataclasses import replace

from hareg.kv.base import Compare, Delete, KeyValue, KVError, KVUnavailable, KVUnknownOutcome, Put
from hareg.metadata.errors import Contended, MetadataError
from hareg.metadata.records import UploadRecord, decode, encode
from hareg.metadata.writes import StoreBase, Txn


class UploadBusy(MetadataError):
    """Another request is staging a chunk of the upload; its claim holds for
    ``left`` seconds more unless it ends sooner."""

    def __init__(self, upload_id: str, left: float) -> None:
        super().__init__(f"upload {upload_id} is being written by another request")
        self.left = left


def _of_repo(kv: KeyValue | None, repo: str) -> UploadRecord | None:
    """The upload record read as ``kv``, if there is one and it is ``repo``'s
    (a session's URL names its repository; another repository's is no match)."""
    if kv is None:
        return None
    record = decode(UploadRecord, kv.value)
    return record if record.repo == repo else None


class UploadMetadata(StoreBase):
    async def _put_upload(self, upload_id: str, record: UploadRecord, revision: int | None = None) -> bool:
        """Write the upload record on the current window's lease; with
        ``revision``, only if the record is still at that mod_revision (False
        if it is not).  Like every write, it compares the read-only switch
        (WritesFrozen once it is on) and goes through ``StoreBase._txn``: an
        unknown outcome is verified by the attempt's write id, and a write
        with ``revision`` (fenced: it compares the key it writes) is re-sent
        while verification shows it did not apply."""
        key = self.keys.upload(upload_id)
        compares = [] if revision is None else [Compare.mod_revision_is(key, revision)]
        renewed = False
        for _ in range(self.max_retries + 1):
            lease = await self._through_election(self._lease_for_uploads)

            def attempt(lease: int = lease) -> Txn[bool]:
                put = Put(key, encode(replace(record, write_id=self.ids.new_id())), lease=lease)
                return Txn(compares, [put], lambda: self._wrote(put), True, again=attempt)

            try:
                return await self._txn(attempt()) is not None
            except (KVUnavailable, KVUnknownOutcome):
                raise
            except KVError:
                # Most likely the lease is gone (revoked, or etcd restored): take a new one.
                self._upload_lease = None
                if renewed:
                    raise
                renewed = True
        raise Contended(f"write of upload {upload_id}")

    async def create_upload(self, upload_id: str, repo: str, algorithm: str) -> UploadRecord:
        now = self.clock.now()
        record = UploadRecord(repo, algorithm, now, now, size=0)
        await self._put_upload(upload_id, record)
        return record

    async def get_upload(self, upload_id: str) -> UploadRecord | None:
        return await self._record(self.keys.upload(upload_id), UploadRecord)

    async def claim_upload(self, upload_id: str, repo: str, writer: str, ttl: float) -> UploadRecord | None:
        """Claim the open upload for ``writer``, a request about to stage a
        chunk, for ``ttl`` seconds: returns the claimed record (its ``size``
        is what was acknowledged; staged bytes past it are a dead request's),
        None if the upload is gone, another repository's or sealed.  Raises
        UploadBusy while another writer's claim holds; a lapsed one (its
        writer died without releasing it) is taken over.  The write also moves
        the record to the current lease window, so an active upload does not
        expire."""
        key = self.keys.upload(upload_id)
        for _ in range(self.max_retries):
            kv = await self._get_for_write(key)
            record = _of_repo(kv, repo)
            if kv is None or record is None or record.sealed:
                return None
            now = self.clock.now()
            if record.writer and record.writer != writer and record.writer_until > now:
                raise UploadBusy(upload_id, record.writer_until - now)
            claimed = replace(record, updated=now, writer=writer, writer_until=now + ttl)
            if await self._put_upload(upload_id, claimed, kv.mod_revision):
                return claimed
        raise Contended(f"claim of upload {upload_id}")

    async def release_upload(self, upload_id: str, repo: str, writer: str, size: int | None) -> bool:
        """End ``writer``'s claim; with ``size``, acknowledge its chunk (the
        upload now holds ``size`` bytes).  False if the claim is no longer
        ``writer``'s: the upload was sealed by a closing PUT, cancelled or
        expired, or the claim lapsed and another request took it over.  Then
        the chunk is not part of the upload (a closing PUT commits exactly the
        acknowledged bytes)."""
        key = self.keys.upload(upload_id)
        for _ in range(self.max_retries):
            kv = await self._get_for_write(key)
            record = _of_repo(kv, repo)
            if kv is None or record is None or record.sealed or record.writer != writer:
                return False
            released = replace(
                record,
                updated=self.clock.now(),
                writer="",
                writer_until=0.0,
                size=record.size if size is None else size,
            )
            if await self._put_upload(upload_id, released, kv.mod_revision):
                return True
        raise Contended(f"release of upload {upload_id}")

    async def seal_upload(
        self, upload_id: str, repo: str, digest: str, *, writer: str = "", size: int | None = None
    ) -> UploadRecord | None:
        """Mark the upload as being closed with ``digest``; from then on no
        chunk is acknowledged (a writer's claim ends: its release fails).
        A closing PUT that staged a last chunk passes its claim (``writer``)
        and the size with that chunk, which is acknowledged only if the claim
        is still its own.  Returns the sealed record, or None if the upload is
        gone, belongs to another repository, was sealed for another digest (a
        repeated close with the same digest may go on) or ``writer``'s claim
        was lost."""
        key = self.keys.upload(upload_id)
        for _ in range(self.max_retries):
            kv = await self._get_for_write(key)
            record = _of_repo(kv, repo)
            if kv is None or record is None:
                return None
            if record.sealed:
                return record if record.sealed == digest and not writer else None
            if writer and record.writer != writer:
                return None
            sealed = replace(
                record,
                updated=self.clock.now(),
                sealed=digest,
                writer="",
                writer_until=0.0,
                size=record.size if size is None else size,
            )
            if await self._put_upload(upload_id, sealed, kv.mod_revision):
                return sealed
        raise Contended(f"seal of upload {upload_id}")

    async def cancel_upload(self, upload_id: str, repo: str) -> bool:
        """Delete an open upload's record; False if it is gone, belongs to
        another repository, or a closing PUT has sealed it (the close wins)."""
        key = self.keys.upload(upload_id)
        for _ in range(self.max_retries):
            kv = await self._get_for_write(key)
            record = _of_repo(kv, repo)
            if kv is None or record is None or record.sealed:
                return False
            guard = await self.read_only_guard.compare()  # raises WritesFrozen while read-only
            result = await self._commit([Compare.mod_revision_is(key, kv.mod_revision), guard], [Delete(key)])
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
