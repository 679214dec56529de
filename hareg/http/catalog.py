"""The repository catalog: /v2/_catalog with n, last and a Link header."""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import json_response, next_link, query_int, registry


async def catalog(request: web.Request) -> web.Response:
    n = query_int(request, "n")
    repos, more = await registry(request).listing.catalog(n, request.query.get("last"))
    headers = {"Link": next_link(request.path, n, repos[-1])} if more and repos else None
    return json_response({"repositories": repos}, headers=headers)
