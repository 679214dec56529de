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
from registries import serving

from hareg.cli.main import main as cli_main
from hareg.http.app import init_app
from hareg.http.keys import HttpSettings
from hareg.kv.etcd import EtcdKV
from hareg.processes.etcd import EtcdProcess
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

Client = TestClient[web.Request, web.Application]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def by_type(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in doc["conditions"]}


async def test_status_endpoint_of_a_healthy_replica(client: Client, registry: Registry) -> None:
    # Healthy includes a loaded cache: until then Progressing is True
    # (Starting), and its transition time moves when the load ends.
    async with asyncio.timeout(60):
        while registry.cache is None or not registry.cache.ready:
            await asyncio.sleep(0.01)
    r = await client.get("/hareg/v1/status")
    assert r.status == 200
    doc = await r.json()
    conditions = by_type(doc)
    assert [c["type"] for c in doc["conditions"]] == ["Available", "Progressing", "Degraded"]
    assert (conditions["Available"]["status"], conditions["Available"]["reason"]) == ("True", "Ready")
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == ("False", "AsExpected")
    assert (conditions["Progressing"]["status"], conditions["Progressing"]["reason"]) == ("False", "Ready")
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
    try:
        async with serving(kv, FilesystemBlobStore(tmp_path / "blobs"), prefix="/status") as served:
            yield served
    finally:
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
    assert (await client.get("/readyz", params={"for": "writes"})).status == 200
    assert (await client.get("/readyz", params={"for": "nonsense"})).status == 400

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
        # Ready for pulls, not for writes: the load balancer's two checks.
        assert (await client.get("/readyz")).status == 200
        writes = await client.get("/readyz", params={"for": "writes"})
        assert writes.status == 503 and (await writes.json())["degraded"] is True

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
