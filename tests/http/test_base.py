"""/v2/, unknown endpoints and the error format."""

from __future__ import annotations

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


async def test_wrong_method_is_a_json_405(client: TestClient[object, object]) -> None:
    r = await client.post("/v2/repo/tags/list")
    assert r.status == 405
    assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"
