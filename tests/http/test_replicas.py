"""Several replicas in one process: each has its own etcd connection and
cache, all share one key prefix and one blob store, as the replicas of a
cluster do.  Any request may land on any of them."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from oci_helpers import config_blob, image_manifest, push_blob, sha256, start_replicas

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def replicas(etcd_url: str, tmp_path: Path) -> AsyncIterator[list[Client]]:
    prefix = f"/replicas-{uuid.uuid4().hex[:10]}"
    async with AsyncExitStack() as stack:
        yield [
            client
            for _, client in await start_replicas(stack, etcd_url, tmp_path / "shared-blobs", prefix, 3)
        ]


async def test_one_upload_spread_over_three_replicas(replicas: list[Client]) -> None:
    a, b, c = replicas
    chunks = [bytes([i]) * (300_000 + i) for i in range(4)]
    blob = b"".join(chunks)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    r = await a.post("/v2/team/app/blobs/uploads/")
    assert r.status == 202
    location = r.headers["Location"]
    offset = 0
    for i, chunk in enumerate(chunks[:3]):
        replica = [b, c, a][i]  # every chunk lands somewhere else than the one before
        r = await replica.patch(
            location, data=chunk, headers={"Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
        )
        assert r.status == 202, await r.text()
        location = r.headers["Location"]
        offset += len(chunk)
        r = await [c, a, b][i].get(location)  # status from yet another replica
        assert r.status == 204 and r.headers["Range"] == f"0-{offset - 1}"
    # The last chunk comes with the closing PUT on a replica whose running hash
    # is not current: it must re-hash the staged bytes to verify the digest.
    r = await c.put(
        location,
        params={"digest": digest, "_state": location.split("_state=")[1]},
        data=chunks[3],
        headers={"Content-Range": f"{offset}-{offset + len(chunks[3]) - 1}"},
    )
    assert r.status == 201, await r.text()
    for replica in replicas:
        r = await replica.get(f"/v2/team/app/blobs/{digest}")
        assert r.status == 200 and await r.read() == blob


async def test_wrong_digest_is_refused_even_when_rehashing_elsewhere(replicas: list[Client]) -> None:
    a, b, _ = replicas
    r = await a.post("/v2/repo/blobs/uploads/")
    location = r.headers["Location"]
    r = await a.patch(location, data=b"real bytes", headers={"Content-Range": "0-9"})
    assert r.status == 202
    wrong = sha256(b"other bytes")
    r = await b.put(r.headers["Location"] + f"&digest={wrong}")
    assert r.status == 400 and (await r.json())["errors"][0]["code"] == "DIGEST_INVALID"
    r = await b.head(f"/v2/repo/blobs/{wrong}")
    assert r.status == 404


async def test_a_push_on_one_replica_is_visible_on_every_other_at_once(replicas: list[Client]) -> None:
    """Read-your-writes across replicas (invariant 4 of docs/invariants.md): no retry, no sleep."""
    a = replicas[0]
    config = config_blob("ryw")
    layer = b"layer bytes" * 100
    for blob in (config, layer):
        await push_blob(a, "ryw", blob)
    for i in range(20):
        body = image_manifest(config, [layer], annotations={"i": str(i)})
        writer = replicas[i % 3]
        r = await writer.put(
            "/v2/ryw/manifests/latest",
            data=body,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status == 201, await r.text()
        reads = await asyncio.gather(*(rep.get("/v2/ryw/manifests/latest") for rep in replicas))
        for resp in reads:
            assert resp.status == 200
            assert await resp.read() == body, f"stale tag on a replica after push {i}"


async def test_upload_url_signed_by_one_replica_is_accepted_by_all(replicas: list[Client]) -> None:
    a, b, c = replicas
    r = await a.post("/v2/signed/blobs/uploads/")
    location = r.headers["Location"]
    for replica in (b, c):
        r = await replica.get(location)
        assert r.status == 204
    forged = location.replace("signed", "other", 1)
    r = await b.get(forged)
    assert r.status == 404
    assert (await r.json())["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
