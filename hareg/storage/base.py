"""The blob storage interface every driver implements.

Blobs are content-addressed and immutable: a blob becomes visible under its
digest only once all of its bytes are durably stored (never partially).
Uploads are staged under an upload id, appended to at explicit offsets, sealed
(no more writes), then committed under a digest that the *caller* has already
verified over an exact byte range: ``upload_read(id, size)`` and
``upload_commit(id, digest, size)`` both cover the first ``size`` bytes and
nothing else, so a write racing the verification can never slip unverified
bytes into a blob (invariant 3 of docs/invariants.md).  Drivers do not interpret digests beyond
using them as names.

Drivers know nothing about repositories or metadata: which repository may
see which blob is the metadata layer's business.  Nor do they check their
arguments: every driver is used through ``hareg.storage.checked``'s
``CheckedBlobStore``, which rejects a malformed digest, upload id, offset or
size (ValueError) before the driver sees it, and observes every call.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Protocol


class StorageError(Exception):
    """Base class of every error a driver raises."""


class StorageUnavailable(StorageError):
    """The backing store could not be reached or failed; retryable."""


class BlobNotFound(StorageError):
    """No blob is stored under the digest."""


class UploadNotFound(StorageError):
    """No upload is staged under the id."""


class UploadOffsetMismatch(StorageError):
    """A write did not start where the staged upload ends."""

    def __init__(self, expected: int, given: int) -> None:
        super().__init__(f"upload is at offset {expected}, write started at {given}")
        self.expected = expected
        self.given = given


class BlobStore(Protocol):
    """Content-addressed blob bytes plus staging for uploads in progress."""

    async def stat(self, digest: str) -> int | None:
        """Size of the stored blob, or None if it is not stored."""
        ...

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes (all to the end if None) from ``offset``.
        Raises BlobNotFound on the first iteration if the blob is absent."""
        ...

    def local_path(self, digest: str) -> str | None:
        """A filesystem path to the blob, for sendfile; None if not local."""
        ...

    async def presign(self, digest: str, expires_seconds: int) -> str | None:
        """A URL a client may GET the blob from directly, or None if the
        driver cannot sign URLs."""
        ...

    async def delete(self, digest: str) -> bool:
        """Remove a blob; False if it was not there."""
        ...

    def list_blobs(self) -> AsyncIterator[str]:
        """Every stored digest (for garbage collection and checks)."""
        ...

    async def upload_start(self, upload_id: str) -> None:
        """Create an empty staged upload."""
        ...

    async def upload_write(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        """Append ``chunks`` to a staged upload that currently ends at ``offset``.

        Returns the new size.  Raises UploadOffsetMismatch (writing nothing)
        if the upload does not end at ``offset``, UploadNotFound if there is
        no such upload or it is sealed.  If the chunk stream raises, the
        upload is left at a consistent size (``offset`` where the driver can
        take the bytes back, else a prefix of what arrived), never torn.
        """
        ...

    async def upload_seal(self, upload_id: str) -> int:
        """Stop the upload from growing and return its size.

        Waits for a write in progress (or fails with StorageUnavailable if
        another process is writing).  Once sealed, ``upload_write`` raises
        UploadNotFound where the driver can lock writers out; where it cannot
        (S3), later writes only add bytes past the returned size, and
        the first ``size`` bytes never change.  Sealing again returns the
        size again; UploadNotFound if there is no such upload."""
        ...

    async def upload_truncate(self, upload_id: str, size: int) -> int:
        """Drop the staged bytes past ``size`` (a request that died after
        staging them; the caller holds the upload's claim, so none is being
        acknowledged) and return the size the staging now has: ``size``, or
        less if it held less.  The first ``size`` bytes are never changed.
        Where the driver locks writers out of a sealed upload (filesystem),
        a sealed one is left as it is and its size returned; elsewhere (S3)
        the caller never cuts below a size it sealed.
        UploadNotFound if there is no such upload; StorageUnavailable if
        another process is writing it."""
        ...

    async def upload_size(self, upload_id: str) -> int | None:
        """Bytes staged so far, or None if there is no such upload."""
        ...

    async def upload_modified(self, upload_id: str) -> float | None:
        """When the staged upload was last written (seconds since the epoch, by
        the store's clock), or None if there is no such upload.  Lets a janitor
        remove the staging of uploads whose session expired."""
        ...

    def upload_read(self, upload_id: str, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the first ``length`` staged bytes (all if None), to re-hash
        an upload another process wrote."""
        ...

    async def upload_commit(self, upload_id: str, digest: str, size: int) -> int:
        """Make exactly the first ``size`` staged bytes visible as blob
        ``digest`` atomically and drop the staging; returns ``size``.

        UploadOffsetMismatch if the staging does not hold exactly those bytes
        as one committable range (a write landed after the caller measured
        it), UploadNotFound if there is no such upload.  If a blob is already
        stored under the digest it is kept only if it passes the driver's
        check (at least its size); otherwise the verified bytes replace it, so
        an honest re-push repairs a damaged blob."""
        ...

    async def upload_put(
        self,
        upload_id: str,
        digest: str,
        chunks: AsyncIterable[bytes],
        verify: Callable[[int], Awaitable[None]],
        length: int | None = None,
    ) -> int:
        """Write a whole blob into an empty staged upload and commit it as
        ``digest`` in one step (a push whose digest is known before its
        bytes), returning its size.

        Once ``chunks`` ends, ``verify(size)`` is awaited (the caller checks
        the digest and the length there); the bytes become visible as the blob
        only if it returns.  If it or the stream raises, nothing becomes
        visible, the error propagates, and the staging is left for the caller
        (to abort, or to truncate as after a failed ``upload_write``).  On
        success the staging is dropped, as by ``upload_commit``.  ``length``
        is the declared size, if any: a driver may then skip storing bytes
        already stored (a blob of that size under ``digest``), streaming them
        through ``verify`` only.  UploadNotFound if there is no such upload;
        UploadOffsetMismatch (nothing consumed) if it is not empty."""
        ...

    async def upload_abort(self, upload_id: str) -> None:
        """Drop a staged upload (no error if it is already gone)."""
        ...

    def list_uploads(self) -> AsyncIterator[str]:
        """Ids of every staged upload (to remove expired ones)."""
        ...

    async def sweep_abandoned(self) -> int:
        """Remove what writes of a process that died left outside any staged
        upload (S3: the multipart uploads of whole-blob puts), once it is old
        enough that no live write can own it; returns how many were removed.
        The janitor calls it on each sweep; 0 where there is nothing such."""
        ...

    async def close(self) -> None: ...


async def put_by_staging(
    store: BlobStore,
    upload_id: str,
    digest: str,
    chunks: AsyncIterable[bytes],
    verify: Callable[[int], Awaitable[None]],
) -> int:
    """``upload_put`` as a write, the caller's check and a commit: for
    drivers whose commit is already cheap (a rename on a filesystem)."""
    size = await store.upload_write(upload_id, 0, chunks)
    await verify(size)
    return await store.upload_commit(upload_id, digest, size)
