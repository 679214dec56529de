"""A model of the object store, and the BlobStore client each replica uses.

``ObjectStore`` holds blob bytes by digest and staged uploads by id, in
memory, with an S3-like request model: each request is one round trip with a
latency (plus transfer time), and inside fault windows a request fails with
500 InternalError or 503 SlowDown before it is applied.  A request whose
reply is lost or late (network faults) times out on the client, possibly
after it was applied.  Deletions are logged for the garbage-collection check.

``SimStoreClient`` implements :class:`hareg.storage.base.BlobStore` over the
simulated network; every failure the client sees is ``StorageUnavailable``
(or the Protocol's ``BlobNotFound``, ``UploadNotFound``,
``UploadOffsetMismatch``).  It cannot presign URLs and has no local path.
``SimBlobStore`` is that client inside ``hareg.storage.checked``'s wrapper,
as every real driver is: the replicas check names exactly as the server does.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from hareg.storage.base import (
    BlobNotFound,
    BlobStore,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    UploadOffsetMismatch,
)
from hareg.storage.checked import CheckedBlobStore
from sim.loop import SimLoop
from sim.network import Network, Pending
from sim.trace import Trace

T = TypeVar("T")

STORAGE_NODE = "s3"
_READ_PIECE = 64 * 1024


@dataclass(slots=True)
class _Staged:
    data: bytearray
    modified: float
    sealed: bool = False


@dataclass(frozen=True, slots=True)
class Deletion:
    time: float
    digest: str
    by: str  # the node that asked


class ObjectStore:
    """The store's state and its request handling (the server side)."""

    def __init__(self, loop: SimLoop, rng: random.Random, trace: Trace, *, epoch: float) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace
        self.epoch = epoch  # the store's wall clock: epoch + virtual time
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, _Staged] = {}
        self.deletions: list[Deletion] = []
        # Observers (the checkers): a blob became visible, a blob's bytes were deleted.
        self.on_commit: list[Callable[[str, bytes], None]] = []
        self.on_delete: list[Callable[[str], None]] = []
        self._error_windows: list[float] = []
        self.stats: dict[str, int] = {"requests": 0, "errors_500": 0, "errors_503": 0}

    def add_errors(self, p: float) -> None:
        self._error_windows.append(p)

    def remove_errors(self, p: float) -> None:
        if p in self._error_windows:
            self._error_windows.remove(p)

    def heal(self) -> None:
        self._error_windows.clear()

    def now(self) -> float:
        return self.epoch + self.loop.time()

    def handle(self, client: str, what: str, fn: Callable[[ObjectStore], Any]) -> Any:
        """Serve one request: an injected error, or the result (exceptions are results too)."""
        self.stats["requests"] += 1
        if self._error_windows and self.rng.random() < max(self._error_windows):
            if self.rng.random() < 0.5:
                self.stats["errors_503"] += 1
                self.trace.event("s3.error", code=503, client=client, what=what)
                return StorageUnavailable(f"{what}: 503 SlowDown: please reduce your request rate")
            self.stats["errors_500"] += 1
            self.trace.event("s3.error", code=500, client=client, what=what)
            return StorageUnavailable(f"{what}: 500 InternalError")
        try:
            return fn(self)
        except StorageError as exc:
            return exc

    # -- operations (run at the store) -----------------------------------------------

    def op_stat(self, digest: str) -> int | None:
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    def op_read(self, digest: str, offset: int, length: int | None) -> bytes:
        data = self.blobs.get(digest)
        if data is None:
            raise BlobNotFound(digest)
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def op_delete(self, digest: str, by: str) -> bool:
        if self.blobs.pop(digest, None) is None:
            return False
        self.deletions.append(Deletion(self.loop.time(), digest, by))
        self.trace.event("s3.delete", digest=digest[7:19], by=by)
        for observer in self.on_delete:
            observer(digest)
        return True

    def op_upload_start(self, upload_id: str) -> None:
        self.uploads[upload_id] = _Staged(bytearray(), self.now())

    def op_upload_write(self, upload_id: str, offset: int, data: bytes) -> int:
        staged = self.uploads.get(upload_id)
        if staged is None or staged.sealed:
            raise UploadNotFound(upload_id)
        if len(staged.data) != offset:
            raise UploadOffsetMismatch(len(staged.data), offset)
        staged.data += data
        staged.modified = self.now()
        return len(staged.data)

    def op_upload_size(self, upload_id: str) -> int | None:
        staged = self.uploads.get(upload_id)
        return None if staged is None else len(staged.data)

    def op_upload_modified(self, upload_id: str) -> float | None:
        staged = self.uploads.get(upload_id)
        return None if staged is None else staged.modified

    def op_upload_read(self, upload_id: str, length: int | None) -> bytes:
        staged = self.uploads.get(upload_id)
        if staged is None:
            raise UploadNotFound(upload_id)
        return bytes(staged.data if length is None else staged.data[:length])

    def op_upload_truncate(self, upload_id: str, size: int) -> int:
        staged = self.uploads.get(upload_id)
        if staged is None:
            raise UploadNotFound(upload_id)
        if not staged.sealed and len(staged.data) > size:
            del staged.data[size:]
            staged.modified = self.now()
        return len(staged.data)

    def op_upload_seal(self, upload_id: str) -> int:
        staged = self.uploads.get(upload_id)
        if staged is None:
            raise UploadNotFound(upload_id)
        staged.sealed = True
        return len(staged.data)

    def op_upload_commit(self, upload_id: str, digest: str, size: int) -> int:
        staged = self.uploads.get(upload_id)
        if staged is None:
            raise UploadNotFound(upload_id)
        if len(staged.data) != size:
            raise UploadOffsetMismatch(len(staged.data), size)
        del self.uploads[upload_id]
        stored = self.blobs.get(digest)
        # Like the S3 driver: a stored blob of the same size is kept, any other replaced.
        if stored is None or len(stored) != size:
            self.blobs[digest] = bytes(staged.data)
            for observer in self.on_commit:
                observer(digest, self.blobs[digest])
        return size

    def op_upload_put(self, upload_id: str, digest: str, data: bytes) -> int:
        """A whole blob streamed straight to its key (the S3 driver's
        ``upload_put``): visible at once when the request is applied, the
        staging dropped; a stored blob of the same size is kept."""
        staged = self.uploads.get(upload_id)
        if staged is None or staged.sealed:
            raise UploadNotFound(upload_id)
        if staged.data:
            raise UploadOffsetMismatch(len(staged.data), 0)
        del self.uploads[upload_id]
        stored = self.blobs.get(digest)
        if stored is None or len(stored) != len(data):
            self.blobs[digest] = data
            for observer in self.on_commit:
                observer(digest, data)
        return len(data)

    def op_upload_abort(self, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)


