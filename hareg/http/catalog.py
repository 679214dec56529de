"""The repository catalog: /v2/_catalog with n, last and a Link header."""

from __future__ import annotations

from aiohttp import web

from hareg.http.auth import ACCESS, caller_of
from hareg.http.base import json_response, next_link, query_page_size, registry


async def catalog(request: web.Request) -> web.Response:
    """With authentication, only the repositories the caller may pull are listed."""
    listing = registry(request).listing
    n = query_page_size(request, listing.max_page_size)
    access, caller = request.app.get(ACCESS), caller_of(request)
    if access is not None and caller is not None:
        repos, cursor = await listing.visible_catalog(
            n, request.query.get("last"), lambda repo: access.can_pull(caller, repo)
        )
    else:
        repos, more = await listing.catalog(n, request.query.get("last"))
        cursor = repos[-1] if more and repos else None
    link = next_link(request.path, {"n": str(n), "last": cursor}) if cursor else None
    return json_response({"repositories": repos}, headers={"Link": link} if link else None)
