"""Blob GET, HEAD and DELETE: /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import asyncio
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import ETag
from multidict import CIMultiDict

from hareg.http import pull_through
from hareg.http.base import registry, repo_name
from hareg.http.keys import SETTINGS
from hareg.http.ranges import not_modified, select_range
from hareg.http.sendfile import ZeroCopyUnavailable, send_file
from hareg.registry.blobs import BlobFile, BlobRedirect
from hareg.registry.errors import RegistryError


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
    """A blob sent with os.sendfile on the socket (sendfile.py), its conditions
    and range already decided (ranges.py):
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

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        # aiohttp calls this with the range decided and the file open: the
        # body goes by os.sendfile on the socket (sendfile.py), or, where it
        # cannot (TLS...), by aiohttp's own path (a thread pool under uvloop).
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        if not self.compression:
            try:
                await send_file(request.transport, writer, fobj.fileno(), offset, count)
            except ZeroCopyUnavailable:
                pass
            except ConnectionError as exc:
                # The client went away mid-body.  Ended as aiohttp ends a handler whose
                # client left (handler cancellation): the access log says 499 and the
                # connection closes, without the traceback aiohttp logs for an error
                # raised by a handler; the file is closed by FileResponse.prepare.
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError(f"client gone mid-body: {exc}") from exc
            else:
                await web.StreamResponse.write_eof(self)
                return writer
        return await super()._sendfile(request, fobj, offset, count)


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
        # Zero-copy; aiohttp picks the chosen range and answers the date conditions.
        return _BlobFile(source.path, rng, headers)
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
