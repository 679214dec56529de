"""GET /hareg/v1/status and ``hareg status``: Available, Progressing and Degraded
with reasons, as the Image Registry Operator reports them; managementState
Removed."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import push_image

from hareg.cli.main import main as cli_main
from hareg.clock import SystemClock
from hareg.http.app import init_app
from hareg.http.keys import HttpSettings
from hareg.http.status import Condition, StatusTracker, compute_conditions
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.processes.etcd import EtcdProcess
from hareg.registry.service import Readiness, Registry
from hareg.storage.filesystem import FilesystemBlobStore

Client = TestClient[web.Request, web.Application]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def by_type(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in doc["conditions"]}


def summary(conditions: list[Condition]) -> list[tuple[str, str, str]]:
    return [(c.type, c.status, c.reason) for c in conditions]


OK = {"etcd": "ok", "storage": "ok", "cache": "ok"}
WRITABLE = {"readOnly": False, "config": False, "cluster": False}


def test_conditions_of_each_situation() -> None:
    ready = Readiness(True, False, "Ready", OK)
    assert summary(
        compute_conditions(ready, read_only=WRITABLE, management_state="Managed", cache_ready=True)
    ) == [
        ("Available", "True", "Ready"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "False", "AsExpected"),
    ]
    read_only = {"readOnly": True, "config": False, "cluster": True}
    conditions = compute_conditions(ready, read_only=read_only, management_state="Managed", cache_ready=True)
    assert summary(conditions)[0] == ("Available", "True", "ReadOnly")
    assert "cluster-wide read-only switch" in conditions[0].message

    etcd_down = {**OK, "etcd": "unavailable: KVUnavailable"}
    degraded = Readiness(True, True, "EtcdUnavailable", etcd_down)
    conditions = compute_conditions(
        degraded, read_only=read_only, management_state="Managed", cache_ready=True
    )
    assert summary(conditions) == [
        ("Available", "True", "EtcdUnavailable"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "True", "EtcdUnavailable"),
    ]
    assert "pulls are served" in conditions[2].message

    never_loaded = Readiness(False, False, "EtcdUnavailable", {**etcd_down, "cache": "not loaded"})
    assert summary(
        compute_conditions(never_loaded, read_only=WRITABLE, management_state="Managed", cache_ready=False)
    ) == [
        ("Available", "False", "EtcdUnavailable"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "True", "EtcdUnavailable"),
    ]

    storage_down = Readiness(False, False, "StorageUnavailable", {**OK, "storage": "unavailable: OSError"})
    assert summary(
        compute_conditions(storage_down, read_only=WRITABLE, management_state="Managed", cache_ready=True)
    ) == [
        ("Available", "False", "StorageUnavailable"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "True", "StorageUnavailable"),
    ]

    loading = Readiness(True, False, "Ready", {**OK, "cache": "not loaded"})
    assert summary(
        compute_conditions(loading, read_only=WRITABLE, management_state="Managed", cache_ready=False)
    )[1] == ("Progressing", "True", "Starting")

    assert summary(
        compute_conditions(ready, read_only=WRITABLE, management_state="Removed", cache_ready=True)
    ) == [
        ("Available", "True", "Removed"),
        ("Progressing", "False", "Removed"),
        ("Degraded", "False", "Removed"),
    ]


def test_transition_times_move_only_when_the_status_does() -> None:
    tracker = StatusTracker()
    up = [Condition("Degraded", "False", "AsExpected", "")]
    down = [Condition("Degraded", "True", "EtcdUnavailable", "x")]
    first = tracker.stamp(up, 1_700_000_000.0)[0]
    assert first.lastTransitionTime == "2023-11-14T22:13:20Z"
    assert tracker.stamp(up, 1_700_000_100.0)[0].lastTransitionTime == first.lastTransitionTime
    changed = tracker.stamp(down, 1_700_000_200.0)[0]
    assert changed.lastTransitionTime == "2023-11-14T22:16:40Z"
    # A new reason with the same status is no transition.
    same = tracker.stamp([Condition("Degraded", "True", "StorageUnavailable", "y")], 1_700_000_300.0)[0]
    assert same.lastTransitionTime == changed.lastTransitionTime


async def test_status_endpoint_of_a_healthy_replica(client: Client, registry: Registry) -> None:
    r = await client.get("/hareg/v1/status")
    assert r.status == 200
    doc = await r.json()
    conditions = by_type(doc)
    assert [c["type"] for c in doc["conditions"]] == ["Available", "Progressing", "Degraded"]
    assert (conditions["Available"]["status"], conditions["Available"]["reason"]) == ("True", "Ready")
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == ("False", "AsExpected")
    for c in doc["conditions"]:
        assert set(c) == {"type", "status", "reason", "message", "lastTransitionTime"}
        assert c["status"] in ("True", "False") and RFC3339.fullmatch(c["lastTransitionTime"])
    assert doc["replica"] == registry.replica and doc["managementState"] == "Managed"
    assert doc["requests"]["write"]["maxRunning"] == 0 and doc["checks"]["etcd"] == "ok"
    # The same answer again keeps its transition times.
    again = await (await client.get("/hareg/v1/status")).json()
    assert [c["lastTransitionTime"] for c in again["conditions"]] == [
        c["lastTransitionTime"] for c in doc["conditions"]
    ]


@pytest.fixture
async def on_own_etcd(own_etcd: EtcdProcess, tmp_path: Path) -> AsyncIterator[tuple[Registry, Client]]:
    kv = await EtcdKV.connect([own_etcd.client_url], timeout=5.0)
    store = FilesystemBlobStore(tmp_path / "blobs")
    reg = Registry(kv, store, SystemClock(), RandomIds(), prefix="/status")
    await reg.start()
    try:
        async with TestClient(TestServer(init_app(reg))) as client:
            yield reg, client
    finally:
        await reg.stop()
        await store.close()
        await kv.close()


async def test_degraded_when_etcd_is_down_but_pulls_are_served(
    on_own_etcd: tuple[Registry, Client], own_etcd: EtcdProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    reg, client = on_own_etcd
    image = await push_image(client, "st/app", "v1")
    # Pulls during the outage come from the cache: let its watch deliver the push first.
    async with asyncio.timeout(30):
        while reg.cache is None or reg.cache.tag("st/app", "v1") is None:
            await asyncio.sleep(0.01)
    url = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(cli_main, ["status", "--registry", url]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Available\s+True\s+Ready", out) and re.search(r"Degraded\s+False\s+AsExpected", out)

    own_etcd.pause()
    try:
        r = await client.get("/v2/st/app/manifests/v1")
        assert r.status == 200 and await r.read() == image.body
        doc = await (await client.get("/hareg/v1/status")).json()
        conditions = by_type(doc)
        assert (conditions["Available"]["status"], conditions["Available"]["reason"]) == (
            "True",
            "EtcdUnavailable",
        )
        assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == (
            "True",
            "EtcdUnavailable",
        )
        r = await client.post("/v2/st/app/blobs/uploads/")
        assert r.status == 503

        assert await asyncio.to_thread(cli_main, ["status", "--registry", url, "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert by_type(printed)["Degraded"]["reason"] == "EtcdUnavailable"
    finally:
        own_etcd.resume()
    async with asyncio.timeout(60):
        while by_type(await (await client.get("/hareg/v1/status")).json())["Degraded"]["status"] != "False":
            await asyncio.sleep(0.1)


async def test_cli_status_of_an_unreachable_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(cli_main, ["status", "--registry", "http://127.0.0.1:1"])
    assert code == 1
    assert "cannot reach the registry" in capsys.readouterr().err


async def test_removed_serves_no_registry_api(registry: Registry) -> None:
    app = init_app(registry, HttpSettings(management_state="Removed"))
    async with TestClient(TestServer(app)) as client:
        r = await client.get("/v2/")
        assert r.status == 503
        assert "managementState: Removed" in (await r.json())["errors"][0]["message"]
        r = await client.post("/v2/x/blobs/uploads/")
        assert r.status == 503
        r = await client.get("/readyz")
        assert r.status == 503 and (await r.json())["reason"] == "Removed"
        r = await client.get("/healthz")
        assert r.status == 200
        doc = await (await client.get("/hareg/v1/status")).json()
        assert by_type(doc)["Available"]["reason"] == "Removed"
        r = await client.get("/metrics")
        assert r.status == 200
