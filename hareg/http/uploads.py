"""Blob uploads: /v2/<name>/blobs/uploads/ and /v2/<name>/blobs/uploads/<id>."""

from __future__ import annotations

import re
from typing import NoReturn
from urllib.parse import urlencode

from aiohttp import web

from hareg.http.base import has_body, registry, repo_name, request_chunks
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RangeNotSatisfiable, RegistryError
from hareg.registry.names import check_name
from hareg.registry.results import BlobInfo, UploadStatus
from hareg.registry.upload_state import STATE_PARAM
from hareg.registry.uploads import range_header

# The spec's "<start>-<end>"; the "bytes " prefix and "/<total>" suffix some clients send are tolerated.
# ASCII digits, at most 19 (an int64), so int() can neither see '٣' nor choke on 5000 digits.
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})(?:/(?:[0-9]{1,19}|\*))?")


def _upload_location(request: web.Request, status: UploadStatus) -> str:
    token = registry(request).upload_signer.sign(status.repo, status.upload_id)
    return f"/v2/{status.repo}/blobs/uploads/{status.upload_id}?{urlencode({STATE_PARAM: token})}"


def _upload_headers(request: web.Request, status: UploadStatus) -> dict[str, str]:
    return {
        "Location": _upload_location(request, status),
        "Range": range_header(status.size),
        "Docker-Upload-UUID": status.upload_id,
        "Content-Length": "0",
    }


def _created(repo: str, info: BlobInfo) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{repo}/blobs/{info.digest}",
            "Docker-Content-Digest": info.digest,
            "Content-Length": "0",
        },
    )


def _chunk_range(request: web.Request) -> tuple[int | None, int | None]:
    """(start, length) declared by Content-Range / Content-Length."""
    length = request.content_length
    header = request.headers.get("Content-Range")
    if header is None:
        return None, length
    m = _CONTENT_RANGE_RE.fullmatch(header.strip())
    if not m:
        raise RegistryError(
            ErrorCode.BLOB_UPLOAD_INVALID, f"malformed Content-Range {header[:100]!r}; expected <start>-<end>"
        )
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RangeNotSatisfiable(f"Content-Range {header!r} ends before it starts")
    if length is not None and length != end - start + 1:
        raise RangeNotSatisfiable(f"Content-Range {header!r} does not match Content-Length {length}")
    return start, end - start + 1


async def start_upload(request: web.Request) -> web.Response:
    reg = registry(request)
    repo = repo_name(request)
    query = request.query
    if "mount" in query:
        info = await reg.blobs.mount(repo, query["mount"], query.get("from", ""))
        if info is not None:
            return _created(repo, info)
        # Not mountable: fall back to an ordinary upload session (202), as the spec says.
    if "digest" in query:
        info = await reg.uploads.monolithic(
            repo, query["digest"], request_chunks(request), length=request.content_length
        )
        return _created(repo, info)
    status = await reg.uploads.start(repo, query.get("digest-algorithm", "sha256"))
    return web.Response(status=202, headers=_upload_headers(request, status))


def _upload_id(request: web.Request) -> str:
    """The upload id of a signed upload URL (the signature is checked here)."""
    upload_id = request.match_info["upload_id"]
    repo = check_name(repo_name(request))
    registry(request).upload_signer.verify(request.query.get(STATE_PARAM), repo, upload_id)
    return upload_id


async def upload_status(request: web.Request) -> web.Response:
    status = await registry(request).uploads.status(repo_name(request), _upload_id(request))
    return web.Response(status=204, headers=_upload_headers(request, status))


async def _unless_gone(request: web.Request, upload_id: str, exc: RegistryError) -> NoReturn:
    """Raise ``exc`` (a refusal of what the request says), or BLOB_UPLOAD_UNKNOWN
    if the upload is gone (cancelled, finished, expired): that answer does not
    depend on the headers.  The session is looked up only on this error path."""
    await registry(request).uploads.status(repo_name(request), upload_id)
    raise exc


async def patch_upload(request: web.Request) -> web.Response:
    upload_id = _upload_id(request)
    try:
        start, length = _chunk_range(request)
    except RegistryError as exc:
        await _unless_gone(request, upload_id, exc)
    status = await registry(request).uploads.write(
        repo_name(request), upload_id, request_chunks(request), start=start, length=length
    )
    return web.Response(status=202, headers=_upload_headers(request, status))


async def finish_upload(request: web.Request) -> web.Response:
    repo = repo_name(request)
    upload_id = _upload_id(request)
    digest = request.query.get("digest")
    try:
        start, length = _chunk_range(request)
        if not digest:
            raise RegistryError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required")
        parse_digest(digest)
    except RegistryError as exc:
        await _unless_gone(request, upload_id, exc)
    chunks = request_chunks(request) if has_body(request) else None
    info = await registry(request).uploads.finish(repo, upload_id, digest, chunks, start=start, length=length)
    return _created(repo, info)


async def cancel_upload(request: web.Request) -> web.Response:
    await registry(request).uploads.cancel(repo_name(request), _upload_id(request))
    return web.Response(status=204)
