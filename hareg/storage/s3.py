"""A BlobStore on an S3-compatible object store (AWS S3, SeaweedFS, MinIO),
through ``obstore`` (docs/storage.md has the measurements behind that choice).

Layout under ``key_prefix`` (a plain string prepended to every key)::

    blobs/<algorithm>/<first 2 hex>/<hex>   committed blobs
    upload-markers/<upload_id>              one empty object per staged upload
    uploads/<upload_id>/<offset:020d>       the staged bytes, as part objects

Every replica sees the same objects, so an upload started on one replica can
be appended to on any other and committed on a third.  How:

* ``upload_start`` creates the marker (a conditional create).  The marker is
  what makes an upload exist: ``upload_size`` is None without it, and
  ``list_uploads`` lists the markers (they live apart from the parts because
  SeaweedFS keeps an emptied "directory" listed as a common prefix forever).
* The staged bytes are part objects named by their offset.  The upload's size
  is read from one listing: the parts must be contiguous from 0.
* ``upload_write(id, offset, ...)`` lists the parts, checks that they end at
  ``offset`` (UploadOffsetMismatch, nothing consumed, otherwise), then cuts the
  incoming stream into parts of at most ``part_size`` bytes and writes each
  with a conditional create (``If-None-Match: *``).  Two writers racing for
  one offset cannot both create its part: the loser gets
  UploadOffsetMismatch.  A part is held in memory while it is sent (a
  conditional create cannot be a multipart upload in obstore); the next part
  is read from the stream meanwhile, so a write holds at most two parts.
  Parts are created strictly in order (part k+1 only once part k exists), so
  the staged bytes never have a hole.
* If a conditional create finds the part already there with exactly our bytes
  (its ETag is their MD5: the retry of a request whose answer was lost), the
  part counts as written.
* If the chunk stream raises, the bytes not yet sent as a whole part are
  dropped; parts already created stay (S3 has no lock that would make taking
  them back safe against a concurrent seal: the registry takes them back with
  ``upload_truncate`` under its claim on the upload).  If the call is cancelled, the
  part in flight is let land (or fail) before the call returns, so no part
  appears afterwards.  Either way the upload is a consistent prefix.
* The upload is the chain of parts contiguous from offset 0; a part off the
  chain (a stray of a writer that died) is ignored, and deleted with the rest.
* ``upload_truncate(id, size)`` deletes every part at or past ``size``: the
  unacknowledged parts of a request that died (the registry calls it only
  while the upload's etcd record says no live request is writing it).  Parts
  below an acknowledged size are never deleted while the marker exists, so
  that prefix is final: ``upload_seal`` returns the size of the chain (it
  cannot lock writers out; later parts lie past it), and
  ``upload_read(id, size)`` and ``upload_commit(id, digest, size)`` cover
  exactly the parts that end at ``size`` (UploadOffsetMismatch if no part
  ends there).
* ``upload_commit`` makes the blob visible in one step: a server-side copy of
  a single part, one PUT of the concatenated parts up to 5 MiB, or otherwise a
  streaming multipart upload of the parts' bytes (obstore exposes no
  UploadPartCopy), which S3 only shows once it is complete.  If a blob of the
  same size is already stored the staging is just dropped (a hash check would
  cost a full read: ``hareg fsck`` covers that); one of another size is
  replaced.  Then the parts, the marker and any part a racing writer added
  meanwhile are deleted, in that order (a crash part-way leaves the marker, so
  the upload stays listed for the pruner).

* ``upload_put`` (a whole blob whose digest is known first) writes no part
  objects: the body streams straight to the blob's key (one PUT within a
  part, else obstore's multipart upload), the caller's check runs after the
  last byte inside the stream obstore reads, and a failed check, stream or
  call aborts the upload, so nothing becomes visible.  The bytes cross the
  replica once and are stored once.
* Every buffer of a part (a write's, ``upload_put``'s, a commit's) is first
  reserved from ``buffers``, one ``BufferPool`` of ``upload_buffer`` bytes
  for all uploads; a spent pool makes an upload wait before it reads more of
  its body (back-pressure, docs/storage.md "Memory").
* ``sweep_abandoned`` (the janitor's) aborts the incomplete multipart
  uploads under ``blobs/`` older than ``multipart_max_age``: what a replica
  killed mid-put left (``s3_sweep.py``; static credentials only).

Choices where ``BlobStore`` leaves room, and caveats:

* ``S3BlobStore`` is ``S3Driver`` inside the checks of
  ``hareg/storage/checked.py`` (the names, offsets and sizes every driver
  gets checked the same way, ValueError); keys are built from the names as
  given.  Use the driver bare only in tests.
* ``upload_start`` on an upload that already has bytes raises StorageError; on
  an empty one it is a no-op (so a retried request is harmless).
* Another writer appending *inside* an in-flight write (at an offset it could
  only have learnt from ``upload_size`` while the write ran) makes that write
  fail with UploadOffsetMismatch after some of its parts were created.
* A write or commit racing an abort or another commit of the same upload is
  not serialised (S3 has no locks); the registry never issues such requests.
  A write that finds the marker gone after writing deletes its parts again.
* Transport failures, timeouts and 5xx answers are StorageUnavailable; being
  refused access is StorageError.  ``timeout`` bounds every request (and a
  stalled read); obstore retries up to ``max_retries`` times within it.
* ``read`` at or past the end of a blob yields nothing; ``local_path`` is
  always None; ``presign`` signs a GET URL (locally, SigV4, up to 7 days)
  without checking that the blob exists.
* ``close()`` waits 10 ms: obstore 0.12 can abort the process if it exits
  while a tokio thread is still handing a result to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Required, TypedDict, TypeVar, Unpack

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from hareg.storage.base import (
    BlobNotFound,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    UploadOffsetMismatch,
)
from hareg.storage.buffers import BufferPool
from hareg.storage.checked import CheckedBlobStore, StorageObserver
from hareg.storage.s3_sweep import MultipartSweeper

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config

    from hareg.config.model import S3Storage
    from hareg.storage.base import BlobStore

__all__ = ["S3BlobStore", "S3Driver"]

log = logging.getLogger("hareg.storage.s3")

_T = TypeVar("_T")

_PART_RE: Final = re.compile(r"[0-9]{20}")
_KEY_PREFIX_RE: Final = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9._-]*/)*(?:[A-Za-z0-9_-][A-Za-z0-9._-]*)?")

_MiB: Final = 1024 * 1024
_MIN_PART: Final = 64 * 1024
_MIN_MULTIPART_PART: Final = 5 * _MiB  # S3's smallest part (but the last)
_MAX_PRESIGN_SECONDS: Final = 7 * 24 * 3600  # SigV4's limit
_STREAM_TOTAL_TIMEOUT: Final = timedelta(days=1)  # streams are bounded by the read timeout
_LIST_PAGE: Final = 1000
_CLOSE_SETTLE: Final = 0.01
_DELETE_BATCH: Final = 1000


def _translate(exc: BaseException, what: str) -> StorageError:
    """The driver's error for a failure of obstore (or of the transport)."""
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return StorageError(f"object store refused {what}: {exc}")
    return StorageUnavailable(f"object store failed {what}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_storage_failure(exc: BaseException) -> bool:
    return isinstance(exc, BaseError | OSError | TimeoutError) and not isinstance(exc, FileNotFoundError)


@dataclass(frozen=True, slots=True)
class _Part:
    offset: int
    size: int
    key: str

    @property
    def end(self) -> int:
        return self.offset + self.size


class _PutStopped(Exception):
    """An ``upload_put`` whose caller was cancelled: its body ends in error."""


class _PartTaken(Exception):
    """A conditional create found another writer's part at the offset."""


class S3Driver:
    """Blobs and staged uploads as objects in one S3 bucket, trusting the
    names it is given (``S3BlobStore`` checks them first).

    ``region_endpoint`` is the store's URL (None: AWS's endpoint for
    ``region``); without ``access_key``/``secret_key`` the usual AWS
    credential chain applies.  ``encrypt`` asks for SSE-S3 (AES256) on every
    object written.  ``part_size`` is the largest staged part (and the size of
    the parts of a commit's multipart upload); ``read_chunk_size`` the size
    of the chunks reads yield.  ``timeout`` bounds each request and each wait
    for bytes of a stream, ``connect_timeout`` each connection attempt.
    """

    def __init__(
        self,
        *,
        bucket: str,
        region: str = "us-east-1",
        region_endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        virtual_hosted_style: bool = False,
        encrypt: bool = False,
        key_prefix: str = "",
        part_size: int = 8 * _MiB,
        read_chunk_size: int = _MiB,
        commit_concurrency: int = 1,
        upload_buffer: int = 40 * _MiB,
        multipart_max_age: float = 86400.0,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
    ) -> None:
        if not bucket:
            raise ValueError("bucket is required")
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key and secret_key go together")
        if not isinstance(key_prefix, str) or _KEY_PREFIX_RE.fullmatch(key_prefix) is None:
            raise ValueError(
                f"invalid key_prefix {key_prefix!r}: letters, digits, '.', '_', '-' and '/' between "
                "non-empty segments that do not start with '.'"
            )
        if part_size < _MIN_PART or read_chunk_size <= 0 or commit_concurrency <= 0:
            raise ValueError(f"part_size must be >= {_MIN_PART}; read_chunk_size, commit_concurrency > 0")
        if timeout <= 0 or connect_timeout <= 0 or max_retries < 0:
            raise ValueError("timeouts must be positive and max_retries >= 0")
        if upload_buffer < part_size:
            raise ValueError(f"upload_buffer must hold at least one part ({part_size} bytes)")
        self._bucket = bucket
        self._prefix = key_prefix
        self._part_size = part_size
        self._read_chunk_size = read_chunk_size
        self._commit_concurrency = commit_concurrency
        # Every part buffer of every upload is reserved here first (buffers.py).
        self.buffers = BufferPool(upload_buffer)
        # A whole-blob put's multipart upload older than this was left by a
        # replica that died mid-put (a live one is bounded by the timeouts).
        self._multipart_max_age = multipart_max_age
        self._sweeper = (
            MultipartSweeper(
                bucket=bucket,
                region=region,
                endpoint=region_endpoint,
                virtual_hosted_style=virtual_hosted_style,
                access_key=access_key,
                secret_key=secret_key,
                timeout=timeout,
            )
            if access_key is not None and secret_key is not None
            else None
        )
        self._endpoint = region_endpoint
        self._static_credentials = access_key is not None

        config: S3Config = {"region": region, "virtual_hosted_style_request": virtual_hosted_style}
        if region_endpoint is not None:
            config["endpoint"] = region_endpoint.rstrip("/")
        if access_key is not None and secret_key is not None:
            config["access_key_id"] = access_key
            config["secret_access_key"] = secret_key
        if encrypt:
            config["server_side_encryption"] = "AES256"
        allow_http = region_endpoint is not None and region_endpoint.startswith("http://")
        retry: RetryConfig = {
            "max_retries": max_retries,
            "retry_timeout": timedelta(seconds=timeout),
            "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=1)},
        }
        requests: ClientConfig = {
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=connect_timeout),
            "timeout": timedelta(seconds=timeout),
        }
        streams: ClientConfig = {
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=connect_timeout),
            "read_timeout": timedelta(seconds=timeout),
            "timeout": _STREAM_TOTAL_TIMEOUT,
        }
        # Two clients: one whose requests must finish within ``timeout``, and
        # one for long downloads that only must not stall for that long.
        self._store = S3Store(bucket, config=config, client_options=requests, retry_config=retry)
        self._streams = S3Store(bucket, config=config, client_options=streams, retry_config=retry)
        self._closed = False

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def __repr__(self) -> str:
        where = self._endpoint or "aws"
        return f"S3Driver(bucket={self._bucket!r}, endpoint={where!r}, key_prefix={self._prefix!r})"

    # ------------------------------------------------------------------ keys

    def _blob_key(self, digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        return f"{self._prefix}blobs/{algorithm}/{hexdigest[:2]}/{hexdigest}"

    def _marker_key(self, upload_id: str) -> str:
        return f"{self._prefix}upload-markers/{upload_id}"

    def _parts_dir(self, upload_id: str) -> str:
        return f"{self._prefix}uploads/{upload_id}"

    def _part_key(self, upload_id: str, offset: int) -> str:
        return f"{self._parts_dir(upload_id)}/{offset:020d}"

    # ------------------------------------------------------------- requests

    async def _call(self, what: str, op: Awaitable[_T]) -> _T:
        """Await an obstore operation, translating its failures (missing
        objects surface as FileNotFoundError for the caller to interpret)."""
        try:
            return await op
        except FileNotFoundError:
            raise
        except (AlreadyExistsError, PreconditionError):
            raise
        except Exception as e:
            if _is_storage_failure(e):
                raise _translate(e, what) from e
            raise

    async def _head(self, key: str) -> ObjectMeta | None:
        try:
            return await self._call(f"HEAD {key}", obstore.head_async(self._store, key))
        except FileNotFoundError:
            return None

    async def _list(self, prefix: str) -> list[ObjectMeta]:
        """Every object below the directory ``prefix`` (all pages)."""
        out: list[ObjectMeta] = []

        async def collect() -> None:
            async for batch in obstore.list(self._store, prefix, chunk_size=_LIST_PAGE):
                out.extend(batch)

        await self._call(f"LIST {prefix}/", collect())
        return out

    async def _iter_list(self, prefix: str) -> AsyncIterator[ObjectMeta]:
        stream = obstore.list(self._store, prefix, chunk_size=_LIST_PAGE)
        while True:
            try:
                batch = await self._call(f"LIST {prefix}/", anext(stream))
            except StopAsyncIteration:
                return
            for meta in batch:
                yield meta

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = list(keys[i : i + _DELETE_BATCH])
            with contextlib.suppress(FileNotFoundError):
                await self._call("DELETE", obstore.delete_async(self._store, batch))

    async def _create(self, key: str, data: bytes | bytearray, *, same_is_ok: bool = True) -> bool:
        """Conditional create; False if the key exists (unless, with
        ``same_is_ok``, it holds exactly ``data``)."""
        try:
            await self._call(f"PUT {key}", obstore.put_async(self._store, key, data, mode="create"))
        except (AlreadyExistsError, PreconditionError):
            if not same_is_ok:
                return False
            # Ours already, from a retried request whose answer was lost?
            meta = await self._head(key)
            if meta is None or meta["size"] != len(data) or meta["e_tag"] is None:
                return False
            return meta["e_tag"].strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()
        return True

    # ----------------------------------------------------------------- blobs

    async def stat(self, digest: str) -> int | None:
        meta = await self._head(self._blob_key(digest))
        return None if meta is None else meta["size"]

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self._read(self._blob_key(digest), offset, length, digest)

    async def _read(self, key: str, offset: int, length: int | None, digest: str) -> AsyncIterator[bytes]:
        if length == 0:
            if await self._head(key) is None:
                raise BlobNotFound(digest)
            return
        options: obstore.GetOptions = {}
        if length is not None:
            options["range"] = (offset, offset + length)
        elif offset:
            options["range"] = {"offset": offset}
        try:
            result = await self._call(f"GET {key}", obstore.get_async(self._streams, key, options=options))
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        except StorageUnavailable as e:
            if " 416 " not in str(e.__cause__):
                raise
            # Range Not Satisfiable: the range starts at or past the end.
            if await self._head(key) is None:
                raise BlobNotFound(digest) from None
            return
        async for chunk in self._stream(result, key):
            yield chunk

    async def _stream(self, result: obstore.GetResult, key: str) -> AsyncIterator[bytes]:
        stream = result.stream(min_chunk_size=self._read_chunk_size)
        while True:
            try:
                chunk = await self._call(f"GET {key}", anext(stream))
            except StopAsyncIteration:
                return
            yield chunk

    def local_path(self, digest: str) -> str | None:
        return None

    async def presign(self, digest: str, expires_seconds: int) -> str | None:
        key = self._blob_key(digest)
        if expires_seconds > _MAX_PRESIGN_SECONDS:  # positive: checked by the wrapper
            raise ValueError(f"expires_seconds must be within 1..{_MAX_PRESIGN_SECONDS} (SigV4's limit)")
        expires = timedelta(seconds=expires_seconds)
        if self._static_credentials:
            # Pure computation with fixed keys: the synchronous call costs a
            # tenth of a round trip through the event loop.
            try:
                return obstore.sign(self._store, "GET", key, expires)
            except Exception as e:
                raise _translate(e, f"sign {key}") from e
        # Other credentials may need fetching (instance metadata, STS).
        url: str = await self._call(f"sign {key}", obstore.sign_async(self._store, "GET", key, expires))
        return url

    async def delete(self, digest: str) -> bool:
        key = self._blob_key(digest)
        if await self._head(key) is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            await self._call(f"DELETE {key}", obstore.delete_async(self._store, key))
        return True

    async def list_blobs(self) -> AsyncIterator[str]:
        root = f"{self._prefix}blobs"
        start = len(root) + 1
        async for meta in self._iter_list(root):
            # <algorithm>/<first 2 hex>/<hex>; which names are valid digests
            # is the checking wrapper's business.
            algorithm, prefix, hexdigest = [*meta["path"][start:].split("/", 2), "", ""][:3]
            if len(prefix) == 2 and hexdigest.startswith(prefix):
                yield f"{algorithm}:{hexdigest}"

    # --------------------------------------------------------------- uploads

    async def _parts(self, upload_id: str, *, every: bool = False) -> list[_Part] | None:
        """The staged parts in order, or None if the upload does not exist:
        the chain of contiguous parts from 0 (with ``every``, all of them).
        A part off the chain is a stray of a writer that died or was taken
        over after ``upload_truncate`` dropped what it had written before; it
        is no part of the upload."""
        marker, listed = await asyncio.gather(
            self._head(self._marker_key(upload_id)), self._list(self._parts_dir(upload_id))
        )
        if marker is None:
            return None
        parts = self._parse_parts(upload_id, listed)
        if every:
            return parts
        chain: list[_Part] = []
        end = 0
        for p in parts:  # in offset order: one part per offset (its key)
            if p.offset == end:
                chain.append(p)
                end = p.end
        return chain

    def _parse_parts(self, upload_id: str, listed: Iterable[ObjectMeta]) -> list[_Part]:
        start = len(self._parts_dir(upload_id)) + 1
        parts = []
        for meta in listed:
            name = meta["path"][start:]
            if _PART_RE.fullmatch(name):
                parts.append(_Part(int(name), meta["size"], meta["path"]))
        parts.sort(key=lambda p: p.offset)
        return parts

    async def _size(self, upload_id: str) -> int:
        parts = await self._parts(upload_id)
        if parts is None:
            raise UploadNotFound(upload_id)
        return parts[-1].end if parts else 0

    async def upload_modified(self, upload_id: str) -> float | None:
        marker, listed = await asyncio.gather(
            self._head(self._marker_key(upload_id)), self._list(self._parts_dir(upload_id))
        )
        if marker is None:
            return None
        return max(m["last_modified"].timestamp() for m in [marker, *listed])

    async def upload_start(self, upload_id: str) -> None:
        key = self._marker_key(upload_id)
        if not await self._create(key, b"", same_is_ok=False):
            parts = await self._parts(upload_id)
            if parts:
                raise StorageError(f"upload {upload_id} already exists")

    async def upload_size(self, upload_id: str) -> int | None:
        parts = await self._parts(upload_id)
        if parts is None:
            return None
        return parts[-1].end if parts else 0

    async def upload_write(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        end = await self._size(upload_id)
        if end != offset:
            raise UploadOffsetMismatch(end, offset)
        return await _PartWriter(self, upload_id, offset).run(chunks)

    async def _put_part(self, upload_id: str, offset: int, data: bytes | bytearray) -> None:
        if not await self._create(self._part_key(upload_id, offset), data):
            raise _PartTaken

    async def upload_seal(self, upload_id: str) -> int:
        return await self._size(upload_id)

    async def upload_truncate(self, upload_id: str, size: int) -> int:
        parts = await self._parts(upload_id, every=True)
        if parts is None:
            raise UploadNotFound(upload_id)
        end = 0
        for p in parts:
            if p.offset == end and p.end <= size:
                end = p.end
            elif p.offset == end and p.offset < size:
                raise StorageError(
                    f"upload {upload_id} has a part across offset {size}; it cannot be cut there"
                )
        await self._delete_keys([p.key for p in parts if p.offset >= size])
        return end

    async def upload_read(self, upload_id: str, length: int | None = None) -> AsyncIterator[bytes]:
        parts = await self._parts(upload_id)
        if parts is None:
            raise UploadNotFound(upload_id)
        left = parts[-1].end if parts else 0
        if length is not None:
            left = min(left, length)
        for part in parts:
            if left <= 0:
                break
            async for chunk in self._read_part(upload_id, part):
                chunk = chunk[:left]
                left -= len(chunk)
                yield chunk
                if left <= 0:
                    break

    async def _read_part(self, upload_id: str, part: _Part) -> AsyncIterator[bytes]:
        if part.size == 0:
            return
        try:
            result = await self._call(f"GET {part.key}", obstore.get_async(self._streams, part.key))
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        async for chunk in self._stream(result, part.key):
            yield chunk

    async def upload_commit(self, upload_id: str, digest: str, size: int) -> int:
        blob = self._blob_key(digest)
        existing, staged = await asyncio.gather(
            self._head(blob), self._parts(upload_id), return_exceptions=True
        )
        if isinstance(existing, BaseException):
            raise existing
        if staged is None:
            raise UploadNotFound(upload_id)
        known = [p.key for p in staged] if isinstance(staged, list) else None  # if the listing was whole
        if existing is None or existing["size"] != size:
            try:
                if isinstance(staged, BaseException):
                    raise staged
                await self._assemble(upload_id, _prefix(upload_id, staged, size), blob)
            except StorageUnavailable:
                raise
            except StorageError:
                # A hole, or a part vanished: another replica's commit of this
                # upload is deleting the parts once its blob is in place.
                existing = await self._head(blob)
                if existing is None or existing["size"] != size:
                    raise
        await self._drop(upload_id, known)
        return size

    async def _assemble(self, upload_id: str, parts: list[_Part], blob: str) -> int:
        """Write the parts' bytes to ``blob``, visible only once complete."""
        size = parts[-1].end if parts else 0
        if not parts:
            await self._call(f"PUT {blob}", obstore.put_async(self._store, blob, b""))
        elif len(parts) == 1:
            try:
                await self._call(f"COPY {blob}", obstore.copy_async(self._store, parts[0].key, blob))
            except FileNotFoundError:
                raise UploadNotFound(upload_id) from None
        elif size <= _MIN_MULTIPART_PART:  # one small PUT beats a multipart upload
            async with self.buffers.reserved_for(size):
                data = b"".join([chunk for part in parts async for chunk in self._read_part(upload_id, part)])
                if len(data) != size:  # pragma: no cover - a part changed under us
                    raise StorageError(f"upload {upload_id} changed while it was committed")
                await self._call(f"PUT {blob}", obstore.put_async(self._store, blob, data))
                del data
        else:
            await self._concatenate(upload_id, parts, blob, size)
        return size

    async def _concatenate(self, upload_id: str, parts: list[_Part], blob: str, size: int) -> None:
        failure: list[BaseException] = []
        sent = 0

        async def source() -> AsyncIterator[bytes]:
            nonlocal sent
            try:
                for part in parts:
                    async for chunk in self._read_part(upload_id, part):
                        sent += len(chunk)
                        yield chunk
            except BaseException as e:
                failure.append(e)
                raise

        chunk_size = max(self._part_size, _MIN_MULTIPART_PART)
        # obstore holds the parts in flight and the one it fills.
        try:
            async with self.buffers.reserved_for((self._commit_concurrency + 1) * chunk_size):
                await self._call(
                    f"PUT {blob}",
                    obstore.put_async(
                        self._store,
                        blob,
                        source(),
                        chunk_size=chunk_size,
                        max_concurrency=self._commit_concurrency,
                    ),
                )
        except Exception as e:
            if failure:  # the source failed: report that, not obstore's wrapper
                raise failure[0] from e
            raise
        if sent != size:  # pragma: no cover - a part changed under us
            with contextlib.suppress(StorageError, FileNotFoundError):
                await self._call(f"DELETE {blob}", obstore.delete_async(self._store, blob))
            raise StorageError(f"upload {upload_id} changed while it was committed")

    async def upload_put(
        self,
        upload_id: str,
        digest: str,
        chunks: AsyncIterable[bytes],
        verify: Callable[[int], Awaitable[None]],
        length: int | None = None,
    ) -> int:
        """The body straight into the blob's key: one PUT, or obstore's
        multipart upload for a body over one part, which S3 shows only once
        it completes; ``verify`` runs after the last byte and before the
        completion, and if it (or the stream) raises, obstore aborts the
        upload.  Bytes cross the replica once and are stored once."""
        blob = self._blob_key(digest)
        staged, existing = await asyncio.gather(
            self._size(upload_id), self._head(blob) if length is not None else _nothing()
        )
        if staged != 0:
            raise UploadOffsetMismatch(staged, 0)
        if length is not None and existing is not None and existing["size"] == length:
            # Stored already (another repository pushed it): only verify.
            size = 0
            async for chunk in chunks:
                size += len(chunk)
            await verify(size)
            if size != length:
                raise StorageError(f"upload {upload_id} carried {size} bytes, not {length}")
            await self._drop(upload_id, ())
            return size
        part = max(self._part_size, _MIN_MULTIPART_PART)
        # A declared body within one part is one PUT (held whole); a longer
        # one a multipart upload, obstore holding the part it sends and the
        # one it fills (max_concurrency=1).
        single = length is not None and length <= part
        want = length if length is not None and single else 2 * part
        failure: list[BaseException] = []
        size = 0
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def source() -> AsyncIterator[bytes]:
            # obstore pulls this from its own task, so cancelling the caller
            # does not reach it: ``stop`` makes it fail instead, and obstore
            # then aborts the multipart upload (no parts are left behind).
            nonlocal size
            iterator = aiter(chunks)
            try:
                while True:
                    step = asyncio.ensure_future(anext(iterator))
                    await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
                    if not step.done():
                        step.cancel()
                        with contextlib.suppress(BaseException):
                            await step
                        raise _PutStopped
                    try:
                        chunk = step.result()
                    except StopAsyncIteration:
                        break
                    size += len(chunk)
                    if single and length is not None and size > length:
                        # Held whole for one PUT: never more than was reserved.
                        raise StorageError(
                            f"upload {upload_id} carried more than the declared {length} bytes"
                        )
                    yield chunk
                await verify(size)  # raises: nothing becomes visible
            except BaseException as e:
                failure.append(e)
                raise

        async with self.buffers.reserved_for(want):
            put = asyncio.ensure_future(
                self._call(
                    f"PUT {blob}",
                    obstore.put_async(
                        self._store,
                        blob,
                        source(),
                        chunk_size=part,
                        max_concurrency=1,
                        use_multipart=not single,
                    ),
                )
            )
            try:
                await asyncio.shield(put)
            except asyncio.CancelledError:
                # Stop the body and let obstore abort (its requests are
                # bounded by the timeout) before the buffers are given back.
                stop.set_result(None)
                while not put.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait((put,))
                if not put.cancelled():
                    put.exception()  # retrieved: the cancellation is what the caller sees
                raise
            except Exception as e:
                if failure:  # the stream or the check failed: report that, not obstore's wrapper
                    raise failure[0] from e
                raise
        await self._drop(upload_id, ())
        return size

    async def _drop(self, upload_id: str, known: Sequence[str] | None = None) -> None:
        """Delete the parts (``known``: as just listed), then the marker, then
        any part that a racing writer created meanwhile.  A crash part-way
        leaves the marker, so the upload stays listed and a later abort
        finishes the job."""
        parts_dir = self._parts_dir(upload_id)
        if known is None:
            known = [m["path"] for m in await self._list(parts_dir)]
        await self._delete_keys(known)
        with contextlib.suppress(FileNotFoundError):
            await self._call("DELETE marker", obstore.delete_async(self._store, self._marker_key(upload_id)))
        late = [m["path"] for m in await self._list(parts_dir)]
        if late:
            await self._delete_keys(late)

    async def upload_abort(self, upload_id: str) -> None:
        await self._drop(upload_id)

    async def list_uploads(self) -> AsyncIterator[str]:
        root = f"{self._prefix}upload-markers"
        start = len(root) + 1
        async for meta in self._iter_list(root):
            yield meta["path"][start:]  # the checking wrapper drops what is not an upload id

    async def sweep_abandoned(self) -> int:
        """Abort the incomplete multipart uploads under ``blobs/`` older than
        ``multipart_max_age`` (a replica killed mid-put left them; a failed
        or cancelled put is aborted by obstore at once).  Best effort: 0 if
        the store has no static credentials to sign with, or fails."""
        if self._sweeper is None:
            return 0
        older_than = datetime.now(UTC) - timedelta(seconds=self._multipart_max_age)
        try:
            return await self._sweeper.sweep(f"{self._prefix}blobs/", older_than)
        except StorageError as e:
            log.warning("incomplete multipart uploads were not swept: %s", e)
            return 0

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # obstore's clients need no explicit close, but a tokio thread that
        # has just handed a result to the event loop may still be inside the
        # interpreter for a moment; if the process exits right then, it
        # aborts (SIGABRT in finalisation).  Give such threads time to leave.
        await asyncio.sleep(_CLOSE_SETTLE)


async def _nothing() -> None:
    return None


def _prefix(upload_id: str, parts: list[_Part], size: int) -> list[_Part]:
    """The parts that make up exactly the first ``size`` bytes."""
    taken: list[_Part] = []
    end = 0
    for part in parts:
        if end == size:
            break
        taken.append(part)
        end = part.end
    if end != size:
        raise UploadOffsetMismatch(end, size)
    return taken


class _PartWriter:
    """One ``upload_write``: cuts the stream into parts and creates them in
    order, sending part k while part k+1 is being received."""

    def __init__(self, store: S3Driver, upload_id: str, offset: int) -> None:
        self.store = store
        self.upload_id = upload_id
        self.start = offset
        self.written = offset  # end of the parts created so far
        self.next = offset  # where the next part starts
        self.keys: list[str] = []
        self.pending: asyncio.Task[None] | None = None

    async def run(self, chunks: AsyncIterable[bytes]) -> int:
        # One growing buffer per part, handed to obstore as it is (zero-copy):
        # a part never exists twice in memory, as a list of chunks and their join.
        buf = bytearray()
        limit = self.store._part_size
        pool = self.store.buffers
        held = 0  # the pool's bytes reserved for ``buf``
        iterator = aiter(chunks)
        try:
            while True:
                if not held:  # reserved before reading: a spent pool stops the body
                    held = await pool.acquire(limit)
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception:
                    # Half a part is dropped; the part in flight lands first.
                    with contextlib.suppress(Exception):
                        await self._finish_pending()
                    raise
                if not chunk:
                    continue
                view = memoryview(chunk)  # copied into ``buf``: the producer may reuse its buffer
                while view:
                    take = min(len(view), limit - len(buf))
                    buf += view[:take]
                    view = view[take:]
                    if len(buf) == limit:
                        data, buf = buf, bytearray()
                        await self._send(data, held)
                        del data  # the part task holds it now, and gives its bytes back
                        held = 0
                        if view:
                            held = await pool.acquire(limit)
                del view, chunk
            if buf:
                data, buf = buf, bytearray()
                await self._send(data, held)
                del data
                held = 0
            await self._finish_pending()
        except BaseException:
            # Even when cancelled, let the part in flight land (or fail)
            # before returning: a PUT cannot be recalled once sent, and a part
            # appearing after we returned would move the upload under the
            # caller's feet.  The request timeout bounds the wait.
            task = self.pending
            if task is not None:
                while not task.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait((task,))
                if not task.cancelled():
                    task.exception()  # retrieved: the first error wins
            raise
        finally:
            if held:
                pool.release(held)
        if self.keys:
            await self._check_still_staged()
        return self.written

    async def _send(self, data: bytearray, held: int) -> None:
        """Start creating the next part once the previous one exists; the
        part's ``held`` bytes of the pool go back once it is sent (if this
        raises, they are still the caller's)."""
        await self._finish_pending()
        offset = self.next
        self.next += len(data)
        self.pending = asyncio.create_task(self._put(offset, data, held))

    async def _put(self, offset: int, data: bytearray, held: int) -> None:
        size = len(data)
        try:
            await self.store._put_part(self.upload_id, offset, data)
        except _PartTaken:
            expected = await self.store.upload_size(self.upload_id)
            if expected is None:
                raise UploadNotFound(self.upload_id) from None
            raise UploadOffsetMismatch(expected, self.start) from None
        finally:
            del data
            self.store.buffers.release(held)
        self.written = offset + size
        self.keys.append(self.store._part_key(self.upload_id, offset))

    async def _finish_pending(self) -> None:
        task = self.pending
        if task is not None:
            await asyncio.shield(task)  # a cancelled caller must not cancel the PUT
            self.pending = None

    async def _check_still_staged(self) -> None:
        """An abort or commit that ran while we wrote would leave our parts
        behind without a marker: take them back."""
        if await self.store._head(self.store._marker_key(self.upload_id)) is None:
            await self.store._delete_keys(self.keys)
            raise UploadNotFound(self.upload_id)


class S3Options(TypedDict, total=False):
    """``S3Driver``'s keyword arguments (all but ``bucket`` have defaults)."""

    bucket: Required[str]
    region: str
    region_endpoint: str | None
    access_key: str | None
    secret_key: str | None
    virtual_hosted_style: bool
    encrypt: bool
    key_prefix: str
    part_size: int
    read_chunk_size: int
    commit_concurrency: int
    upload_buffer: int
    multipart_max_age: float
    timeout: float
    connect_timeout: float
    max_retries: int


class S3BlobStore(CheckedBlobStore[S3Driver]):
    """The S3 driver behind the shared checks and metrics (what the registry
    uses).  Arguments as for ``S3Driver``, plus ``observe``
    (``hareg.storage.checked``); the driver is ``inner``."""

    def __init__(self, *, observe: StorageObserver | None = None, **options: Unpack[S3Options]) -> None:
        super().__init__(S3Driver(**options), observe=observe)

    @property
    def bucket(self) -> str:
        return self.inner.bucket

    @property
    def key_prefix(self) -> str:
        return self.inner.key_prefix

    @classmethod
    def from_config(
        cls, cfg: S3Storage, *, observe: StorageObserver | None = None, **options: Any
    ) -> S3BlobStore:
        """Build from the ``storage.s3`` section of hareg's configuration;
        ``options`` are passed on (``timeout``, ``part_size``, ...)."""
        return cls(
            bucket=cfg.bucket,
            region=cfg.region,
            region_endpoint=cfg.region_endpoint,
            access_key=cfg.access_key,
            secret_key=cfg.secret_key,
            virtual_hosted_style=cfg.virtual_hosted_style,
            encrypt=cfg.encrypt,
            key_prefix=cfg.key_prefix,
            upload_buffer=cfg.upload_buffer_bytes,
            observe=observe,
            **options,
        )


if TYPE_CHECKING:

    def _is_a_blob_store(driver: S3Driver, store: S3BlobStore) -> tuple[BlobStore, BlobStore]:
        return driver, store
