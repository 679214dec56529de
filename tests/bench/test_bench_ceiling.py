"""The ceiling (bench/ceiling.py), started by ``bench.targets`` as a benchmark
run starts it, answers the benchmark's read routes well formed over real HTTP:
the registry headers on manifests and blobs, a blob larger than the socket
buffers sent whole by sendfile (checked against its digest), 404s."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.blobs import BlobSpec
from bench.ceiling import MANIFEST, MANIFEST_DIGEST, stage_blob
from bench.client import OCI_MANIFEST, OCIClient
from bench.targets import RunningTarget, parse_target, started


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTarget]:
    with started(parse_target("ceiling"), base_dir=tmp_path_factory.mktemp("bench-ceiling"), timeout=60) as t:
        yield t


async def test_ceiling_answers_the_read_routes(ceiling: RunningTarget) -> None:
    big = BlobSpec(seed=7, size=9 * 1024 * 1024 + 3)  # past any socket buffer: many sendfile calls
    small = BlobSpec(seed=8, size=1)
    for blob in (big, small):
        stage_blob(Path(ceiling.details["blobs_dir"]), blob)
    assert list(ceiling.roles()) == ["ceiling"] and len(ceiling.roles()["ceiling"]) == 1
    async with aiohttp.ClientSession() as session:
        client = OCIClient(session, ceiling.url)
        await client.ping()
        for reference in ("t00000", "latest", MANIFEST_DIGEST):
            async with session.get(f"{ceiling.url}/v2/bench/manifests/{reference}") as resp:
                assert resp.status == 200
                body = await resp.read()
                assert body == MANIFEST and int(resp.headers["Content-Length"]) == len(MANIFEST)
                assert resp.headers["Content-Type"] == OCI_MANIFEST
                assert resp.headers["Docker-Content-Digest"] == MANIFEST_DIGEST
            # The client's own check: the body hashes to the digest asked for / sent.
            assert (await client.get_manifest("a/b", reference)).digest == MANIFEST_DIGEST
        other = "sha256:" + "0" * 64
        async with session.get(f"{ceiling.url}/v2/bench/manifests/{other}") as resp:
            assert resp.status == 404
        for blob in (big, small):
            assert await client.head_blob("bench/push", blob.digest()) == blob.size
            assert await client.pull_blob("bench/push", blob.digest(), blob.size) == blob.size
            async with session.get(f"{ceiling.url}/v2/x/blobs/{blob.digest()}") as resp:
                assert resp.headers["Docker-Content-Digest"] == blob.digest()
                assert resp.headers["Content-Type"] == "application/octet-stream"
                assert int(resp.headers["Content-Length"]) == blob.size
                h = hashlib.sha256()
                async for chunk in resp.content.iter_chunked(1 << 20):
                    h.update(chunk)
                assert f"sha256:{h.hexdigest()}" == blob.digest()
        missing = BlobSpec(seed=9, size=10).digest()
        assert await client.head_blob("bench/push", missing) is None
        async with session.get(f"{ceiling.url}/v2/x/blobs/{missing}") as resp:
            assert resp.status == 404
        async with session.get(f"{ceiling.url}/v2/x/blobs/not-a-digest") as resp:
            assert resp.status == 404
