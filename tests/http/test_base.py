"""/v2/, unknown endpoints and the error format."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient


async def test_api_base_answers_200_with_version_header(client: TestClient[object, object]) -> None:
    r = await client.get("/v2/")
    assert r.status == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert await r.json() == {}


async def test_unknown_endpoint_is_a_json_404(client: TestClient[object, object]) -> None:
    r = await client.get("/v2/repo/nonsense/path")
    assert r.status == 404
    body = await r.json()
    assert body["errors"][0]["code"] == "UNSUPPORTED"


async def test_wrong_method_is_a_json_405_with_allow(client: TestClient[object, object]) -> None:
    r = await client.post("/v2/repo/tags/list")
    assert r.status == 405
    assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"
    assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v2/", {"GET", "HEAD"}),
        ("POST", "/v2/_catalog", {"GET", "HEAD"}),
        ("POST", "/v2/repo/manifests/latest", {"GET", "HEAD", "PUT", "DELETE"}),
        ("PATCH", "/v2/repo/blobs/sha256:" + "0" * 64, {"GET", "HEAD", "DELETE"}),
        ("POST", "/v2/repo/blobs/uploads/some-id", {"GET", "HEAD", "PATCH", "PUT", "DELETE"}),
        ("GET", "/v2/repo/blobs/uploads/", {"POST"}),
        ("DELETE", "/v2/repo/referrers/sha256:" + "0" * 64, {"GET", "HEAD"}),
    ],
)
async def test_every_405_names_the_allowed_methods(
    client: TestClient[object, object], method: str, path: str, allowed: set[str]
) -> None:
    r = await client.request(method, path)
    assert r.status == 405
    assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"
    assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed
