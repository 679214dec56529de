"""A BlobStore on a POSIX filesystem.

Layout under ``root`` (both trees on one filesystem, so a commit is an atomic
rename)::

    blobs/<algorithm>/<first 2 hex>/<hex>   committed blobs
    uploads/<upload_id>                     staged uploads (writable)
    sealed/<upload_id>                      sealed uploads (being committed)

Choices this driver makes where ``BlobStore`` leaves room:

* ``FilesystemBlobStore`` is ``FilesystemDriver`` inside the checks of
  ``hareg/storage/checked.py``: names reach the driver already validated (a
  digest is ``<algorithm>:<hex>``, an upload id one path segment), so paths
  are built from them as given.  Use the driver bare only in tests.
* ``upload_write`` is all or nothing: if the chunk stream raises (a client
  stopped mid-body or stalled past the server's bound) or the call is
  cancelled, the bytes of this call are truncated away, the upload ends at
  ``offset`` again, and the exception propagates.  A failed disk write
  (ENOSPC, EIO) is truncated back the same way, so a staged upload is never
  torn and never holds half a request.
* ``upload_truncate`` cuts the staging file back under both locks below
  (another process writing it: StorageUnavailable); a sealed file is final
  and left alone.
* ``upload_seal`` renames ``uploads/<id>`` to ``sealed/<id>`` under both locks
  below: a writer that opened the file before cannot write after (it checks
  that the path still names its file once it holds the lock), so the sealed
  size and bytes are final.  ``upload_commit`` renames exactly that file into
  place after checking its size, replacing a stored blob of the same digest
  (cheaper than proving the old bytes sound, and it repairs a damaged one).
* Files are created ``0600`` and directories ``0750``: blob bytes are not
  readable by other users of the machine.
* Small chunks are coalesced up to ``write_batch`` bytes per thread-pool hop;
  every hop into the pool completes before the calling coroutine returns, even
  when it is cancelled, so no file operation outlives the call.
* Writers to one upload are serialised by an asyncio lock per upload id
  (dropped when unused) and, against other processes sharing the directory, by
  a non-blocking ``flock`` on the staging file: a writer that finds it taken
  gets UploadOffsetMismatch, like one that arrives late.  A seal or commit
  that finds it taken raises StorageUnavailable.
* Staged bytes are not fsynced as they are written (a crash may lose the tail
  of an upload, leaving a shorter but consistent prefix); ``upload_commit``
  fsyncs the file, renames it into place and fsyncs the directory (and any
  fan-out directory it had to create), so a committed blob is durable.
* ``upload_start`` on an id that is already staged raises StorageError.
* ``read`` at an offset at or past the end yields nothing.
* Unexpected OSErrors surface as StorageUnavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypedDict, TypeVar, TypeVarTuple, Unpack

from hareg.storage.base import (
    BlobNotFound,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    UploadOffsetMismatch,
    put_by_staging,
)
from hareg.storage.checked import CheckedBlobStore, StorageObserver

if TYPE_CHECKING:
    from hareg.storage.base import BlobStore

__all__ = ["FilesystemBlobStore", "FilesystemDriver"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_ALGORITHMS: Final = ("sha256", "sha512")

_MiB: Final = 1024 * 1024
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o750


# --------------------------------------------------------------------------
# Blocking helpers; they run on the thread pool.


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: str, base: str) -> None:
    """mkdir -p ``path`` (below the existing ``base``), fsyncing the parent
    of every directory on the way that may have just been created."""
    if os.path.isdir(path):
        return
    missing: list[str] = []
    p = path
    while p != base and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, _DIR_MODE)
        # Even if another thread won the mkdir it may not have fsynced yet.
        _fsync_dir(os.path.dirname(d))


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_staged(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (it may have been
    committed or aborted, and even restarted, since we opened it)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino)


def _create_upload(path: str, upload_id: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    except FileExistsError:
        raise StorageError(f"upload {upload_id} already exists") from None
    os.close(fd)


def _truncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def _open_for_write(path: str, upload_id: str, offset: int) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UploadNotFound(upload_id) from None
    try:
        locked = _try_flock(fd)
        size = os.fstat(fd).st_size
        if not locked:  # another process is appending right now
            raise UploadOffsetMismatch(size, offset)
        if not _still_staged(fd, path):
            raise UploadNotFound(upload_id)
        if size != offset:
            raise UploadOffsetMismatch(size, offset)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pwrite_all(fd: int, pos: int, bufs: list[bytes]) -> int:
    """Write ``bufs`` at ``pos``; on failure truncate back to ``pos``."""
    start = pos
    try:
        for buf in bufs:
            view = memoryview(buf)
            while view:
                n = os.pwrite(fd, view, pos)
                pos += n
                view = view[n:]
    except BaseException:
        os.ftruncate(fd, start)
        raise
    return pos


def _open_for_read(path: str) -> tuple[int, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def _stat_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _stat_mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _open_locked(path: str, upload_id: str) -> int | None:
    """``path`` opened and flocked, or None if it does not exist; raises
    StorageUnavailable if another process holds the lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not _try_flock(fd):
            raise StorageUnavailable(f"upload {upload_id} is being written by another process")
        if not _still_staged(fd, path):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _seal(staged: str, sealed: str, upload_id: str) -> int:
    fd = _open_locked(staged, upload_id)
    if fd is None:
        size = _stat_size(sealed)  # sealed before: the same size again
        if size is None:
            raise UploadNotFound(upload_id)
        return size
    try:
        os.rename(staged, sealed)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _truncate_staged(staged: str, sealed: str, upload_id: str, size: int) -> int:
    fd = _open_locked(staged, upload_id)
    if fd is None:
        current = _stat_size(sealed)  # sealed: its bytes are final
        if current is None:
            raise UploadNotFound(upload_id)
        return current
    try:
        current = os.fstat(fd).st_size
        if current > size:
            os.ftruncate(fd, size)
            return size
        return current
    finally:
        os.close(fd)


