"""Prometheus /metrics: the numbers move when requests are made, on a registry
of each app's own (never prometheus_client's global one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import push_image, sha256, start_upload
from prometheus_client.parser import text_string_to_metric_families
from registries import serving

from hareg.http.app import init_app
from hareg.kv.base import KVUnavailable, KVUnknownOutcome
from hareg.kv.etcd import EtcdKV
from hareg.kv.instrumented import InstrumentedKV
from hareg.observability.metrics import Metrics
from hareg.registry.service import Registry
from hareg.registry.streams import one_chunk
from hareg.storage.filesystem import FilesystemBlobStore

Client = TestClient[web.Request, web.Application]

MANIFEST_ROUTE = "/v2/{name}/manifests/{reference}"
BLOB_ROUTE = "/v2/{name}/blobs/{digest}"
UPLOADS_ROUTE = "/v2/{name}/blobs/uploads/"


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 if absent."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


async def scrape(client: Client) -> Scrape:
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(await r.text())


@pytest.fixture
async def metered(kv: EtcdKV, tmp_path: Path) -> AsyncIterator[tuple[Registry, Client, Metrics]]:
    """A registry whose etcd and storage calls are instrumented, as ``hareg serve`` builds it."""
    metrics = Metrics()
    store = FilesystemBlobStore(tmp_path / "blobs", observe=metrics.observe_storage)
    async with serving(InstrumentedKV(kv, metrics.observe_etcd), store, metrics=metrics) as (reg, client):
        yield reg, client, metrics


async def test_request_counts_latency_and_bytes_move(metered: tuple[Registry, Client, Metrics]) -> None:
    _, client, _ = metered
    before = await scrape(client)
    image = await push_image(client, "m/app", "v1", layer_count=1)
    for _ in range(3):
        r = await client.get("/v2/m/app/manifests/v1")
        assert r.status == 200
    r = await client.get(f"/v2/m/app/blobs/{image.blobs[1]}")
    layer = await r.read()
    r = await client.get("/v2/m/app/manifests/nope")
    assert r.status == 404
    r = await client.get("/no/such/endpoint")
    assert r.status == 404
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert moved("hareg_http_requests_total", route=MANIFEST_ROUTE, method="GET", status="200") == 3
    assert moved("hareg_http_requests_total", route=MANIFEST_ROUTE, method="GET", status="404") == 1
    assert moved("hareg_http_requests_total", route=MANIFEST_ROUTE, method="PUT", status="201") == 1
    assert moved("hareg_http_requests_total", route=UPLOADS_ROUTE, method="POST", status="201") == 2
    assert moved("hareg_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert moved("hareg_http_request_duration_seconds_count", route=MANIFEST_ROUTE, method="GET") == 4
    assert moved("hareg_http_request_duration_seconds_sum", route=MANIFEST_ROUTE, method="GET") > 0
    # Bytes: the pushed blobs and manifest in; the manifests and the layer (sent by sendfile) out.
    assert moved("hareg_http_received_bytes_total", route=UPLOADS_ROUTE) == len(image.config) + len(layer)
    assert moved("hareg_http_received_bytes_total", route=MANIFEST_ROUTE) == len(image.body)
    assert moved("hareg_http_sent_bytes_total", route=BLOB_ROUTE) == len(layer)
    assert moved("hareg_http_sent_bytes_total", route=MANIFEST_ROUTE) >= 3 * len(image.body)
    # The raw path never becomes a label (no unbounded cardinality).
    assert not any("m/app" in dict(labels).get("route", "") for _, labels in after.samples)


async def test_etcd_and_cache_metrics_move(metered: tuple[Registry, Client, Metrics]) -> None:
    reg, client, _ = metered
    before = await scrape(client)
    await push_image(client, "cache/app", "v1")
    for _ in range(5):
        assert (await client.get("/v2/cache/app/manifests/v1")).status == 200
    after = await scrape(client)
    assert after.get("hareg_etcd_request_duration_seconds_count", op="txn") > before.get(
        "hareg_etcd_request_duration_seconds_count", op="txn"
    )
    assert after.get("hareg_etcd_request_duration_seconds_count", op="current_revision") > 0
    assert (
        after.get("hareg_cache_hits_total", freshness="current")
        >= before.get("hareg_cache_hits_total", freshness="current") + 5
    )
    assert "hareg_cache_misses_total" in {name for name, _ in after.samples}
    assert after.get("hareg_cache_ready") == 1
    assert reg.cache is not None and 0 < after.get("hareg_cache_revision") <= reg.cache.revision
    assert after.get("hareg_cache_revision_lag") >= 0
    assert after.get("hareg_cache_relists_total") >= 1
    assert after.total("hareg_cache_entries") >= 2


async def test_storage_metrics_move(metered: tuple[Registry, Client, Metrics]) -> None:
    reg, client, _ = metered
    before = await scrape(client)
    image = await push_image(client, "st/app", "v1", layer_count=1)
    r = await client.get(f"/v2/st/app/blobs/{image.blobs[1]}")  # served by sendfile
    assert r.status == 200
    layer = await r.read()
    await reg.pruner.run_fsck()  # reads every stored blob back through the store
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    pushed = len(image.config) + len(layer)
    # Whole-blob pushes (POST, then PUT with the body): one upload_put each.
    assert moved("hareg_storage_requests_total", op="upload_put", outcome="ok") == 2
    assert moved("hareg_storage_request_duration_seconds_count", op="upload_put") == 2
    assert moved("hareg_storage_bytes_total", op="upload_put") == pushed
    assert moved("hareg_storage_requests_total", op="local_path", outcome="ok") >= 1
    assert moved("hareg_storage_bytes_total", op="read") == pushed  # fsck's reads; sendfile is not a read
    assert moved("hareg_storage_requests_total", op="read", outcome="ok") == 2
    assert moved("hareg_storage_request_duration_seconds_sum", op="read") > 0
    assert not any(
        dict(labels).get("outcome") not in (None, "ok") for name, labels in after.samples if "storage" in name
    )


class BrokenKV:
    """Every call fails as etcd would without quorum."""

    async def get(self, key: bytes) -> None:
        raise KVUnavailable("no leader")

    async def txn(self, *args: object) -> None:
        raise KVUnknownOutcome("timed out after sending")


async def test_etcd_errors_are_counted_by_operation_and_kind() -> None:
    metrics = Metrics()
    kv = InstrumentedKV(BrokenKV(), metrics.observe_etcd)  # type: ignore[arg-type]
    with pytest.raises(KVUnavailable):
        await kv.get(b"k")
    with pytest.raises(KVUnknownOutcome):
        await kv.txn([], [])
    text = metrics.render().decode()
    scraped = Scrape(text)
    assert scraped.get("hareg_etcd_request_errors_total", op="get", error="unavailable") == 1
    assert scraped.get("hareg_etcd_request_errors_total", op="txn", error="unknown_outcome") == 1
    assert scraped.get("hareg_etcd_request_duration_seconds_count", op="get") == 1


async def test_uploads_in_progress(metered: tuple[Registry, Client, Metrics]) -> None:
    _, client, _ = metered
    location = await start_upload(client, "up/app")
    started, release = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 100
        started.set()
        await release.wait()
        yield b"b" * 100

    patch = asyncio.create_task(client.patch(location, data=body()))
    await asyncio.wait_for(started.wait(), 30)
    async with asyncio.timeout(30):
        while (during := await scrape(client)).get("hareg_uploads_in_progress") != 1:
            await asyncio.sleep(0.01)
    assert during.get("hareg_uploads_in_progress") == 1
    assert during.get("hareg_http_requests_in_flight") == 2  # the PATCH and this scrape
    release.set()
    assert (await patch).status == 202
    after = await scrape(client)
    assert after.get("hareg_uploads_in_progress") == 0


async def test_pruner_and_read_only_metrics(metered: tuple[Registry, Client, Metrics]) -> None:
    reg, client, _ = metered
    reg.pruner_stats.run_finished("success", at=1_700_000_000.0)
    reg.pruner_stats.run_finished("failure")
    reg.pruner_stats.deleted("blob", 3, nbytes=4096)
    reg.pruner_stats.deleted("manifest", 2)
    reg.settings.config_read_only = True
    s = await scrape(client)
    assert s.get("hareg_pruner_runs_total", result="success") == 1
    assert s.get("hareg_pruner_runs_total", result="failure") == 1
    assert s.get("hareg_pruner_deleted_objects_total", kind="blob") == 3
    assert s.get("hareg_pruner_deleted_objects_total", kind="manifest") == 2
    assert s.get("hareg_pruner_deleted_bytes_total", kind="blob") == 4096
    assert s.get("hareg_pruner_last_run_timestamp_seconds") == 1_700_000_000.0
    assert s.get("hareg_read_only", source="config") == 1
    assert s.get("hareg_read_only", source="cluster") == 0


async def test_fsck_metrics(metered: tuple[Registry, Client, Metrics]) -> None:
    reg, client, _ = metered
    assert "hareg_fsck_checked_objects" not in await (await client.get("/metrics")).text()  # no check yet
    data = b"a blob to check"
    await reg.uploads.monolithic("repo", sha256(data), one_chunk(data), length=len(data))
    await reg.pruner.run_fsck()
    s = await scrape(client)
    assert s.get("hareg_fsck_checked_objects") == 1
    assert s.get("hareg_fsck_corrupt_objects", state="left") == 0
    assert s.get("hareg_fsck_corrupt_objects", state="quarantined") == 0
    assert s.get("hareg_fsck_last_run_timestamp_seconds") > 0


async def test_each_app_has_its_own_registry(registry: Registry) -> None:
    apps: Sequence[web.Application] = [init_app(registry), init_app(registry)]
    async with TestClient(TestServer(apps[0])) as a, TestClient(TestServer(apps[1])) as b:
        for _ in range(4):
            assert (await a.get("/v2/")).status == 200
        sa, sb = await scrape(a), await scrape(b)
        assert sa.get("hareg_http_requests_total", route="/v2/", method="GET", status="200") == 4
        assert sb.get("hareg_http_requests_total", route="/v2/", method="GET", status="200") == 0
    assert b"hareg_http_requests" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


async def test_request_id_header(client: Client) -> None:
    r = await client.get("/v2/")
    generated = r.headers["X-Request-Id"]
    assert len(generated) >= 16
    r = await client.get("/v2/", headers={"X-Request-Id": "trace-abc.123:x_y"})
    assert r.headers["X-Request-Id"] == "trace-abc.123:x_y"
    for insane in ("has space", "x" * 200, "-leading-dash", "semi;colon", "ünï"):
        r = await client.get("/v2/", headers={"X-Request-Id": insane})
        assert r.headers["X-Request-Id"] != insane
    # On errors too.
    r = await client.get("/v2/x/manifests/missing", headers={"X-Request-Id": "err-1"})
    assert r.status == 404 and r.headers["X-Request-Id"] == "err-1"
    digest = sha256(b"nothing")
    r = await client.head(f"/v2/x/blobs/{digest}", headers={"X-Request-Id": "head-1"})
    assert r.headers["X-Request-Id"] == "head-1"
