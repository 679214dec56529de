"""The hot-route shortcut resolves every request as aiohttp's router does
without it: the same route and match for manifests and blobs, and the same
404 or 405 (with its methods) everywhere else, on the registry's real
routes; and real requests through it are served."""

from __future__ import annotations

import hashlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from hareg.http.app import init_app
from hareg.http.routing import HotRoutes
from hareg.registry.service import Registry

DIGEST = "sha256:" + "a" * 64
PATHS = [
    f"/v2/r/blobs/{DIGEST}",
    f"/v2/team/app/blobs/{DIGEST}",
    "/v2/r/blobs/uploads",
    "/v2/r/blobs/uploads/",
    "/v2/r/blobs/uploads/some-id",
    f"/v2/r/blobs/uploads/blobs/{DIGEST}",
    "/v2/r/manifests/latest",
    f"/v2/r/manifests/{DIGEST}",
    "/v2/a/tags/list/manifests/x",
    "/v2/a/referrers/manifests/manifests/x",
    "/v2/manifests/x",
    "/v2//manifests/x",
    "/v2/r/manifests/",
    "/v2/r/manifests",
    "/v2/r%0Aq/manifests/x",
    "/v2/r/manifests/%7Bx%7D",
    "/v2/a%2Fb/blobs/x",
    "/v2/r/tags/list",
    f"/v2/r/referrers/{DIGEST}",
    "/v2/r/blobs/x/y",
    "/v2/_catalog",
    "/v2/",
    "/hareg/v1/manifests/x",
    "/other/r/manifests/x",
    "/blobs/x",
]
METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]


async def _without_shortcut(app: web.Application, request: web.Request) -> tuple[object, ...]:
    """What the router decides with the shortcut skipped: the first resource,
    in registration order, matching the path and method (aiohttp's rule for
    these paths), else 405 with every method served there, else 404."""
    allowed: set[str] = set()
    for resource in app.router.resources():
        if isinstance(resource, HotRoutes):
            continue
        match, methods = await resource.resolve(request)
        if match is not None:
            return ("route", match.route, dict(match))
        allowed |= methods
    return ("405", frozenset(allowed)) if allowed else ("404",)


async def _with_router(app: web.Application, request: web.Request) -> tuple[object, ...]:
    match = await app.router.resolve(request)
    exc = match.http_exception
    if exc is None:
        return ("route", match.route, dict(match))
    if exc.status == 405:
        return ("405", frozenset(exc.headers["Allow"].split(",")) - {""})
    return (str(exc.status),)


async def test_the_shortcut_resolves_as_the_router(registry: Registry) -> None:
    app = init_app(registry)
    app.freeze()
    assert any(isinstance(r, HotRoutes) for r in app.router.resources())
    for path in PATHS:
        for method in METHODS:
            request = make_mocked_request(method, path, app=app)
            got = await _with_router(app, request)
            want = await _without_shortcut(app, request)
            assert got == want, (method, path)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_manifests_and_blobs_are_served_through_it(
    client: TestClient[object, object], method: str
) -> None:
    body = b'{"a": 1}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    started = await client.post("/v2/hot/r/blobs/uploads/")
    assert started.status == 202
    location = started.headers["Location"]
    done = await client.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", data=body)
    assert done.status == 201
    blob = await client.request(method, f"/v2/hot/r/blobs/{digest}")
    assert blob.status == 200 and blob.headers["Docker-Content-Digest"] == digest
    missing = await client.request(method, "/v2/hot/r/manifests/nope")
    assert missing.status == 404
    refused = await client.post(f"/v2/hot/r/blobs/{digest}")
    assert refused.status == 405 and "HEAD" in refused.headers["Allow"]
