"""``GET /hareg/v1/members`` (hareg/http/members.py): the replicas registered
in etcd and the etcd endpoints, each probed from the replica that answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from registries import running

from hareg.http.app import init_app
from hareg.http.keys import HttpSettings
from hareg.kv.etcd import EtcdKV
from hareg.processes.ports import free_port
from hareg.storage.filesystem import FilesystemBlobStore

Client = TestClient[object, object]


async def members_once_registered(client: Client, *replicas: str) -> dict[str, Any]:
    """The members document once every one of ``replicas`` registered (a
    replica registers from a background task as it starts)."""
    async with asyncio.timeout(30):
        while True:
            r = await client.get("/hareg/v1/members")
            assert r.status == 200
            doc: dict[str, Any] = await r.json()
            if {m["replica"] for m in doc["replicas"]} >= set(replicas):
                return doc
            await asyncio.sleep(0.05)


async def test_replicas_and_etcd_members_with_their_probes(kv: EtcdKV, etcd_url: str, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    prefix = f"/test-members-{time.monotonic_ns()}"
    # Two replicas on one key prefix: this one, serving, and one registered at
    # an address nobody serves (as a killed replica is until its lease expires).
    async with (
        running(
            kv, FilesystemBlobStore(tmp_path / "b2"), prefix=prefix, replica="gone", url=f"http://{dead}"
        ),
        running(
            kv,
            FilesystemBlobStore(tmp_path / "b1"),
            prefix=prefix,
            replica="me",
            url=f"http://127.0.0.1:{port}",
        ) as reg,
    ):
        settings = HttpSettings(etcd_endpoints=(etcd_url, dead))
        async with TestClient(TestServer(init_app(reg, settings), host="127.0.0.1", port=port)) as client:
            doc = await members_once_registered(client, "gone", "me")
    replicas = {m["replica"]: m for m in doc["replicas"]}
    assert (replicas["me"]["ready"], replicas["me"]["detail"]) == (True, "ok")
    assert replicas["gone"]["ready"] is False
    assert replicas["gone"]["detail"].startswith("unreachable")
    assert replicas["gone"]["url"] == f"http://{dead}"
    etcd = {e["endpoint"]: e for e in doc["etcd"]}
    assert etcd[etcd_url.rstrip("/")]["healthy"] is True
    assert etcd[f"http://{dead}"]["healthy"] is False


async def test_a_replica_that_does_not_register_lists_none(client: Client) -> None:
    # Without a URL of its own (an ephemeral port) a replica does not register.
    doc = await (await client.get("/hareg/v1/members")).json()
    assert doc["replicas"] == [] and doc["etcd"] == []
