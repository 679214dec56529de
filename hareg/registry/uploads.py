"""Blob uploads: monolithic, POST then PUT, and chunked PATCHes.

Bytes are hashed on their way to the blob store.  A replica keeps the running
hash of uploads it has seen in a bounded cache; when another replica wrote
the last chunk (or the cache lost it) the staged bytes are hashed again from
the store, so the digest is always verified before the blob becomes visible
(invariant 3 of docs/invariants.md).

A chunk is all or nothing.  Its request claims the upload's etcd record,
drops what a request that died staged past the acknowledged size, stages its
bytes, and is acknowledged only by releasing its claim with the new size; a
chunk that fails (its body cut off, a dependency down, the request
cancelled) gives its bytes back, so the same request may be sent again
(docs/consistency.md, "Requests that die").

Closing an upload verifies and commits one exact byte range, whatever races
it: the closing PUT first seals the upload's etcd record (after which no
chunk is acknowledged: the seal ends any claim, so a chunk's release fails),
drops what is staged past the sealed size, seals the staging in the store,
and verifies and commits exactly the acknowledged bytes.  A cancel and a
close race on the record: whichever changes it first wins, the other gets
BLOB_UPLOAD_UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from hareg.ids import IdSource
from hareg.kv.base import KVError, KVUnknownOutcome
from hareg.metadata.errors import Contended
from hareg.metadata.records import UploadRecord
from hareg.metadata.store import BlobCollected, MetadataStore
from hareg.metadata.uploads import UploadBusy
from hareg.plants import planted
from hareg.registry.digests import DEFAULT_ALGORITHM, Digest, check_algorithm, new_hasher, parse_digest
from hareg.registry.errors import ErrorCode, RangeNotSatisfiable, RegistryError, unavailable
from hareg.registry.hashing import Hashing, InlineHashing, feed
from hareg.registry.names import check_name
from hareg.registry.results import BlobInfo, UploadStatus
from hareg.registry.streams import Metered
from hareg.storage.base import BlobStore, UploadNotFound, UploadOffsetMismatch

log = logging.getLogger("hareg.uploads")

_SEALED = "the upload is being completed by another request"
# How often a request waiting for another's claim on an upload looks again (doubling).
_CLAIM_POLL = 0.02
# A session start whose record write had an unknown outcome is tried again
# under a fresh id (see start); once.
_START_ATTEMPTS = 2
_CLAIM_POLL_MAX = 0.5

_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def range_header(size: int) -> str:
    # The spec's inclusive "0-<end>"; an empty upload is reported as "0-0" like distribution does.
    return f"0-{max(size - 1, 0)}"


def _too_many_sessions(why: str, field: str) -> RegistryError:
    return RegistryError(
        ErrorCode.TOOMANYREQUESTS,
        f"{why}, the most {field} allows; finish or cancel some, or raise {field}",
        detail={"limit": field},
    )


class UploadService:
    def __init__(
        self,
        meta: MetadataStore,
        store: BlobStore,
        ids: IdSource,
        *,
        hasher_cache_size: int = 1024,
        hashing: Hashing | None = None,
        max_sessions: int = 0,
        max_sessions_per_repository: int = 0,
        max_blob_size: int = 0,
        claim_ttl: float = 10.0,
        claim_wait: float = 10.0,
    ) -> None:
        # A chunk's writer claims the upload for claim_ttl seconds (renewed
        # while its body streams); a request finding the upload claimed waits
        # at most claim_wait seconds for the claim to end or lapse.
        self.claim_ttl = claim_ttl
        self.claim_wait = claim_wait
        self._giving_back: set[asyncio.Future[None]] = set()
        # limits.maxUploadSessions, limits.maxUploadSessionsPerRepository and
        # limits.maxBlobSize (0: unlimited).
        self.max_sessions = max_sessions
        self.max_sessions_per_repository = max_sessions_per_repository
        self.max_blob_size = max_blob_size
        self.hashing: Hashing = hashing or InlineHashing()
        self.meta = meta
        self.store = store
        self.ids = ids
        self._hashers: OrderedDict[str, tuple[int, str, hashlib._Hash]] = OrderedDict()
        self._hasher_cache_size = hasher_cache_size

    # ------------------------------------------------------------- hash cache

    def _cached_hasher(self, upload_id: str, offset: int, algorithm: str) -> hashlib._Hash | None:
        if offset == 0:
            return new_hasher(algorithm)
        entry = self._hashers.get(upload_id)
        if entry is None or entry[0] != offset or entry[1] != algorithm:
            return None
        return entry[2].copy()

    def _remember(self, upload_id: str, offset: int, algorithm: str, hasher: hashlib._Hash) -> None:
        self._hashers[upload_id] = (offset, algorithm, hasher)
        self._hashers.move_to_end(upload_id)
        while len(self._hashers) > self._hasher_cache_size:
            self._hashers.popitem(last=False)

    # ---------------------------------------------------------------- session

    async def _session(self, repo: str, upload_id: str, *, open_only: bool = True) -> UploadRecord:
        """The upload's record; BLOB_UPLOAD_UNKNOWN if there is none in
        ``repo`` or (``open_only``) a closing PUT has sealed it."""
        check_name(repo)
        if not _UPLOAD_ID_RE.match(upload_id):
            raise _unknown(upload_id)
        record = await self.meta.get_upload(upload_id)
        if record is None or record.repo != repo:
            raise _unknown(upload_id)
        if open_only and record.sealed:
            raise _unknown(upload_id, _SEALED)
        return record

    async def _size(self, upload_id: str) -> int:
        size = await self.store.upload_size(upload_id)
        if size is None:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} has no staged data")
        return size

    # -------------------------------------------------------------- limits

    async def _check_session_caps(self, repo: str) -> None:
        """Refuse a new session while the configured number are in progress.
        The count is read, not reserved: POSTs racing each other may overshoot
        the cap by as many as race, never without bound."""
        if not (self.max_sessions or self.max_sessions_per_repository):
            return
        total = await self.meta.count_uploads()
        if self.max_sessions and total >= self.max_sessions:
            raise _too_many_sessions(f"{total} uploads are in progress", "limits.maxUploadSessions")
        cap = self.max_sessions_per_repository
        # A repository cannot hold more sessions than there are: skip reading them all.
        if cap and total >= cap and await self.meta.count_repo_uploads(repo) >= cap:
            raise _too_many_sessions(
                f"{cap} or more uploads are in progress in {repo}", "limits.maxUploadSessionsPerRepository"
            )

    def _size_cap(self, size: int, length: int | None) -> tuple[int | None, RegistryError | None]:
        """The most bytes a chunk appended at ``size`` may carry under
        limits.maxBlobSize, and the error for one that carries more."""
        if not self.max_blob_size:
            return None, None
        over = RegistryError(
            ErrorCode.SIZE_INVALID,
            f"the blob would be larger than limits.maxBlobSize ({self.max_blob_size} bytes); "
            "the chunk was refused",
            detail={"limit": "limits.maxBlobSize", "maxBlobSize": self.max_blob_size},
            status=413,
        )
        if length is not None and size + length > self.max_blob_size:
            raise over  # declared too long: refused before a byte is read
        return self.max_blob_size - size, over

    async def start(self, repo: str, algorithm: str = DEFAULT_ALGORITHM) -> UploadStatus:
        check_name(repo)
        check_algorithm(algorithm)
        await self._check_session_caps(repo)
        for attempt in range(_START_ATTEMPTS):
            upload_id = self.ids.new_id()
            await self.store.upload_start(upload_id)
            try:
                await self.meta.create_upload(upload_id, repo, algorithm)
            except KVUnknownOutcome:
                # The record may still come to exist, but its id is never
                # handed out: unused, it expires with its lease (and the
                # janitor drops its staged bytes).  A fresh id is safe.
                if attempt == _START_ATTEMPTS - 1:
                    raise
                continue
            return UploadStatus(repo, upload_id, 0)
        raise AssertionError("unreachable")

    async def status(self, repo: str, upload_id: str) -> UploadStatus:
        record = await self._session(repo, upload_id, open_only=False)
        staged = await self._size(upload_id)
        # The acknowledged bytes: what a request that died staged past them is not in.
        return UploadStatus(repo, upload_id, staged if record.size < 0 else min(record.size, staged))

    # ----------------------------------------------------------------- claims

    async def _claim(self, repo: str, upload_id: str) -> tuple[UploadRecord, str]:
        """Claim the open upload for a new writer (this request), waiting up
        to ``claim_wait`` seconds for another request's claim to end or lapse
        (503 with Retry-After past that); returns the claimed record and the
        writer's id."""
        writer = self.ids.new_id()
        clock = self.meta.clock
        deadline = clock.monotonic() + self.claim_wait
        pause = _CLAIM_POLL
        while True:
            try:
                record = await self.meta.claim_upload(upload_id, repo, writer, self.claim_ttl)
            except UploadBusy as busy:
                left = deadline - clock.monotonic()
                if left <= 0:
                    raise RegistryError(
                        ErrorCode.UNAVAILABLE,
                        f"upload {upload_id} is being written by another request; try again",
                        headers={"Retry-After": str(max(1, math.ceil(busy.left)))},
                    ) from None
                await clock.sleep(min(pause, left, busy.left))
                pause = min(pause * 2, _CLAIM_POLL_MAX)
                continue
            if record is None:
                raise _unknown(upload_id, "the upload was completed, cancelled or expired")
            return record, writer

    async def _acknowledged(self, repo: str, upload_id: str, record: UploadRecord, writer: str) -> int:
        """The upload's acknowledged size, once the staged bytes past it (of a
        request that died) are dropped; the caller holds the claim."""
        if record.size < 0:  # a record from before sizes were kept
            return await self._size(upload_id)
        try:
            staged = await self.store.upload_truncate(upload_id, record.size)
        except UploadNotFound:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} has no staged data"
            ) from None
        if staged < record.size:
            # The store lost acknowledged bytes (a filesystem crash loses the
            # unsynced tail of a staging): the record follows the store, and
            # the client resumes from what is left.
            await self.meta.release_upload(upload_id, repo, writer, staged)
            raise RangeNotSatisfiable(
                f"the blob store lost the upload's bytes past {staged}; send them again from there",
                headers={"Range": range_header(staged)},
            )
        return staged

    async def _give_back(self, repo: str, upload_id: str, writer: str) -> None:
        """After a failed chunk: drop the bytes it staged and end its claim,
        leaving the upload as it was before the request.  Best effort: the
        next request that claims the upload drops them anyway.  Runs to its
        end even if the request is cancelled meanwhile."""
        self._hashers.pop(upload_id, None)
        task = asyncio.ensure_future(self._release_unacknowledged(repo, upload_id, writer))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    async def settle(self) -> None:
        """Wait (at most ``claim_wait`` seconds) for failed chunks still giving
        their bytes back, so none is cut off when the replica stops; one that
        is cut off leaves its bytes to the next request on the upload."""
        pending = list(self._giving_back)
        if pending:
            await asyncio.wait(pending, timeout=self.claim_wait)

    async def _release_unacknowledged(self, repo: str, upload_id: str, writer: str) -> None:
        try:
            # Claimed again first: if the chunk's release applied after all
            # (an unknown outcome), the record's size includes it and nothing
            # is dropped; if another request holds the upload, it is its call.
            record = await self.meta.claim_upload(upload_id, repo, writer, self.claim_ttl)
            if record is None:
                return
            if record.size >= 0:
                await self.store.upload_truncate(upload_id, record.size)
            await self.meta.release_upload(upload_id, repo, writer, None)
        except Exception as exc:  # the claim lapses; the next writer drops the bytes
            log.info("upload %s: the bytes of a failed chunk stay until the next request: %s", upload_id, exc)

    async def _renewing(
        self, repo: str, upload_id: str, writer: str, chunks: AsyncIterable[bytes]
    ) -> AsyncIterator[bytes]:
        """``chunks``, renewing the claim while a long body streams."""
        clock = self.meta.clock
        renew_at = clock.monotonic() + self.claim_ttl / 2
        async for chunk in chunks:
            if clock.monotonic() >= renew_at:
                renew_at = clock.monotonic() + self.claim_ttl / 2
                try:
                    held = await self.meta.claim_upload(upload_id, repo, writer, self.claim_ttl) is not None
                except UploadBusy:
                    held = False
                except (KVError, Contended) as exc:
                    # Not fatal: if the claim lapses meanwhile and another request
                    # takes it over, the release fails and the chunk is refused.
                    log.info("upload %s: the claim could not be renewed: %s", upload_id, exc)
                    held = True
                if not held:
                    raise _unknown(
                        upload_id,
                        "the upload was completed, cancelled or taken over while this chunk was sent",
                    )
            yield chunk

    def _refuse_early(self, record: UploadRecord, start: int | None, length: int | None) -> None:
        """Refuse a chunk whose headers alone show it cannot fit, before the
        upload is claimed (a refusal writes nothing).  Checked again once
        claimed: the acknowledged size may move meanwhile."""
        if record.size < 0:
            return
        if start is not None and start != record.size:
            raise RangeNotSatisfiable(
                f"chunk starts at {start} but the upload has {record.size} bytes",
                headers={"Range": range_header(record.size)},
            )
        self._size_cap(record.size, length)

    async def _append(
        self,
        record: UploadRecord,
        upload_id: str,
        size: int,
        chunks: AsyncIterable[bytes],
        start: int | None,
        length: int | None,
    ) -> tuple[int, hashlib._Hash | None]:
        """Stage a chunk at ``size`` (the acknowledged size); the new size and
        the running hash up to it (None if it is not known here)."""
        if start is not None and start != size:
            raise RangeNotSatisfiable(
                f"chunk starts at {start} but the upload has {size} bytes",
                headers={"Range": range_header(size)},
            )
        hasher = self._cached_hasher(upload_id, size, record.algorithm)
        cap, over_cap = self._size_cap(size, length)
        meter = Metered(hasher, limit=length, hashing=self.hashing, cap=cap, over_cap=over_cap)
        try:
            new_size = await self.store.upload_write(upload_id, size, meter.wrap(chunks))
            await meter.settled()  # a driver may stop reading before the stream's end
        except UploadOffsetMismatch as exc:
            raise RangeNotSatisfiable(
                f"a concurrent write moved the upload to {exc.expected} bytes",
                headers={"Range": range_header(size)},
            ) from None
        except UploadNotFound:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is gone") from None
        if length is not None and meter.count != length:
            raise RegistryError(
                ErrorCode.SIZE_INVALID,
                f"chunk declared {length} bytes but carried {meter.count}; none of it was kept",
                headers={"Range": range_header(size)},
            )
        return new_size, (hasher if new_size == size + meter.count else None)

    async def write(
        self,
        repo: str,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        *,
        start: int | None = None,
        length: int | None = None,
    ) -> UploadStatus:
        """Append a chunk (PATCH).  ``start`` from Content-Range must equal the
        acknowledged size (416 otherwise); ``length`` is the declared chunk
        length.  All or nothing: a chunk that fails (its body cut off, a
        dependency down) leaves the upload as it was, so the same request
        may be sent again."""
        # The read-only switch is read before any byte is staged, so a chunk
        # refused for it leaves nothing behind (a lagging replica's own view
        # may not know yet; docs/operations.md).
        await self.meta.check_writes_allowed()
        self._refuse_early(await self._session(repo, upload_id), start, length)
        record, writer = await self._claim(repo, upload_id)
        try:
            size = await self._acknowledged(repo, upload_id, record, writer)
            body = self._renewing(repo, upload_id, writer, chunks)
            new_size, hasher = await self._append(record, upload_id, size, body, start, length)
            # Acknowledged only if the claim is still this request's: then no
            # closing PUT sealed the upload meanwhile, nor did another request take it over.
            acknowledged = await self.meta.release_upload(upload_id, repo, writer, new_size)
        except BaseException:
            await self._give_back(repo, upload_id, writer)
            raise
        if not acknowledged:
            self._hashers.pop(upload_id, None)
            raise _unknown(upload_id, "the upload was completed or cancelled while this chunk was sent")
        if hasher is not None:
            self._remember(upload_id, new_size, record.algorithm, hasher)
        else:
            self._hashers.pop(upload_id, None)
        return UploadStatus(repo, upload_id, new_size)

    async def finish(
        self,
        repo: str,
        upload_id: str,
        digest_text: str | None,
        chunks: AsyncIterable[bytes] | None,
        *,
        start: int | None = None,
        length: int | None = None,
    ) -> BlobInfo:
        """Close an upload (PUT ?digest=), with an optional last chunk."""
        if not digest_text:
            raise RegistryError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
        digest = parse_digest(digest_text)
        # A repeated close (a retry after a lost answer) may find the upload
        # sealed for this digest already, and then only verifies again.
        record = await self._session(repo, upload_id, open_only=chunks is not None)
        if record.sealed and record.sealed != str(digest):
            raise _unknown(upload_id, _SEALED)
        hasher: hashlib._Hash | None = None
        if chunks is not None:
            await self.meta.check_writes_allowed()  # as for a PATCH: before any byte is staged
            self._refuse_early(record, start, length)
            record, writer = await self._claim(repo, upload_id)
            try:
                size = await self._acknowledged(repo, upload_id, record, writer)
                whole = size == 0 and not start and not planted("commit-unverified-bytes")
            except BaseException:
                await self._give_back(repo, upload_id, writer)
                raise
            if whole:
                return await self._finish_whole(repo, upload_id, writer, digest, chunks, length)
            try:
                body = self._renewing(repo, upload_id, writer, chunks)
                new_size, hasher = await self._append(record, upload_id, size, body, start, length)
                # The seal acknowledges the last chunk, if the claim is still ours.
                sealed = await self.meta.seal_upload(
                    upload_id, repo, str(digest), writer=writer, size=new_size
                )
            except BaseException:
                await self._give_back(repo, upload_id, writer)
                raise
            if sealed is None:
                await self._give_back(repo, upload_id, writer)
                raise _unknown(upload_id, "the upload was completed or cancelled by another request")
            if hasher is not None and record.algorithm == digest.algorithm:
                self._remember(upload_id, new_size, record.algorithm, hasher)
        else:
            sealed = await self.meta.seal_upload(upload_id, repo, str(digest))
            if sealed is None:
                raise _unknown(upload_id, "the upload was completed or cancelled by another request")
        unverified = planted("commit-unverified-bytes")
        try:
            # PLANTED BUG "commit-unverified-bytes" (simulator only): the old
            # code measured the staging without sealing it and committed
            # whatever it held by then.
            if unverified:
                size = await self._size(upload_id)
            else:
                if sealed.size >= 0:
                    # What a request that died (or one the seal cut off) staged
                    # past the acknowledged bytes is dropped before the staging is sealed.
                    await self.store.upload_truncate(upload_id, sealed.size)
                staged = await self.store.upload_seal(upload_id)
                size = staged if sealed.size < 0 else sealed.size
            hasher = self._cached_hasher(upload_id, size, digest.algorithm)
            if hasher is None:
                hasher = new_hasher(digest.algorithm)
                read = 0
                async for chunk in self.store.upload_read(upload_id, size):
                    read += len(chunk)
                    await feed(self.hashing, hasher, chunk)
                if read != size:
                    raise unavailable(f"upload {upload_id} changed while it was verified; try again")
            # PLANTED BUG "upload-no-digest" (simulator only): the digest check is skipped.
            if hasher.hexdigest() != digest.hex and not planted("upload-no-digest"):
                await self._discard(upload_id)
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    f"uploaded content does not match digest {digest}",
                    detail={"expected": str(digest), "actual": f"{digest.algorithm}:{hasher.hexdigest()}"},
                )
            if unverified:
                size = await self._size(upload_id)
            await self.store.upload_commit(upload_id, str(digest), size)
        except UploadNotFound:
            raise _unknown(upload_id, "the upload was completed or cancelled by another request") from None
        except UploadOffsetMismatch:
            raise unavailable(f"upload {upload_id} changed while it was committed; try again") from None
        self._hashers.pop(upload_id, None)
        await self._link(repo, str(digest), size, upload_id)
        return BlobInfo(str(digest), size)

    async def monolithic(
        self, repo: str, digest_text: str, chunks: AsyncIterable[bytes], *, length: int | None = None
    ) -> BlobInfo:
        """Single-POST upload: no session in etcd, the bytes are verified on the way in."""
        check_name(repo)
        digest = parse_digest(digest_text)
        upload_id = self.ids.new_id()
        cap, over_cap = self._size_cap(0, length)
        meter = Metered(
            new_hasher(digest.algorithm), limit=length, hashing=self.hashing, cap=cap, over_cap=over_cap
        )
        await self.store.upload_start(upload_id)
        try:
            verify = self._verifier(digest, meter, length)
            size = await self.store.upload_put(upload_id, str(digest), meter.wrap(chunks), verify, length)
        except BaseException:
            await self.store.upload_abort(upload_id)
            raise
        await self._link(repo, str(digest), size, None)
        return BlobInfo(str(digest), size)

    def _verifier(
        self, digest: Digest, meter: Metered, length: int | None, *, on_mismatch: list[bool] | None = None
    ) -> Callable[[int], Awaitable[None]]:
        """The check ``upload_put`` runs after the last byte and before the
        blob becomes visible: the declared length, then the digest."""

        async def verify(size: int) -> None:
            await meter.settled()
            if length is not None and size != length:
                raise RegistryError(ErrorCode.SIZE_INVALID, f"declared {length} bytes, received {size}")
            assert meter.hasher is not None
            # PLANTED BUG "upload-no-digest" (simulator only): the digest check is skipped.
            if meter.hasher.hexdigest() != digest.hex and not planted("upload-no-digest"):
                if on_mismatch is not None:
                    on_mismatch.append(True)
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    f"uploaded content does not match digest {digest}",
                    detail={
                        "expected": str(digest),
                        "actual": f"{digest.algorithm}:{meter.hasher.hexdigest()}",
                    },
                )

        return verify

    async def _finish_whole(
        self,
        repo: str,
        upload_id: str,
        writer: str,
        digest: Digest,
        chunks: AsyncIterable[bytes],
        length: int | None,
    ) -> BlobInfo:
        """A closing PUT that carries the whole blob (nothing was staged
        before it; the caller holds the claim): its body goes straight into
        the blob (``upload_put``), verified before the blob becomes visible,
        instead of being staged, read back and copied.  The seal then only
        closes the record: the bytes committed are exactly the verified ones
        whatever races the record."""
        cap, over_cap = self._size_cap(0, length)
        meter = Metered(
            new_hasher(digest.algorithm), limit=length, hashing=self.hashing, cap=cap, over_cap=over_cap
        )
        mismatch: list[bool] = []
        verify = self._verifier(digest, meter, length, on_mismatch=mismatch)
        body = self._renewing(repo, upload_id, writer, chunks)
        try:
            size = await self.store.upload_put(upload_id, str(digest), meter.wrap(body), verify, length)
        except UploadNotFound:
            await self._give_back(repo, upload_id, writer)
            raise _unknown(upload_id, "the upload was completed or cancelled by another request") from None
        except UploadOffsetMismatch:
            await self._give_back(repo, upload_id, writer)
            raise unavailable(f"upload {upload_id} changed while it was committed; try again") from None
        except BaseException:
            if mismatch:  # as in the staged close: a wrong digest ends the upload
                await self._discard(upload_id)
            else:
                await self._give_back(repo, upload_id, writer)
            raise
        self._hashers.pop(upload_id, None)
        # The blob holds verified bytes now; if the seal fails (the claim was
        # lost to another request), they are merely unreferenced.
        if await self.meta.seal_upload(upload_id, repo, str(digest), writer=writer, size=size) is None:
            raise _unknown(upload_id, "the upload was completed or cancelled by another request")
        await self._link(repo, str(digest), size, upload_id)
        return BlobInfo(str(digest), size)

    async def _link(self, repo: str, digest: str, size: int, upload_id: str | None) -> None:
        async def bytes_present() -> bool:
            return await self.store.stat(digest) is not None

        try:
            await self.meta.add_blob(repo, digest, size, upload_id, bytes_present=bytes_present)
        except BlobCollected:
            raise unavailable(
                f"blob {digest} was being garbage collected while it was uploaded; upload it again"
            ) from None

    async def _discard(self, upload_id: str) -> None:
        self._hashers.pop(upload_id, None)
        await self.store.upload_abort(upload_id)
        await self.meta.delete_upload(upload_id)

    async def cancel(self, repo: str, upload_id: str) -> None:
        await self._session(repo, upload_id)
        if not await self.meta.cancel_upload(upload_id, repo):
            raise _unknown(upload_id, "the upload was completed or cancelled by another request")
        self._hashers.pop(upload_id, None)
        await self.store.upload_abort(upload_id)


def _unknown(upload_id: str, why: str = "") -> RegistryError:
    message = f"upload {upload_id[:64]!r} is not in progress"
    return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"{message}: {why}" if why else message)