def _commit(
    staged: str, sealed: str, upload_id: str, size: int, blob: str, fanout: str, blobs_root: str
) -> int:
    # A sealed upload (the chunked path), else a staged one only this caller
    # knows (a monolithic push, a large manifest body).
    path = sealed
    fd = _open_locked(sealed, upload_id)
    if fd is None:
        path = staged
        fd = _open_locked(staged, upload_id)
        if fd is None:
            raise UploadNotFound(upload_id)
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            raise UploadOffsetMismatch(actual, size)
        os.fsync(fd)
        _ensure_dir(fanout, blobs_root)
        try:
            # Over a blob already stored: the verified bytes replace it.
            os.replace(path, blob)
        except FileNotFoundError:
            if os.path.isdir(fanout):
                raise UploadNotFound(upload_id) from None  # aborted meanwhile
            raise
        _fsync_dir(fanout)
        return size
    finally:
        os.close(fd)


def _list_names(path: str, dirs: bool) -> list[str]:
    """The directories (or regular files) in ``path``, sorted; which of the
    names are valid is the checking wrapper's business."""
    try:
        with os.scandir(path) as it:
            names = [
                e.name
                for e in it
                if (e.is_dir(follow_symlinks=False) if dirs else e.is_file(follow_symlinks=False))
            ]
    except FileNotFoundError:
        return []
    names.sort()
    return names


# --------------------------------------------------------------------------


class _LockEntry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class FilesystemDriver:
    """Blobs and staged uploads as files under ``root``, trusting the names it
    is given (``FilesystemBlobStore`` checks them first).

    ``executor`` runs the blocking file I/O (by default a private thread pool
    of ``max_workers`` threads, shut down by ``close``).  ``read_chunk_size``
    is the size of the chunks ``read`` yields; ``write_batch`` is how many
    bytes of small incoming chunks are gathered per write into the pool.
    The directories are created by the constructor (blocking, once).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        executor: Executor | None = None,
        max_workers: int = 16,
        read_chunk_size: int = _MiB,
        write_batch: int = _MiB,
    ) -> None:
        if read_chunk_size <= 0 or write_batch <= 0:
            raise ValueError("read_chunk_size and write_batch must be positive")
        self._root = Path(root).resolve()
        self._blobs = self._root / "blobs"
        self._uploads = self._root / "uploads"
        self._sealed = self._root / "sealed"
        for directory in (self._blobs, self._uploads, self._sealed):
            directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self._owns_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="hareg-fs"
        )
        self._read_chunk_size = read_chunk_size
        self._write_batch = write_batch
        self._locks: dict[str, _LockEntry] = {}
        self._closed = False

    @property
    def root(self) -> Path:
        return self._root

    # ---------------------------------------------------------------- paths

    def _blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self._blobs / algorithm / hexdigest[:2] / hexdigest

    def _upload_path(self, upload_id: str) -> Path:
        return self._uploads / upload_id

    def _sealed_path(self, upload_id: str) -> Path:
        return self._sealed / upload_id

    # ------------------------------------------------------------ machinery

    async def _run(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        """Run ``fn`` on the pool.  If the caller is cancelled, wait for the
        thread to finish anyway (it cannot be interrupted), then re-raise:
        no file operation (or fd use) ever outlives the awaiting coroutine."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            while not fut.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((fut,))
            if not fut.cancelled():
                fut.exception()  # mark retrieved; the cancellation wins
            raise
        except OSError as e:
            raise StorageUnavailable(f"filesystem error: {e}") from e

    @contextlib.asynccontextmanager
    async def _upload_lock(self, upload_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(upload_id)
        if entry is None:
            entry = self._locks[upload_id] = _LockEntry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[upload_id]

    async def _stream(
        self, path: Path, offset: int, length: int | None, missing: StorageError
    ) -> AsyncIterator[bytes]:
        opened = await self._run(_open_for_read, str(path))
        if opened is None:
            raise missing
        fd, size = opened
        try:
            end = size if length is None else min(size, offset + length)
            pos = offset
            while pos < end:
                data = await self._run(os.pread, fd, min(self._read_chunk_size, end - pos), pos)
                if not data:  # a staged upload truncated under us
                    break
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- blobs

    async def stat(self, digest: str) -> int | None:
        return await self._run(_stat_size, str(self._blob_path(digest)))

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self._stream(self._blob_path(digest), offset, length, BlobNotFound(digest))

    def local_path(self, digest: str) -> str | None:
        # One stat() on the event loop: the protocol makes this synchronous.
        path = self._blob_path(digest)
        return str(path) if path.is_file() else None

    async def presign(self, digest: str, expires_seconds: int) -> str | None:
        return None

    async def delete(self, digest: str) -> bool:
        return await self._run(_unlink, str(self._blob_path(digest)))

    async def list_blobs(self) -> AsyncIterator[str]:
        for algorithm in _ALGORITHMS:
            alg_dir = self._blobs / algorithm
            for prefix in await self._run(_list_names, str(alg_dir), True):
                for name in await self._run(_list_names, str(alg_dir / prefix), False):
                    if len(prefix) == 2 and name.startswith(prefix):
                        yield f"{algorithm}:{name}"

    # --------------------------------------------------------------- uploads

    async def upload_start(self, upload_id: str) -> None:
        await self._run(_create_upload, str(self._upload_path(upload_id)), upload_id)

    async def upload_write(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        path = self._upload_path(upload_id)
        async with self._upload_lock(upload_id):
            fd = await self._run(_open_for_write, str(path), upload_id, offset)
            try:
                return await self._append(fd, offset, chunks)
            finally:
                await self._run(os.close, fd)

    async def _append(self, fd: int, start: int, chunks: AsyncIterable[bytes]) -> int:
        pending: list[bytes] = []
        pending_len = 0
        pos = start
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if type(chunk) is not bytes:  # never hold on to a buffer the producer may reuse
                    chunk = bytes(chunk)
                pending.append(chunk)
                pending_len += len(chunk)
                if pending_len >= self._write_batch:
                    pos = await self._run(_pwrite_all, fd, pos, pending)
                    pending = []
                    pending_len = 0
            if pending:
                pos = await self._run(_pwrite_all, fd, pos, pending)
        except BaseException:
            # All or nothing: half a request is never part of an upload.  The
            # lock is still held, so no seal can have measured these bytes.
            if pos != start:
                await self._run(_truncate, fd, start)
            raise
        return pos

    async def _either(self, fn: Callable[[str], _T | None], upload_id: str) -> _T | None:
        """``fn`` of the staged file, else of the sealed one."""
        found = await self._run(fn, str(self._upload_path(upload_id)))
        if found is None:
            found = await self._run(fn, str(self._sealed_path(upload_id)))
        return found

    async def upload_size(self, upload_id: str) -> int | None:
        return await self._either(_stat_size, upload_id)

    async def upload_modified(self, upload_id: str) -> float | None:
        return await self._either(_stat_mtime, upload_id)

    async def upload_read(self, upload_id: str, length: int | None = None) -> AsyncIterator[bytes]:
        sealed = self._sealed_path(upload_id)
        path = sealed if await self._run(os.path.exists, str(sealed)) else self._upload_path(upload_id)
        async for chunk in self._stream(path, 0, length, UploadNotFound(upload_id)):
            yield chunk

    async def upload_seal(self, upload_id: str) -> int:
        staged, sealed = self._upload_path(upload_id), self._sealed_path(upload_id)
        async with self._upload_lock(upload_id):
            return await self._run(_seal, str(staged), str(sealed), upload_id)

    async def upload_truncate(self, upload_id: str, size: int) -> int:
        staged, sealed = self._upload_path(upload_id), self._sealed_path(upload_id)
        async with self._upload_lock(upload_id):
            return await self._run(_truncate_staged, str(staged), str(sealed), upload_id, size)

    async def upload_commit(self, upload_id: str, digest: str, size: int) -> int:
        staged, sealed = self._upload_path(upload_id), self._sealed_path(upload_id)
        blob = self._blob_path(digest)
        async with self._upload_lock(upload_id):
            return await self._run(
                _commit,
                str(staged),
                str(sealed),
                upload_id,
                size,
                str(blob),
                str(blob.parent),
                str(self._blobs),
            )

    async def upload_put(
        self,
        upload_id: str,
        digest: str,
        chunks: AsyncIterable[bytes],
        verify: Callable[[int], Awaitable[None]],
        length: int | None = None,
    ) -> int:
        # A commit is a rename here: staging first costs nothing extra.
        return await put_by_staging(self, upload_id, digest, chunks, verify)

    async def upload_abort(self, upload_id: str) -> None:
        await self._run(_unlink, str(self._upload_path(upload_id)))
        await self._run(_unlink, str(self._sealed_path(upload_id)))

    async def list_uploads(self) -> AsyncIterator[str]:
        staged = await self._run(_list_names, str(self._uploads), False)
        sealed = await self._run(_list_names, str(self._sealed), False)
        for name in sorted({*staged, *sealed}):
            yield name

    async def sweep_abandoned(self) -> int:
        return 0  # a write that dies leaves its bytes in its upload's staging file

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_executor:
            await asyncio.to_thread(self._executor.shutdown, wait=True)


class FilesystemOptions(TypedDict, total=False):
    """``FilesystemDriver``'s keyword arguments."""

    executor: Executor | None
    max_workers: int
    read_chunk_size: int
    write_batch: int


class FilesystemBlobStore(CheckedBlobStore[FilesystemDriver]):
    """The filesystem driver behind the shared checks and metrics (what the
    registry uses).  Arguments as for ``FilesystemDriver``, plus ``observe``
    (``hareg.storage.checked``); the driver is ``inner``."""

    def __init__(
        self,
        root: str | Path,
        *,
        observe: StorageObserver | None = None,
        **options: Unpack[FilesystemOptions],
    ) -> None:
        super().__init__(FilesystemDriver(root, **options), observe=observe)

    @property
    def root(self) -> Path:
        return self.inner.root


if TYPE_CHECKING:

    def _is_a_blob_store(driver: FilesystemDriver, store: FilesystemBlobStore) -> tuple[BlobStore, BlobStore]:
        return driver, store
