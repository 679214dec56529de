"""The pull-through cache over HTTP (docs/pull-through.md): mirrored
repositories refuse writes, and their manifests and blobs are served from
the upstream when they are not cached (``hareg/registry/pull_through.py``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from hareg.http.base import registry
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.policy import READ_METHODS
from hareg.registry.results import ManifestContent

log = logging.getLogger("hareg.http")

# Said on a manifest answered from the cache because the upstream, due to be
# asked, could not be (stale-if-error); RFC 9111's Warning 110 says the same to
# generic HTTP tooling.
STALE_HEADER = "Hareg-Pull-Through"
STALE_VALUE = "stale"


def refuse_mirror_write(request: web.Request) -> None:
    """Pushes, uploads, mounts into and deletes of a mirrored repository: 403 DENIED."""
    if request.method not in READ_METHODS:
        name = request.match_info.get("name")
        if name is not None and request.path.startswith("/v2/"):
            registry(request).pull_through.check_write(name)


async def manifest_content(
    request: web.Request, repo: str, reference: str
) -> tuple[ManifestContent, dict[str, str]]:
    """A mirrored repository's manifest (from the cache or the upstream) and the headers that say how."""
    found = await registry(request).pull_through.manifest(repo, reference)
    headers = {}
    if found.stale:
        headers[STALE_HEADER] = STALE_VALUE
        headers["Warning"] = '110 hareg "Response is Stale"'
    return found.content, headers


async def stream_blob(
    request: web.Request, repo: str, digest: str, headers: dict[str, str]
) -> web.StreamResponse | None:
    """An uncached blob of a mirrored repository, streamed from the upstream as it
    is stored; None: another pull fetched it meanwhile (serve it from the cache).
    A failure after the headers went out breaks the connection: the client sees
    a short body, never wrong bytes under the digest."""
    # A Range is ignored (RFC 9110 allows it): the whole blob is fetched and
    # verified on its first pull; ranges are served once it is cached.
    blob = await registry(request).pull_through.blob(repo, digest)
    if blob is None:
        return None
    try:
        response = web.StreamResponse(status=200, headers=headers)
        if blob.size is not None:
            response.content_length = blob.size
        await response.prepare(request)
        try:
            async for chunk in blob.chunks:
                await response.write(chunk)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            # The status went out already: the only honest answer left is a
            # body that breaks off (the connection closed before its end).
            log.warning("pull-through blob %s for %s failed mid-body: %s", digest, repo, exc)
            response.force_close()
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        await blob.close()


async def head_blob(
    request: web.Request, repo: str, digest: str, make_headers: Callable[[str], dict[str, str]]
) -> web.Response:
    """A HEAD of a mirrored blob not cached yet, answered from the upstream's HEAD."""
    size = await registry(request).pull_through.blob_size(repo, digest)
    headers = make_headers(str(parse_digest(digest)))
    if size is not None:
        headers["Content-Length"] = str(size)
    return web.Response(status=200, headers=headers)


def is_blob_unknown(exc: RegistryError) -> bool:
    return exc.code is ErrorCode.BLOB_UNKNOWN
