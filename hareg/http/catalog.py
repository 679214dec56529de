"""The repository catalog: /v2/_catalog with n, last and a Link header."""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import json_response, next_link, query_page_size, registry


async def catalog(request: web.Request) -> web.Response:
    listing = registry(request).listing
    n = query_page_size(request, listing.max_page_size)
    repos, more = await listing.catalog(n, request.query.get("last"))
    link = next_link(request.path, {"n": str(n), "last": repos[-1]}) if more and repos else None
    return json_response({"repositories": repos}, headers={"Link": link} if link else None)
