"""Blob GET, HEAD and DELETE: /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Final

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETag
from multidict import CIMultiDict

from hareg.http import pull_through
from hareg.http.base import registry, repo_name
from hareg.http.connections import CONNECTIONS
from hareg.http.keys import SETTINGS
from hareg.http.ranges import not_modified, select_range
from hareg.http.sendfile import ZeroCopyUnavailable, send_file, socket_of
from hareg.registry.blobs import BlobFile, BlobRedirect
from hareg.registry.errors import ErrorCode, RegistryError

_READ_CHUNK: Final = 1 << 20  # bytes per read where os.sendfile is refused


def _headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        # Content-addressed: the bytes under this URL never change.
        "Cache-Control": "max-age=31536000",
        "ETag": f'"{digest}"',
    }


def _not_modified(request: web.Request, headers: dict[str, str]) -> web.Response | None:
    """304 when the client's copy is current (If-None-Match); 412 on a failed If-Match."""
    if not not_modified(
        request.headers.get("If-Match"), request.headers.get("If-None-Match"), headers["ETag"]
    ):
        return None
    kept = ("Docker-Content-Digest", "ETag", "Cache-Control")
    return web.Response(status=304, headers={k: headers[k] for k in kept})


async def head_blob(request: web.Request) -> web.Response:
    # Answered here, never redirected: a HEAD has no body to offload, and a
    # presigned URL is signed for GET.
    reg, repo = registry(request), repo_name(request)
    try:
        info = await reg.blobs.stat(repo, request.match_info["digest"])
    except RegistryError as exc:
        if not pull_through.is_blob_unknown(exc) or reg.pull_through.mirror_of(repo) is None:
            raise
        # Not cached yet: the upstream says whether it has it (nothing is fetched).
        return await pull_through.head_blob(request, repo, request.match_info["digest"], _headers)
    headers = _headers(info.digest)
    if (unchanged := _not_modified(request, headers)) is not None:
        return unchanged
    headers["Content-Length"] = str(info.size)
    return web.Response(status=200, headers=headers)


class _BlobFile(web.FileResponse):
    """A blob sent by aiohttp where zero-copy cannot be (TLS: :func:`_zero_copy`),
    its conditions and range already decided (ranges.py):
    aiohttp's own Range handling (which refuses several ranges with 416 and
    reads ``bytes=-0`` as the whole file) only ever sees the chosen range, or
    none, and the ETag stays the digest (aiohttp would send one of the file's
    mtime and size, which HEAD and the other drivers' paths do not know)."""

    def __init__(self, path: str, rng: tuple[int, int] | None, headers: dict[str, str]) -> None:
        super().__init__(path, chunk_size=1 << 20, headers=headers)
        self._range = rng

    @property
    def etag(self) -> ETag | None:
        return super().etag

    @etag.setter
    def etag(self, value: ETag | str | None) -> None:
        pass  # the digest ETag given in the headers stays

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = CIMultiDict(request.headers)
        # Decided already, against the digest ETag; the date conditions are left to
        # aiohttp, except where an entity-tag condition makes RFC 9110 ignore them.
        for name in ("Range", "If-Range", "If-Match", "If-None-Match"):
            headers.popall(name, None)
        if "If-Match" in request.headers:
            headers.popall("If-Unmodified-Since", None)
        if "If-None-Match" in request.headers:
            headers.popall("If-Modified-Since", None)
        if self._range is not None:
            offset, length = self._range
            headers["Range"] = f"bytes={offset}-{offset + length - 1}"
        return await super().prepare(request.clone(headers=headers))


def _date_conditions(request: web.Request, headers: dict[str, str], mtime: float) -> web.Response | None:
    """If-Unmodified-Since (412) and If-Modified-Since (304) against the file's
    mtime, as aiohttp's FileResponse decides them, each only without its
    entity-tag counterpart (RFC 9110 §13.2.2)."""
    if "If-Match" not in request.headers:
        since = request.if_unmodified_since
        if since is not None and mtime > since.timestamp():
            raise RegistryError(
                ErrorCode.UNSUPPORTED, "the blob's file was written after If-Unmodified-Since", status=412
            )
    if "If-None-Match" not in request.headers:
        since = request.if_modified_since
        if since is not None and mtime <= since.timestamp():
            kept = ("Docker-Content-Digest", "ETag", "Cache-Control")
            response = web.Response(status=304, headers={k: headers[k] for k in kept})
            response.last_modified = mtime
            return response
    return None


