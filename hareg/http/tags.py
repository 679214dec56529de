"""Tag lists: /v2/<name>/tags/list with n, last and a Link header."""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import json_response, next_link, query_int, registry, repo_name


async def list_tags(request: web.Request) -> web.Response:
    repo = repo_name(request)
    n = query_int(request, "n")
    tags, more = await registry(request).listing.tags(repo, n, request.query.get("last"))
    headers = {"Link": next_link(request.path, n, tags[-1])} if more and tags else None
    return json_response({"name": repo, "tags": tags}, headers=headers)
