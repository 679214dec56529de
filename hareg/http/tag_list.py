"""Tag lists: /v2/<name>/tags/list with n, last and a Link header."""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import json_response, next_link, query_page_size, registry, repo_name


async def list_tags(request: web.Request) -> web.Response:
    repo = repo_name(request)
    listing = registry(request).listing
    n = query_page_size(request, listing.max_page_size)
    tags, more = await listing.tags(repo, n, request.query.get("last"))
    link = next_link(request.path, {"n": str(n), "last": tags[-1]}) if more and tags else None
    return json_response({"name": repo, "tags": tags}, headers={"Link": link} if link else None)
