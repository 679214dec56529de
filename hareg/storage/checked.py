"""The one wrapper every driver is served through, as distribution's
``driver/base`` wraps each of its storage drivers.

``CheckedBlobStore(inner, observe=...)`` implements ``BlobStore`` by
delegating to ``inner`` after checking every argument, and reports every call
to ``observe(op, seconds, outcome, nbytes)``.  The drivers' public classes
(``FilesystemBlobStore``, ``S3BlobStore``, the simulator's ``SimBlobStore``)
are this wrapper around their raw driver, so no caller can reach a driver
with an unchecked name and the checks are one code path everywhere.

The checks, each a ValueError before any I/O:

* a digest is ``sha256:<64 lowercase hex>`` or ``sha512:<128 lowercase hex>``;
* an upload id matches ``[A-Za-z0-9_-]{1,128}`` (so it is one path segment);
* offsets, lengths and sizes are non-negative integers, a presign lifetime a
  positive one;
* ``list_blobs`` and ``list_uploads`` yield only names that pass the above
  (whatever else lies in the store is not ours).

Drivers may therefore build paths and keys from the names they are given.

What is observed: ``op`` is the method's name; ``outcome`` is ``ok`` or the
failure's kind (see ``outcome_of``); ``seconds`` runs from the call to its
end, and for the streams (``read``, ``upload_read``, the listings) to the
end of the stream, so a slow consumer makes it longer; ``nbytes`` is the
bytes a ``read`` or ``upload_read`` yielded, or a successful
``upload_write`` appended (0 otherwise).  Counting a stream's bytes is the
only work the wrapper does per chunk; writes are not touched per chunk.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Final, Generic, TypeVar

from hareg.storage import base

__all__ = [
    "CheckedBlobStore",
    "StorageObserver",
    "check_digest",
    "check_upload_id",
    "outcome_of",
]

StorageObserver = Callable[[str, float, str, int], None]
"""``observe(op, seconds, outcome, nbytes)``, called once per storage call."""

D = TypeVar("D", bound=base.BlobStore)

_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_UPLOAD_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_digest(digest: str) -> None:
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise ValueError(f"invalid digest: {digest!r}")


def check_upload_id(upload_id: str) -> None:
    if not isinstance(upload_id, str) or _UPLOAD_ID_RE.fullmatch(upload_id) is None:
        raise ValueError(f"invalid upload id: {upload_id!r}")


def _check_count(name: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")


# The first class a failure is an instance of names its outcome (subclasses first).
_OUTCOMES: Final[tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...]] = (
    ((base.BlobNotFound, base.UploadNotFound), "not_found"),
    (base.UploadOffsetMismatch, "offset_mismatch"),
    (base.StorageUnavailable, "unavailable"),
    (base.StorageError, "error"),
    (ValueError, "invalid"),
    ((asyncio.CancelledError, GeneratorExit), "cancelled"),  # the caller went away or stopped reading
)


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` label of a call that ended with ``exc`` (None: success);
    ``other`` for anything else, e.g. an ``upload_write`` whose body stream failed."""
    if exc is None:
        return "ok"
    return next((outcome for kinds, outcome in _OUTCOMES if isinstance(exc, kinds)), "other")


def _ignore(op: str, seconds: float, outcome: str, nbytes: int) -> None:
    pass