async def _write_through(writer: AbstractStreamWriter, fd: int, offset: int, count: int) -> None:
    """The body read in the thread pool and written by aiohttp (os.sendfile refused the file)."""
    loop = asyncio.get_running_loop()
    end = offset + count
    while offset < end:
        chunk = await loop.run_in_executor(None, os.pread, fd, min(_READ_CHUNK, end - offset), offset)
        if not chunk:
            raise OSError(errno.EIO, f"the blob's file ended {end - offset} bytes before its size")
        await writer.write(chunk)
        offset += len(chunk)


async def _zero_copy(
    request: web.Request, path: str, rng: tuple[int, int] | None, headers: dict[str, str]
) -> web.StreamResponse | None:
    """The blob's file sent by os.sendfile on the connection's socket
    (sendfile.py), the date conditions decided on its mtime; None where the
    bytes cannot go straight to the socket (TLS...) or the file does not open:
    aiohttp's FileResponse then answers.  The file is opened and closed on the
    loop (a local file: no thread-pool round trips)."""
    try:
        socket_of(request.transport)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (ZeroCopyUnavailable, OSError):
        return None
    try:
        st = os.fstat(fd)
        if (unchanged := _date_conditions(request, headers, st.st_mtime)) is not None:
            return unchanged
        offset, count = rng if rng is not None else (0, st.st_size)
        response = web.StreamResponse(status=206 if rng else 200, headers=headers)
        response.last_modified = st.st_mtime
        response.content_length = count
        if rng is not None:
            response.headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{st.st_size}"
        writer = await response.prepare(request)
        if writer is not None and count:
            try:
                guard = request.app.get(CONNECTIONS)
                stall = guard.response_stall_timeout if guard is not None else None
                await send_file(request.transport, writer, fd, offset, count, stall)
            except ZeroCopyUnavailable:
                await _write_through(writer, fd, offset, count)
            except ConnectionError as exc:
                # The client went away mid-body.  Ended as aiohttp ends a handler whose
                # client left (handler cancellation): the access log says 499 and the
                # connection closes, without the traceback aiohttp logs for an error
                # raised by a handler.
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError(f"client gone mid-body: {exc}") from exc
        await response.write_eof()
        return response
    finally:
        os.close(fd)


async def get_blob(request: web.Request) -> web.StreamResponse:
    reg = registry(request)
    try:
        info = await reg.blobs.stat(repo_name(request), request.match_info["digest"])
    except RegistryError as exc:
        if not pull_through.is_blob_unknown(exc) or reg.pull_through.mirror_of(repo_name(request)) is None:
            raise
        # Not cached yet: from the upstream, stored as it streams.
        digest = request.match_info["digest"]
        fetched = await pull_through.stream_blob(request, repo_name(request), digest, _headers(digest))
        if fetched is not None:
            return fetched
        info = await reg.blobs.stat(repo_name(request), digest)  # fetched meanwhile by another pull
    reg.pull_through.served_from_cache(repo_name(request), "blob")
    headers = _headers(info.digest)
    if (unchanged := _not_modified(request, headers)) is not None:
        return unchanged
    # Decided first, the same way for every path, so an unsatisfiable range gets
    # the spec's JSON error (aiohttp's FileResponse would answer a bare 416).
    rng = select_range(
        request.headers.get("Range"), request.headers.get("If-Range"), info.size, headers["ETag"]
    )
    settings = request.app[SETTINGS]
    source = await reg.blobs.open(
        info,
        byte_range=rng,
        disable_redirect=settings.disable_redirect,
        redirect_expiry=settings.redirect_expiry,
    )
    if isinstance(source, BlobRedirect):
        # The object store serves the bytes; the client re-sends its Range there.
        return web.Response(
            status=307, headers={"Location": source.url, "Docker-Content-Digest": info.digest}
        )
    if isinstance(source, BlobFile):
        sent = await _zero_copy(request, source.path, rng, headers)
        # Elsewhere aiohttp sends the chosen range and answers the date conditions.
        return sent if sent is not None else _BlobFile(source.path, rng, headers)
    response = web.StreamResponse(status=206 if rng else 200, headers=headers)
    response.content_length = source.length
    if rng:
        response.headers["Content-Range"] = (
            f"bytes {source.offset}-{source.offset + source.length - 1}/{info.size}"
        )
    await response.prepare(request)
    async for chunk in source.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_blob(request: web.Request) -> web.Response:
    await registry(request).blobs.delete(repo_name(request), request.match_info["digest"])
    return web.Response(status=202)
