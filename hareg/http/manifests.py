"""Manifests: /v2/<name>/manifests/<reference>."""

from __future__ import annotations

from aiohttp import web

from hareg.http import pull_through
from hareg.http.base import registry, repo_name, request_chunks
from hareg.kv.base import KVRejected
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.manifest_format import MAX_MANIFEST_BYTES
from hareg.registry.streams import read_all


def _too_large(size: int) -> RegistryError:
    return RegistryError(
        ErrorCode.MANIFEST_INVALID, f"manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES}", status=413
    )


async def _content(request: web.Request) -> tuple[dict[str, str], bytes]:
    reg, repo, reference = registry(request), repo_name(request), request.match_info["reference"]
    extra: dict[str, str] = {}
    if reg.pull_through.mirror_of(repo) is not None:
        content, extra = await pull_through.manifest_content(request, repo, reference)
    else:
        content = await reg.manifests.get(repo, reference)
    headers = {
        **extra,
        "Content-Type": content.media_type,
        "Docker-Content-Digest": content.digest,
        "ETag": f'"{content.digest}"',
    }
    return headers, content.body


async def get_manifest(request: web.Request) -> web.Response:
    headers, body = await _content(request)
    return web.Response(body=body, headers=headers)


async def head_manifest(request: web.Request) -> web.Response:
    headers, body = await _content(request)
    headers["Content-Length"] = str(len(body))
    return web.Response(headers=headers)


async def put_manifest(request: web.Request) -> web.Response:
    repo = repo_name(request)
    if request.content_length is not None and request.content_length > MAX_MANIFEST_BYTES:
        raise _too_large(request.content_length)
    body = await read_all(request_chunks(request, stalled=ErrorCode.MANIFEST_INVALID), MAX_MANIFEST_BYTES)
    try:
        pushed = await registry(request).manifests.put(
            repo,
            request.match_info["reference"],
            body,
            request.headers.get("Content-Type"),
            request.query.getall("tag", []),
        )
    except KVRejected as exc:
        if not exc.too_big:
            raise
        # Only if the limits were raised past what etcd accepts (docs/configuration.md).
        raise RegistryError(
            ErrorCode.MANIFEST_INVALID,
            f"the manifest's metadata (its references, annotations and tags) is larger than etcd "
            f"accepts in one transaction ({exc}); lower limits.maxManifestReferences or "
            "limits.maxManifestAnnotationBytes, or raise etcd's --max-txn-ops or --max-request-bytes",
            detail={"limit": "etcd"},
        ) from None
    headers = {
        "Location": f"/v2/{repo}/manifests/{pushed.digest}",
        "Docker-Content-Digest": pushed.digest,
        "Content-Length": "0",
    }
    if pushed.subject:
        headers["OCI-Subject"] = pushed.subject
    response = web.Response(status=201, headers=headers)
    for tag in pushed.tags:
        response.headers.add("OCI-Tag", tag)
    return response


async def delete_manifest(request: web.Request) -> web.Response:
    await registry(request).manifests.delete(repo_name(request), request.match_info["reference"])
    return web.Response(status=202)
