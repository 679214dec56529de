"""/v2/, unknown endpoints and the error format."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp.test_utils import TestClient
from kv_hooks import HookedKV
from oci_helpers import config_blob, image_manifest, push_blob, push_image, put_manifest, sha256

from hareg.kv.base import Compare, Put, TxnOp
from hareg.registry.service import Registry


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


async def test_a_write_that_keeps_losing_its_compares_is_a_503_not_a_500(
    hooked: tuple[Registry, HookedKV, TestClient[object, object]],
) -> None:
    """Another writer moves the tag before every attempt of this push, until the
    store gives up: the client is told to retry (503), nothing is written."""
    registry, kv, client = hooked
    image = await push_image(client, "repo", "v1", seed="one")
    other = await push_image(client, "repo", "v2", seed="two")
    tag_key = registry.meta.keys.tag("repo", "v1")
    flips = 0
    moving = False

    async def move_the_tag_first(compares: Sequence[Compare], ops: Sequence[TxnOp]) -> None:
        nonlocal flips, moving
        if moving or flips >= 100 or not any(isinstance(op, Put) and op.key == tag_key for op in ops):
            return
        flips += 1
        moving = True
        try:
            target = other.digest if flips % 2 else image.digest
            await registry.meta.move_tag("repo", "v1", target, "rollback")
        finally:
            moving = False

    kv.before_txn = move_the_tag_first
    body = image_manifest(config_blob("three"), [])
    await push_blob(client, "repo", config_blob("three"))
    r = await put_manifest(client, "repo", "v1", body)
    kv.before_txn = None
    assert r.status == 503
    entry = (await r.json())["errors"][0]
    assert entry["code"] == "UNAVAILABLE" and "concurrent" in entry["message"], entry
    assert r.headers.get("Retry-After") == "1", dict(r.headers)
    r = await client.get(f"/v2/repo/manifests/{sha256(body)}")
    assert r.status == 404