class SimStoreClient:
    """The BlobStore interface over the simulated network (one per replica
    process), trusting the names it is given (``SimBlobStore`` checks them)."""

    def __init__(self, server: ObjectStore, net: Network, node: str, *, timeout: float = 5.0) -> None:
        self.server = server
        self.net = net
        self.node = node
        self.loop = server.loop
        self.timeout = timeout
        self._closed = False
        self.calls = 0

    async def _call(self, what: str, fn: Callable[[ObjectStore], T], *, size: int = 0) -> T:
        if self._closed:
            raise StorageUnavailable(f"{what}: client closed (process gone)")
        if self.net.is_paused(self.node):
            await self.net.wait_running(self.node)
        self.calls += 1
        pending = Pending(self.loop, self.loop.time() + self.timeout)

        def serve() -> None:
            result = self.server.handle(self.node, what, fn)
            reply_size = len(result) if isinstance(result, bytes) else 0
            sent = self.net.send(
                STORAGE_NODE,
                self.node,
                functools.partial(pending.resolve, result),
                size=reply_size,
                on_drop=pending.lost,
            )
            if not sent:
                pending.lost()

        if not self.net.send(self.node, STORAGE_NODE, serve, size=size, on_drop=pending.lost):
            raise StorageUnavailable(f"{what}: cannot connect to the object store")
        result = await pending.fut
        if result is Pending.TIMED_OUT:
            raise StorageUnavailable(f"{what}: no answer from the object store in {self.timeout:g}s")
        if isinstance(result, BaseException):
            raise result
        return cast(T, result)

    # -- BlobStore ------------------------------------------------------------------------

    async def stat(self, digest: str) -> int | None:
        return await self._call("HEAD blob", lambda s: s.op_stat(digest))

    async def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        data = await self._call("GET blob", lambda s: s.op_read(digest, offset, length))
        for i in range(0, len(data), _READ_PIECE):
            yield data[i : i + _READ_PIECE]

    def local_path(self, digest: str) -> str | None:
        return None

    async def presign(self, digest: str, expires_seconds: int) -> str | None:
        return None

    async def delete(self, digest: str) -> bool:
        node = self.node
        return await self._call("DELETE blob", lambda s: s.op_delete(digest, node))

    async def list_blobs(self) -> AsyncIterator[str]:
        digests = await self._call("LIST blobs", lambda s: sorted(s.blobs))
        for d in digests:
            yield d

    async def upload_start(self, upload_id: str) -> None:
        await self._call("PUT upload", lambda s: s.op_upload_start(upload_id))

    async def upload_write(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        # The body is read before it is sent.  If the chunk stream fails, what
        # arrived before is staged all the same, as the S3 driver keeps the
        # parts it created: taking them back is the registry's job.
        parts: list[bytes] = []
        try:
            async for chunk in chunks:
                parts.append(chunk)
        except Exception:
            if parts:
                received = b"".join(parts)
                with contextlib.suppress(StorageError):
                    await self._call(
                        "PUT upload part",
                        lambda s: s.op_upload_write(upload_id, offset, received),
                        size=len(received),
                    )
            raise
        data = b"".join(parts)
        return await self._call(
            "PUT upload part", lambda s: s.op_upload_write(upload_id, offset, data), size=len(data)
        )

    async def upload_size(self, upload_id: str) -> int | None:
        return await self._call("HEAD upload", lambda s: s.op_upload_size(upload_id))

    async def upload_modified(self, upload_id: str) -> float | None:
        return await self._call("HEAD upload", lambda s: s.op_upload_modified(upload_id))

    async def upload_read(self, upload_id: str, length: int | None = None) -> AsyncIterator[bytes]:
        data = await self._call("GET upload", lambda s: s.op_upload_read(upload_id, length))
        for i in range(0, len(data), _READ_PIECE):
            yield data[i : i + _READ_PIECE]

    async def upload_truncate(self, upload_id: str, size: int) -> int:
        return await self._call("TRUNCATE upload", lambda s: s.op_upload_truncate(upload_id, size))

    async def upload_seal(self, upload_id: str) -> int:
        return await self._call("SEAL upload", lambda s: s.op_upload_seal(upload_id))

    async def upload_commit(self, upload_id: str, digest: str, size: int) -> int:
        return await self._call("COMMIT upload", lambda s: s.op_upload_commit(upload_id, digest, size))

    async def upload_put(
        self,
        upload_id: str,
        digest: str,
        chunks: AsyncIterable[bytes],
        verify: Callable[[int], Awaitable[None]],
        length: int | None = None,
    ) -> int:
        # As the S3 driver: the body goes straight to the blob's key, which
        # shows it only once the upload completes, after ``verify``; a stream
        # or a check that fails leaves nothing behind.
        parts: list[bytes] = []
        async for chunk in chunks:
            parts.append(chunk)
        data = b"".join(parts)
        await verify(len(data))
        return await self._call(
            "PUT blob", lambda s: s.op_upload_put(upload_id, digest, data), size=len(data)
        )

    async def upload_abort(self, upload_id: str) -> None:
        await self._call("DELETE upload", lambda s: s.op_upload_abort(upload_id))

    async def list_uploads(self) -> AsyncIterator[str]:
        ids = await self._call("LIST uploads", lambda s: sorted(s.uploads))
        for upload_id in ids:
            yield upload_id

    async def sweep_abandoned(self) -> int:
        return 0  # a put is one request here: nothing is left half-written

    async def close(self) -> None:
        self._closed = True

    def kill(self) -> None:
        self._closed = True


class SimBlobStore(CheckedBlobStore[SimStoreClient]):
    """What a replica uses: the client behind the checks every driver has."""

    def __init__(self, server: ObjectStore, net: Network, node: str, *, timeout: float = 5.0) -> None:
        super().__init__(SimStoreClient(server, net, node, timeout=timeout), clock=server.loop.time)

    def kill(self) -> None:
        self.inner.kill()


if TYPE_CHECKING:

    def _conforms(client: SimStoreClient, store: SimBlobStore) -> tuple[BlobStore, BlobStore]:
        return client, store  # mypy checks both against the protocol
