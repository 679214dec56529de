"""The client against the real registries, started by ``bench.targets``: every
push style, pulls, HEAD, mounts, manifests and tags on ``hareg serve`` and on
distribution; the distribution cluster (two registries on SeaweedFS behind
haproxy); and the resource meter's roles."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from bench_support import require_distribution
from seaweedfs_fixtures import need_weed

from bench.blobs import BlobSpec
from bench.client import OCIClient, image_manifest
from bench.targets import ResourceMeter, RunningTarget, parse_target, started

TARGETS = ["hareg_target", "distribution_target"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> RunningTarget:
    found: RunningTarget = request.getfixturevalue(request.param)
    return found


@pytest.fixture
async def client(target: RunningTarget) -> AsyncIterator[OCIClient]:
    async with aiohttp.ClientSession() as session:
        c = OCIClient(session, target.url)
        await c.ping()
        yield c


async def test_every_push_style_round_trips(client: OCIClient, target: RunningTarget) -> None:
    repo = "bench-test/push"
    blobs = {
        "single_post": BlobSpec(seed=101, size=70_000),
        "post_put": BlobSpec(seed=102, size=1_500_000),
        "chunked": BlobSpec(seed=103, size=1_300_000),
    }
    assert await client.push_blob_single_post(repo, blobs["single_post"]) == blobs["single_post"].digest()
    assert await client.push_blob_post_put(repo, blobs["post_put"]) == blobs["post_put"].digest()
    # Chunks that do not line up with the generator's blocks.
    assert await client.push_blob_chunked(repo, blobs["chunked"], 400_000) == blobs["chunked"].digest()
    for blob in blobs.values():
        assert await client.pull_blob(repo, blob.digest(), blob.size) == blob.size
        assert await client.head_blob(repo, blob.digest()) == blob.size
    assert await client.head_blob(repo, BlobSpec(seed=104, size=10).digest()) is None


async def test_mount_manifests_and_tags(client: OCIClient) -> None:
    src, dst = "bench-test/src", "bench-test/dst"
    layer = BlobSpec(seed=201, size=50_000)
    await client.push_blob_post_put(src, layer)
    assert await client.mount_blob(dst, src, layer.digest()) is True
    assert await client.pull_blob(dst, layer.digest(), layer.size) == layer.size
    config_bytes = b'{"os":"linux"}'
    config = await client.push_small_blob(dst, config_bytes)
    digests = []
    for i in range(5):
        body = image_manifest((config, len(config_bytes)), [(layer.digest(), layer.size)], annotation=str(i))
        digests.append(await client.put_manifest(dst, f"v{i}", body))
    assert len(set(digests)) == 5
    assert (await client.get_manifest(dst, "v3")).digest == digests[3]
    assert (await client.get_manifest(dst, digests[1])).digest == digests[1]
    assert sorted(await client.list_tags(dst)) == [f"v{i}" for i in range(5)]
    assert sorted(await client.list_tags(dst, n=2)) == [f"v{i}" for i in range(5)]


def test_resource_meter_reports_hareg_and_its_etcd_apart(hareg_target: RunningTarget) -> None:
    roles = hareg_target.roles()
    assert set(roles) == {"hareg", "etcd"}
    assert len(roles["hareg"]) >= 1 and len(roles["etcd"]) >= 1
    assert {p.pid for p in roles["hareg"]}.isdisjoint({p.pid for p in roles["etcd"]})
    meter = ResourceMeter(hareg_target, interval=0.05)
    meter.start()
    usage = meter.stop()
    for role in ("hareg", "etcd"):
        assert usage[role].cpu_s >= 0
        assert usage[role].peak_rss_mb > 1
        assert usage[role].max_process_peak_rss_mb > 1


def test_distribution_is_one_registry_role(distribution_target: RunningTarget) -> None:
    roles = distribution_target.roles()
    assert list(roles) == ["registry"] and len(roles["registry"]) == 1


def test_distribution_cluster_serves_through_haproxy_and_stops(tmp_path: Path) -> None:
    """Pushed through haproxy (to either registry), the blob is pulled back
    through a presigned SeaweedFS URL, HEAD follows its redirect, and every
    registry of the pair knows it (one bucket); once stopped, none of its
    processes is left."""
    require_distribution()
    need_weed()
    if shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    with started(parse_target("distribution-cluster"), base_dir=tmp_path, timeout=60) as target:
        asyncio.run(_push_and_pull_through(target))
        roles = target.roles()
        assert set(roles) == {"registry", "storage", "lb"}
        assert len(roles["registry"]) == 2 and len(roles["storage"]) == 1 and len(roles["lb"]) >= 1
        pids = [p.pid for procs in roles.values() for p in procs]
    assert not [pid for pid in pids if _alive(pid)]
    assert list(tmp_path.iterdir()) == []  # its directory removed too


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def _push_and_pull_through(target: RunningTarget) -> None:
    blob = BlobSpec(seed=301, size=1_200_000)
    async with aiohttp.ClientSession() as session:
        client = OCIClient(session, target.url)
        await client.ping()
        assert await client.push_blob_post_put("bench-test/ha", blob) == blob.digest()
        assert await client.pull_blob("bench-test/ha", blob.digest(), blob.size) == blob.size
        assert await client.head_blob("bench-test/ha", blob.digest()) == blob.size
        for url in target.details["registries"]:
            direct = OCIClient(session, url)
            async with session.get(
                direct.url(f"/v2/bench-test/ha/blobs/{blob.digest()}"), allow_redirects=False
            ) as resp:
                assert resp.status == 307
                assert resp.headers["Location"].startswith(target.details["s3_url"])
            assert await direct.pull_blob("bench-test/ha", blob.digest(), blob.size) == blob.size
