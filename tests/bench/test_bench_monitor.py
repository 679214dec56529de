"""What the availability run samples (bench/monitor.py): the replicas' stale-read
counters become the intervals whose reads are exempt, read over real HTTP from
a server that answers like a replica's ``/metrics``; memory is sampled per
process name and its growth rate shows a leak."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from bench_support import PROJECT_ROOT  # noqa: F401  (puts the checkout on sys.path)

from bench.faults import Cluster
from bench.monitor import Monitor, _union, rss_kib


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def replica_metrics() -> AsyncIterator[tuple[str, dict[str, float]]]:
    counts = {"stale": 0.0}

    async def metrics(request: web.Request) -> web.Response:
        text = (
            "# TYPE hareg_cache_hits_total counter\n"
            f'hareg_cache_hits_total{{freshness="current"}} 12.0\n'
            f'hareg_cache_hits_total{{freshness="stale"}} {counts["stale"]}\n'
        )
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), counts
    finally:
        await server.close()


def _cluster(tmp_path: Path, url: str, pid: int) -> Cluster:
    doc = {"registry": url, "replicas": [{"name": "replica-1", "url": url, "pid": pid}], "etcd": [],
           "storage": {}, "lb": {}}  # fmt: skip
    (tmp_path / "cluster.json").write_text(json.dumps(doc))
    return Cluster(tmp_path / "cluster.json", os.getpid(), url)


async def test_stale_intervals_are_where_a_replica_served_stale_reads(
    tmp_path: Path, replica_metrics: tuple[str, dict[str, float]]
) -> None:
    url, counts = replica_metrics
    clock = Clock()
    monitor = Monitor(_cluster(tmp_path, url, os.getpid()), clock=clock)
    async with aiohttp.ClientSession() as session:
        await monitor.sample_stale(session)  # 0 stale reads: nothing
        clock.now = 100.5
        await monitor.sample_stale(session)
        counts["stale"] = 3.0
        clock.now = 101.0
        await monitor.sample_stale(session)
        clock.now = 101.5
        await monitor.sample_stale(session)  # no growth
    assert monitor.stale == [(100.5, 101.0, "replica-1")]
    assert monitor.exempt(100.9, 102.0) and monitor.exempt(100.0, 100.6)
    assert not monitor.exempt(101.1, 101.4) and not monitor.exempt(99.0, 100.4)
    # A restarted replica (another pid) with stale reads already counted.
    monitor.cluster = _cluster(tmp_path, url, 1)
    clock.now = 102.0
    async with aiohttp.ClientSession() as session:
        await monitor.sample_stale(session)
    assert monitor.stale[-1] == (101.5, 102.0, "replica-1")
    assert monitor.stale_report(100.0)["seconds"] == 1.0


def test_memory_is_sampled_per_process_and_growth_shows() -> None:
    assert (rss_kib(os.getpid()) or 0) > 1000
    monitor = Monitor(cluster=None)  # type: ignore[arg-type]  (sample_memory is not called)
    monitor.memory["flat"] = [(float(t), 7, 100 * 1024) for t in range(0, 600, 2)]
    monitor.memory["leaky"] = [(float(t), 8, 100 * 1024 + t * 1024 // 60) for t in range(0, 600, 2)]
    monitor.memory["restarted"] = [(float(t), 9 if t < 400 else 10, 1024 * (1 + t)) for t in range(0, 600, 2)]
    report = monitor.memory_report(0.0)
    assert report["restarted"]["growth_mib_per_10min"] is None  # 200 s of its last pid in 600 say nothing
    assert report["flat"]["growth_mib_per_10min"] == 0.0
    assert report["leaky"]["growth_mib_per_10min"] == pytest.approx(10.0, abs=0.1)
    assert report["leaky"]["first_mib"] == 100.0 and report["leaky"]["pids"] == [8]


def test_union_counts_overlaps_once() -> None:
    assert _union([(0.0, 2.0, "a"), (1.0, 3.0, "b"), (5.0, 6.0, "a")]) == 3.0 + 1.0
