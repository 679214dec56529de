"""The referrers API: /v2/<name>/referrers/<digest>[?artifactType=...]."""

from __future__ import annotations

import json

from aiohttp import web

from hareg.http.base import registry, repo_name
from hareg.registry.manifest_format import OCI_INDEX


async def list_referrers(request: web.Request) -> web.Response:
    artifact_type = request.query.get("artifactType")
    index = await registry(request).listing.referrers(
        repo_name(request), request.match_info["digest"], artifact_type
    )
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else None
    # Bytes, not text: aiohttp would append "; charset=utf-8" to a text response's type.
    return web.Response(body=json.dumps(index).encode(), headers=headers, content_type=OCI_INDEX)
