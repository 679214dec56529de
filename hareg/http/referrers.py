"""The referrers API: /v2/<name>/referrers/<digest>[?artifactType=...], paged
with a Link header when the index would exceed the page bound (listing.py)."""

from __future__ import annotations

import json

from aiohttp import web

from hareg.http.base import next_link, registry, repo_name
from hareg.registry.manifest_format import OCI_INDEX

# The query parameter of a mirrored repository's next referrers page: the upstream's own page query.
UPSTREAM_PAGE = "upstreamNext"


async def list_referrers(request: web.Request) -> web.Response:
    artifact_type = request.query.get("artifactType")
    reg = registry(request)
    if reg.pull_through.mirror_of(repo_name(request)) is not None and "last" not in request.query:
        # A mirrored repository: the upstream's referrers, passed through (docs/pull-through.md),
        # its further pages behind our own Link (the upstream's page query in ``upstreamNext``).
        found = await reg.pull_through.referrers(
            repo_name(request), request.match_info["digest"], artifact_type, request.query.get(UPSTREAM_PAGE)
        )
        if found is not None:
            headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
            if found.next_page is not None:
                params = {"artifactType": artifact_type} if artifact_type is not None else {}
                headers["Link"] = next_link(request.path, {**params, UPSTREAM_PAGE: found.next_page})
            return web.Response(
                body=json.dumps(found.index).encode(), headers=headers, content_type=OCI_INDEX
            )
    page = await reg.listing.referrers(
        repo_name(request), request.match_info["digest"], artifact_type, request.query.get("last")
    )
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    if page.next_last is not None:
        params = {"artifactType": artifact_type} if artifact_type is not None else {}
        headers["Link"] = next_link(request.path, {**params, "last": page.next_last})
    # Bytes, not text: aiohttp would append "; charset=utf-8" to a text response's type.
    return web.Response(body=json.dumps(page.index).encode(), headers=headers, content_type=OCI_INDEX)
