"""A registry on a real three-member etcd cluster while members fail: a frozen
member (SIGSTOP) costs pulls and pushes about a second, and quorum loss
answers pushes 503 with Retry-After at once while pulls are served from the
cache at full speed.  The latencies measured are printed (pytest -s) and
stated in docs/consistency.md; the assertions are generous so that they hold
on a loaded machine."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from etcd_fixtures import leader_of
from oci_helpers import push_image, put_manifest
from registries import Client, serving

from hareg.kv.etcd import EtcdKV
from hareg.processes.etcd import EtcdProcess
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

pytestmark = pytest.mark.timeout(300)

STALL_BOUND = 5.0  # what a single operation may take here, on a loaded machine
WINDOW = 4.0  # how long operations run against the fault


@asynccontextmanager
async def on_cluster(
    members: list[EtcdProcess], tmp_path: Path, first: int
) -> AsyncIterator[tuple[Registry, Client]]:
    """A registry whose etcd client prefers ``members[first]`` (listed first)."""
    urls = [members[first].client_url] + [m.client_url for i, m in enumerate(members) if i != first]
    kv = await EtcdKV.connect(urls, timeout=5.0, member_timeout=0.5)
    try:
        async with serving(kv, FilesystemBlobStore(tmp_path / "blobs")) as served:
            yield served
    finally:
        await kv.close()


async def cached(reg: Registry, repo: str, tag: str) -> None:
    async with asyncio.timeout(30):
        while reg.cache is None or reg.cache.tag(repo, tag) is None:
            await asyncio.sleep(0.01)


async def timed_pull(client: Client, repo: str, tag: str, body: bytes) -> float:
    t0 = time.monotonic()
    r = await client.get(f"/v2/{repo}/manifests/{tag}")
    assert r.status == 200 and await r.read() == body, (r.status, await r.text())
    return time.monotonic() - t0


def summary(latencies: list[float]) -> str:
    return f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"


async def test_quorum_loss_answers_pushes_503_at_once_and_serves_pulls_from_the_cache(
    etcd_cluster: list[EtcdProcess], tmp_path: Path
) -> None:
    members = etcd_cluster
    async with on_cluster(members, tmp_path, 0) as (reg, client):
        image = await push_image(client, "q/app", "v1")
        await cached(reg, "q/app", "v1")
        before = [await timed_pull(client, "q/app", "v1", image.body) for _ in range(20)]

        await asyncio.gather(members[1].kill(), members[2].kill())
        pulls: list[float] = []
        pushes: list[float] = []
        t_loss = time.monotonic()
        while time.monotonic() - t_loss < WINDOW:
            pulls.append(await timed_pull(client, "q/app", "v1", image.body))
            t0 = time.monotonic()
            r = await put_manifest(client, "q/app", f"during-{len(pushes)}", image.body)
            pushes.append(time.monotonic() - t0)
            body = await r.json()
            assert r.status == 503 and body["errors"][0]["code"] == "UNAVAILABLE", (r.status, body)
            assert int(r.headers["Retry-After"]) >= 1
            t0 = time.monotonic()
            r = await client.post("/v2/q/app/blobs/uploads/")
            pushes.append(time.monotonic() - t0)
            assert r.status == 503 and "Retry-After" in r.headers, (r.status, await r.text())
        # What the cache lacks is no "not found" while etcd cannot confirm it:
        # 503, which a load balancer retries on another replica.
        for path in ("/v2/q/app/manifests/never-pushed", "/v2/q/other/tags/list"):
            r = await client.get(path)
            assert r.status == 503 and "Retry-After" in r.headers, (path, r.status, await r.text())
        r = await client.head("/v2/q/app/blobs/sha256:" + "0" * 64)
        assert r.status == 503, r.status
    load = os.getloadavg()[0]
    print(
        f"\nquorum loss: pulls before {summary(before)}; during {summary(pulls)} ({len(pulls)}); "
        f"pushes answered 503 in {summary(pushes)} ({len(pushes)}) (load {load:.2f})"
    )
    assert max(pushes) < STALL_BOUND and max(pulls) < STALL_BOUND
    # After the first answers (which may wait for etcd to notice it lost its
    # quorum) pushes are refused at once.
    assert statistics.median(pushes) < 0.5, pushes


@pytest.mark.parametrize("frozen", ["follower", "leader"])
async def test_a_frozen_member_costs_pushes_and_pulls_about_a_second(
    etcd_cluster: list[EtcdProcess], tmp_path: Path, frozen: str
) -> None:
    """SIGSTOP the member the registry's etcd client uses (a follower, or the
    leader: then the cluster holds an election too): pulls are served
    throughout, and pushes succeed again within about a second."""
    members = etcd_cluster
    leader = await leader_of(members)
    target = leader if frozen == "leader" else (leader + 1) % 3
    async with on_cluster(members, tmp_path, target) as (reg, client):
        image = await push_image(client, "f/app", "v0")
        await cached(reg, "f/app", "v0")
        pulls: list[float] = []
        pushes: list[tuple[float, float, int]] = []  # (start after the freeze, latency, status)
        members[target].pause()
        try:
            t_freeze = time.monotonic()
            while time.monotonic() - t_freeze < WINDOW:
                pulls.append(await timed_pull(client, "f/app", "v0", image.body))
                t0 = time.monotonic()
                r = await put_manifest(client, "f/app", f"during-{len(pushes)}", image.body)
                pushes.append((t0 - t_freeze, time.monotonic() - t0, r.status))
                assert r.status in (201, 503), (r.status, await r.text())
        finally:
            members[target].resume()
    first_ok = next((start + took for start, took, status in pushes if status == 201), None)
    load = os.getloadavg()[0]
    print(
        f"\nfrozen {frozen}: pulls {summary(pulls)} ({len(pulls)}); pushes {summary([p[1] for p in pushes])}, "
        f"{sum(p[2] == 503 for p in pushes)} of {len(pushes)} answered 503; first push done "
        f"{first_ok}s after the freeze (load {load:.2f})"
    )
    assert max(pulls) < STALL_BOUND
    assert first_ok is not None and first_ok < STALL_BOUND, pushes