async def _aclose(stream: AsyncIterator[object]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class _Call:
    """One call being timed; a context manager for calls that end when they
    return, ``finish`` for streams."""

    __slots__ = ("_clock", "_nbytes", "_observe", "_op", "_start")

    def __init__(self, observe: StorageObserver, clock: Callable[[], float], op: str) -> None:
        self._observe = observe
        self._clock = clock
        self._op = op
        self._nbytes = 0
        self._start = clock()

    def wrote(self, nbytes: int) -> None:
        self._nbytes = nbytes

    def finish(self, exc: BaseException | None) -> None:
        self._observe(self._op, self._clock() - self._start, outcome_of(exc), self._nbytes)

    def __enter__(self) -> _Call:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exc)

    async def stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` passed through, their bytes counted."""
        error: BaseException | None = None
        try:
            async for chunk in chunks:
                self._nbytes += len(chunk)
                yield chunk
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                await _aclose(chunks)  # a consumer that stops early frees the driver's file or stream
            finally:
                self.finish(error)

    async def names(self, names: AsyncIterator[str], valid: Callable[[str], None]) -> AsyncIterator[str]:
        """The names that pass ``valid``; the others are skipped."""
        error: BaseException | None = None
        try:
            async for name in names:
                try:
                    valid(name)
                except ValueError:
                    continue
                yield name
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                await _aclose(names)
            finally:
                self.finish(error)


class CheckedBlobStore(Generic[D]):
    """``inner`` behind argument checks and per-call observation.

    ``observe`` gets every call (None: nobody is told); ``clock`` is a
    monotonic clock in seconds for the durations.
    """

    def __init__(
        self,
        inner: D,
        *,
        observe: StorageObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner = inner
        self._observe: StorageObserver = observe if observe is not None else _ignore
        self._clock = clock

    def _call(self, op: str) -> _Call:
        return _Call(self._observe, self._clock, op)

    # ----------------------------------------------------------------- blobs

    async def stat(self, digest: str) -> int | None:
        with self._call("stat"):
            check_digest(digest)
            return await self.inner.stat(digest)

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        call = self._call("read")
        try:
            check_digest(digest)
            _check_count("offset", offset)
            if length is not None:
                _check_count("length", length)
            chunks = self.inner.read(digest, offset, length)
        except BaseException as exc:
            call.finish(exc)
            raise
        return call.stream(chunks)

    def local_path(self, digest: str) -> str | None:
        with self._call("local_path"):
            check_digest(digest)
            return self.inner.local_path(digest)

    async def presign(self, digest: str, expires_seconds: int) -> str | None:
        with self._call("presign"):
            check_digest(digest)
            if type(expires_seconds) is not int or expires_seconds <= 0:
                raise ValueError(f"expires_seconds must be a positive integer, not {expires_seconds!r}")
            return await self.inner.presign(digest, expires_seconds)

    async def delete(self, digest: str) -> bool:
        with self._call("delete"):
            check_digest(digest)
            return await self.inner.delete(digest)

    def list_blobs(self) -> AsyncIterator[str]:
        return self._call("list_blobs").names(self.inner.list_blobs(), check_digest)

    # --------------------------------------------------------------- uploads

    async def upload_start(self, upload_id: str) -> None:
        with self._call("upload_start"):
            check_upload_id(upload_id)
            await self.inner.upload_start(upload_id)

    async def upload_write(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        with self._call("upload_write") as call:
            check_upload_id(upload_id)
            _check_count("offset", offset)
            size = await self.inner.upload_write(upload_id, offset, chunks)
            call.wrote(size - offset)
            return size

    async def upload_seal(self, upload_id: str) -> int:
        with self._call("upload_seal"):
            check_upload_id(upload_id)
            return await self.inner.upload_seal(upload_id)

    async def upload_truncate(self, upload_id: str, size: int) -> int:
        with self._call("upload_truncate"):
            check_upload_id(upload_id)
            _check_count("size", size)
            return await self.inner.upload_truncate(upload_id, size)

    async def upload_size(self, upload_id: str) -> int | None:
        with self._call("upload_size"):
            check_upload_id(upload_id)
            return await self.inner.upload_size(upload_id)

    async def upload_modified(self, upload_id: str) -> float | None:
        with self._call("upload_modified"):
            check_upload_id(upload_id)
            return await self.inner.upload_modified(upload_id)

    def upload_read(self, upload_id: str, length: int | None = None) -> AsyncIterator[bytes]:
        call = self._call("upload_read")
        try:
            check_upload_id(upload_id)
            if length is not None:
                _check_count("length", length)
            chunks = self.inner.upload_read(upload_id, length)
        except BaseException as exc:
            call.finish(exc)
            raise
        return call.stream(chunks)

    async def upload_commit(self, upload_id: str, digest: str, size: int) -> int:
        with self._call("upload_commit"):
            check_upload_id(upload_id)
            check_digest(digest)
            _check_count("size", size)
            return await self.inner.upload_commit(upload_id, digest, size)

    async def upload_put(
        self,
        upload_id: str,
        digest: str,
        chunks: AsyncIterable[bytes],
        verify: Callable[[int], Awaitable[None]],
        length: int | None = None,
    ) -> int:
        with self._call("upload_put") as call:
            check_upload_id(upload_id)
            check_digest(digest)
            if length is not None:
                _check_count("length", length)
            size = await self.inner.upload_put(upload_id, digest, chunks, verify, length)
            call.wrote(size)
            return size

    async def upload_abort(self, upload_id: str) -> None:
        with self._call("upload_abort"):
            check_upload_id(upload_id)
            await self.inner.upload_abort(upload_id)

    def list_uploads(self) -> AsyncIterator[str]:
        return self._call("list_uploads").names(self.inner.list_uploads(), check_upload_id)

    async def sweep_abandoned(self) -> int:
        with self._call("sweep_abandoned"):
            return await self.inner.sweep_abandoned()

    async def close(self) -> None:
        await self.inner.close()
