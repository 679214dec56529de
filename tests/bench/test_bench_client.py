"""The client and blob content against tiny in-process aiohttp servers: pulls
follow redirects and catch wrong bytes, tag lists follow ``Link`` pages, blob
content is deterministic and streams in ranges."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.blobs import BLOCK_SIZE, BlobSpec
from bench.client import DigestMismatch, OCIClient, RegistryHTTPError, sha256_digest

SIZES = [0, 1, 15, 16, 17, 1000, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 17, 3 * BLOCK_SIZE + 5]


def whole(blob: BlobSpec) -> bytes:
    return b"".join(blob.blocks())


@pytest.mark.parametrize("size", SIZES)
def test_blob_content_is_deterministic_and_sized(size: int) -> None:
    a, b = BlobSpec(seed=7, size=size), BlobSpec(seed=7, size=size)
    data = whole(a)
    assert len(data) == size
    assert data == whole(b)
    assert a.digest() == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert all(len(block) <= BLOCK_SIZE for block in a.blocks())


def test_blobs_with_different_seeds_differ() -> None:
    assert BlobSpec(1, 5000).digest() != BlobSpec(2, 5000).digest()


@pytest.mark.parametrize(
    ("start", "stop"), [(0, 10), (5, BLOCK_SIZE + 3), (BLOCK_SIZE, 2 * BLOCK_SIZE), (100, 3 * BLOCK_SIZE + 5)]
)
def test_range_blocks_are_slices_of_the_blob(start: int, stop: int) -> None:
    blob = BlobSpec(seed=3, size=3 * BLOCK_SIZE + 5)
    assert b"".join(blob.range_blocks(start, stop)) == whole(blob)[start:stop]


GOOD = BlobSpec(seed=11, size=300_000)
GOOD_BYTES = whole(GOOD)


async def _registry_app() -> web.Application:
    """Serves GOOD under three repos: honest, via a 307 to /storage, and corrupted."""

    async def blob(request: web.Request) -> web.StreamResponse:
        repo, digest = request.match_info["repo"], request.match_info["digest"]
        if digest != GOOD.digest():
            return web.Response(status=404)
        if repo == "redirect":
            return web.Response(status=307, headers={"Location": f"/storage/{digest}?sig=a%2Fb"})
        if repo == "redirect-abs":
            return web.Response(status=307, headers={"Location": f"{request.url.origin()}/storage/{digest}"})
        if repo == "loop":
            return web.Response(status=307, headers={"Location": f"/v2/loop/blobs/{digest}"})
        if repo == "corrupt":
            bad = bytearray(GOOD_BYTES)
            bad[len(bad) // 2] ^= 0x01
            return web.Response(body=bytes(bad))
        if repo == "short":
            return web.Response(body=GOOD_BYTES[:-1])
        return web.Response(body=GOOD_BYTES)

    async def storage(request: web.Request) -> web.Response:
        # The signature must arrive as it was sent (not re-quoted).
        assert request.raw_path.endswith("?sig=a%2Fb") or "sig" not in request.query
        return web.Response(body=GOOD_BYTES)

    async def tags(request: web.Request) -> web.Response:
        everything = [f"t{i}" for i in range(7)]
        n = int(request.query.get("n", "100"))
        last = request.query.get("last")
        start = everything.index(last) + 1 if last else 0
        page = everything[start : start + n]
        headers = {}
        if start + n < len(everything):
            headers["Link"] = f'</v2/r/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return web.json_response({"name": "r", "tags": page}, headers=headers)

    async def manifest(request: web.Request) -> web.Response:
        # Always the same body, whatever digest was asked for.
        return web.Response(body=b"{}", headers={"Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/v2/{repo}/blobs/{digest}", blob)
    app.router.add_get("/storage/{digest}", storage)
    app.router.add_get("/v2/r/tags/list", tags)
    app.router.add_get("/v2/r/manifests/{reference}", manifest)
    return app


@pytest.fixture
async def client() -> AsyncIterator[OCIClient]:
    server = TestServer(await _registry_app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield OCIClient(session, str(server.make_url("/")))
    finally:
        await server.close()


async def test_pull_verifies_good_bytes(client: OCIClient) -> None:
    assert await client.pull_blob("plain", GOOD.digest(), GOOD.size) == GOOD.size


@pytest.mark.parametrize("repo", ["redirect", "redirect-abs"])
async def test_pull_follows_307(client: OCIClient, repo: str) -> None:
    assert await client.pull_blob(repo, GOOD.digest(), GOOD.size) == GOOD.size


async def test_pull_catches_a_corrupted_blob(client: OCIClient) -> None:
    with pytest.raises(DigestMismatch) as err:
        await client.pull_blob("corrupt", GOOD.digest())
    assert err.value.expected == GOOD.digest()
    assert err.value.actual != GOOD.digest()
    assert err.value.size == GOOD.size


async def test_pull_catches_a_truncated_blob(client: OCIClient) -> None:
    with pytest.raises(DigestMismatch):
        await client.pull_blob("short", GOOD.digest())


async def test_pull_gives_up_on_a_redirect_loop(client: OCIClient) -> None:
    with pytest.raises(RegistryHTTPError, match="redirects"):
        await client.pull_blob("loop", GOOD.digest())


async def test_pull_of_a_missing_blob_is_an_http_error(client: OCIClient) -> None:
    with pytest.raises(RegistryHTTPError) as err:
        await client.pull_blob("plain", BlobSpec(99, 10).digest())
    assert err.value.status == 404


async def test_tag_list_follows_link_pages(client: OCIClient) -> None:
    assert await client.list_tags("r", n=3) == [f"t{i}" for i in range(7)]


async def test_manifest_by_digest_is_checked(client: OCIClient) -> None:
    assert (await client.get_manifest("r", sha256_digest(b"{}"))).body == b"{}"
    with pytest.raises(DigestMismatch):
        await client.get_manifest("r", sha256_digest(b"something else"))
