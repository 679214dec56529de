"""Blob GET, HEAD and DELETE: /v2/<name>/blobs/<digest>."""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import registry, repo_name
from hareg.http.keys import SETTINGS
from hareg.registry.errors import ErrorCode, RangeNotSatisfiable, RegistryError
from hareg.storage.base import BlobNotFound


def _headers(digest: str) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        # Content-addressed: the bytes under this URL never change.
        "Cache-Control": "max-age=31536000",
        "ETag": f'"{digest}"',
    }


async def head_blob(request: web.Request) -> web.Response:
    # Answered here, never redirected: a HEAD has no body to offload, and a
    # presigned URL is signed for GET.
    info = await registry(request).blobs.stat(repo_name(request), request.match_info["digest"])
    headers = _headers(info.digest)
    headers["Content-Length"] = str(info.size)
    return web.Response(status=200, headers=headers)


def _parse_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single-range request, None for the whole blob."""
    if "Range" not in request.headers:
        return None
    try:
        rng = request.http_range
    except ValueError:
        rng = None
    unsatisfiable = RangeNotSatisfiable(
        f"cannot satisfy range {request.headers['Range'][:100]!r} of a {size}-byte blob",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if rng is None:
        raise unsatisfiable
    start, stop = rng.start, rng.stop
    if start is None and stop is None:
        return None
    if start is not None and start < 0:  # suffix range: the last -start bytes
        start, stop = max(size + start, 0), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or stop <= start:
        raise unsatisfiable
    return start, stop - start


async def get_blob(request: web.Request) -> web.StreamResponse:
    reg = registry(request)
    info = await reg.blobs.stat(repo_name(request), request.match_info["digest"])
    headers = _headers(info.digest)
    # Checked first on every path, so an unsatisfiable range gets the spec's JSON
    # error (aiohttp's FileResponse would answer a bare 416).
    rng = _parse_range(request, info.size)
    settings = request.app[SETTINGS]
    if not settings.disable_redirect:
        url = await reg.store.presign(info.digest, settings.redirect_expiry)
        if url is not None:
            # The object store serves the bytes; the client re-sends its Range there.
            return web.Response(status=307, headers={"Location": url, "Docker-Content-Digest": info.digest})
    path = reg.store.local_path(info.digest)
    if path is not None:
        # sendfile, with Range and conditional requests handled by aiohttp.
        return web.FileResponse(path, headers=headers, chunk_size=1 << 20)
    offset, length = rng if rng else (0, info.size)
    chunks = reg.store.read(info.digest, offset, length)
    try:
        first = await anext(chunks, b"")
    except BlobNotFound:
        raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {info.digest} is missing from storage") from None
    response = web.StreamResponse(status=206 if rng else 200, headers=headers)
    response.content_length = length
    if rng:
        response.headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{info.size}"
    await response.prepare(request)
    if first:
        await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete_blob(request: web.Request) -> web.Response:
    await registry(request).blobs.delete(repo_name(request), request.match_info["digest"])
    return web.Response(status=202)
