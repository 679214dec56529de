"""Upload sessions: their records, on a lease shared per time window, and
the states a session goes through (open, sealed by a closing PUT, gone).

Like every write, each record write compares the cluster read-only switch
(switch.py): no session starts, moves or closes once the switch is on.
These writes keep loops of their own rather than ``StoreBase._write``: a
record write takes a new lease when its lease is gone, and an unknown outcome
is passed on to the client (which may repeat the request) rather than verified.
"""

from __future__ import annotations

import contextlib

from hareg.kv.base import Compare, Delete, KeyValue, KVError, KVUnavailable, KVUnknownOutcome, Put
from hareg.metadata.errors import Contended
from hareg.metadata.records import UploadRecord, decode, encode
from hareg.metadata.switch import WritesFrozen
from hareg.metadata.writes import StoreBase


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
        return await self._record(self.keys.upload(upload_id), UploadRecord)

    async def confirm_upload(self, upload_id: str, repo: str) -> bool:
        """After a chunk was written: whether the upload is still open (not
        closed, cancelled or sealed by a closing PUT since), so the chunk may
        be acknowledged.  Also moves an open upload to the current lease
        window so it does not expire; that write is conditional, so it can
        neither re-open a sealed upload nor bring back a deleted one."""
        kv = await self._get(self.keys.upload(upload_id))
        record = _of_repo(kv, repo)
        if kv is None or record is None or record.sealed:
            return False
        window = int(self.clock.now() // self.upload_lease_window)
        if int(record.updated // self.upload_lease_window) != window:
            touched = UploadRecord(record.repo, record.algorithm, record.created, self.clock.now())
            # A lost race here means a seal or another touch came after this
            # chunk was written, or the read-only switch was turned on after
            # the chunk's check: the chunk is in either way.
            with contextlib.suppress(WritesFrozen):
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
            record = _of_repo(kv, repo)
            if kv is None or record is None:
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
            record = _of_repo(kv, repo)
            if kv is None or record is None or record.sealed:
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
