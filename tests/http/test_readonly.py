"""Read-only mode: writes refused with a spec error saying so, pulls untouched;
the switch from the configuration and, at runtime, for the whole cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kv_hooks import HookedKV
from oci_helpers import expect_error, push_image, raw_request, sha256, snapshot, start_replicas, start_upload
from registries import serving

from hareg.cli.main import main as cli_main
from hareg.clock import SystemClock
from hareg.http.app import init_app
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

Client = TestClient[web.Request, web.Application]

READ_ONLY_MESSAGE = "read-only"


async def expect_read_only(resp: object) -> None:
    entry = await expect_error(resp, 405, "UNSUPPORTED")  # type: ignore[arg-type]
    assert READ_ONLY_MESSAGE in entry["message"], entry
    assert entry["detail"] == {"readOnly": True}
    # RFC 9110: a 405 names the methods the resource still supports (only reads, here).
    allow = resp.headers["Allow"]  # type: ignore[attr-defined]
    assert set(filter(None, allow.split(", "))) <= {"GET", "HEAD"}, allow


async def test_every_kind_of_write_is_refused_and_pulls_are_served(
    client: Client, registry: Registry
) -> None:
    image = await push_image(client, "ro/app", "v1")
    location = await start_upload(client, "ro/app")  # an upload begun before the switch
    registry.settings.config_read_only = True
    assert registry.read_only

    blob = b"new layer"
    await expect_read_only(await client.post("/v2/ro/app/blobs/uploads/"))
    await expect_read_only(
        await client.post("/v2/ro/app/blobs/uploads/", params={"digest": sha256(blob)}, data=blob)
    )
    await expect_read_only(
        await client.post("/v2/ro/other/blobs/uploads/", params={"mount": image.blobs[0], "from": "ro/app"})
    )
    await expect_read_only(await client.patch(location, data=blob, headers={"Content-Range": "0-8"}))
    await expect_read_only(await client.put(location + f"&digest={sha256(blob)}", data=blob))
    await expect_read_only(await client.delete(location))
    r = await client.delete(location)
    assert r.headers["Allow"] == "GET, HEAD"
    r = await client.post("/v2/ro/app/blobs/uploads/")
    assert r.headers["Allow"] == ""  # the upload-starting URL serves no method while read-only
    await expect_read_only(
        await client.put(
            "/v2/ro/app/manifests/v2",
            data=image.body,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
    )
    await expect_read_only(await client.delete(f"/v2/ro/app/manifests/{image.digest}"))
    await expect_read_only(await client.delete(f"/v2/ro/app/blobs/{image.blobs[1]}"))
    # The extension API's writes (tag rollback) too.
    await expect_read_only(
        await client.post("/hareg/v1/repositories/ro/app/tags/v1/rollback", json={"digest": image.digest})
    )

    # Pulls: manifests by tag and digest, blobs, HEADs, listings, the upload status.
    r = await client.get("/v2/ro/app/manifests/v1")
    assert r.status == 200 and await r.read() == image.body
    r = await client.head(f"/v2/ro/app/manifests/{image.digest}")
    assert r.status == 200
    for digest, content in zip(image.blobs, [image.config, *image.layers], strict=True):
        r = await client.get(f"/v2/ro/app/blobs/{digest}")
        assert r.status == 200 and await r.read() == content
        r = await client.head(f"/v2/ro/app/blobs/{digest}")
        assert r.status == 200
    r = await client.get("/v2/ro/app/tags/list")
    assert r.status == 200 and (await r.json())["tags"] == ["v1"]
    r = await client.get("/v2/_catalog")
    assert r.status == 200 and "ro/app" in (await r.json())["repositories"]
    r = await client.get(location)
    assert r.status == 204
    r = await client.get("/v2/")
    assert r.status == 200

    # Nothing changed behind the refusals.
    r = await client.head("/v2/ro/other/blobs/" + image.blobs[0])
    assert r.status == 404
    registry.settings.config_read_only = False
    r = await client.patch(location, data=blob, headers={"Content-Range": "0-8"})
    assert r.status == 202, await r.text()


async def test_registry_read_only_in_the_constructor(kv: EtcdKV, tmp_path: Path) -> None:
    async with serving(kv, FilesystemBlobStore(tmp_path / "blobs"), read_only=True) as (reg, c):
        assert reg.read_only
        await expect_read_only(await c.post("/v2/x/blobs/uploads/"))
        r = await c.get("/hareg/v1/read-only")
        assert await r.json() == {
            "readOnly": True,
            "config": True,
            "cluster": False,
            "changedAt": None,
            "changedBy": None,
        }


@pytest.fixture
async def replicas(etcd_url: str, tmp_path: Path) -> AsyncIterator[list[tuple[Registry, Client]]]:
    """Two replicas, each with its own etcd connection, sharing a prefix and a blob store."""
    prefix = f"/ro-replicas-{uuid.uuid4().hex[:10]}"
    async with AsyncExitStack() as stack:
        yield await start_replicas(stack, etcd_url, tmp_path / "shared-blobs", prefix, 2)


async def wait_read_only(registry: Registry, expected: bool, within: float = 30.0) -> float:
    """Seconds until ``registry.read_only == expected`` (the settings watch
    delivers it; a busy machine may delay that); fails after ``within``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(within):
        while registry.read_only != expected:
            await asyncio.sleep(0.005)
    return loop.time() - start


async def test_runtime_switch_is_seen_by_another_replica(
    replicas: list[tuple[Registry, Client]],
) -> None:
    (reg_a, a), (reg_b, b) = replicas
    image = await push_image(b, "shared", "v1")

    r = await a.put("/hareg/v1/read-only", json={"readOnly": True})
    assert r.status == 200
    doc = await r.json()
    assert doc["readOnly"] is True and doc["cluster"] is True and doc["config"] is False
    assert doc["changedBy"] == "r0" and doc["changedAt"].endswith("Z")
    assert reg_a.read_only  # at once on the replica that took the call
    await wait_read_only(reg_b, True)

    # Replica B refuses writes and serves pulls.
    await expect_read_only(await b.post("/v2/shared/blobs/uploads/"))
    r = await b.get("/v2/shared/manifests/v1")
    assert r.status == 200 and await r.read() == image.body
    r = await b.get("/hareg/v1/read-only")
    assert (await r.json())["cluster"] is True

    # Off again, through the other replica.
    r = await b.put("/hareg/v1/read-only", json={"readOnly": False})
    assert r.status == 200 and (await r.json())["readOnly"] is False
    await wait_read_only(reg_a, False)
    r = await a.post("/v2/shared/blobs/uploads/")
    assert r.status == 202


async def test_switching_off_never_unlocks_a_replica_whose_file_says_read_only(
    replicas: list[tuple[Registry, Client]],
) -> None:
    (reg_a, a), (reg_b, _) = replicas
    reg_b.settings.config_read_only = True
    r = await a.put("/hareg/v1/read-only", json={"readOnly": True})
    assert r.status == 200
    r = await a.put("/hareg/v1/read-only", json={"readOnly": False})
    assert r.status == 200
    await wait_read_only(reg_a, False)
    async with asyncio.timeout(30):  # replica B has seen the switch go off...
        while (switch := reg_b.settings.cluster_switch) is None or switch.on:
            await asyncio.sleep(0.005)
    assert reg_b.read_only  # ...and is still read-only by its file


async def test_a_new_replica_starts_with_the_cluster_switch(
    replicas: list[tuple[Registry, Client]], etcd_url: str, tmp_path: Path
) -> None:
    (_, a), (reg_b, _) = replicas
    r = await a.put("/hareg/v1/read-only", json={"readOnly": True})
    assert r.status == 200
    kv = await EtcdKV.connect([etcd_url])
    store = FilesystemBlobStore(tmp_path / "shared-blobs")
    late = Registry(
        kv, store, SystemClock(), RandomIds(), prefix=reg_b.settings.keys.root.decode(), replica="late"
    )
    try:
        await late.start()
        assert late.read_only  # read before it serves, not some time later
    finally:
        await late.stop()
        await store.close()
        await kv.close()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"readOnly": "yes"}',
        b"[true]",
        b"{}",
        b"[" * 100_000 + b"]" * 100_000,  # too deep for the parser: 400, not 500
        b'{"readOnly": ' + b"[" * 100_000,
    ],
)
async def test_bad_switch_bodies_are_400(client: Client, registry: Registry, body: bytes) -> None:
    r = await client.put("/hareg/v1/read-only", data=body)
    assert r.status == 400
    assert "readOnly" in (await r.json())["errors"][0]["message"]
    assert not registry.read_only


async def test_a_switch_body_split_across_tcp_segments_is_read_whole(
    client: Client, registry: Registry
) -> None:
    headers = {"Content-Type": "application/json"}
    body = b'{"readOnly": true}'
    r = await raw_request(client, "PUT", b"/hareg/v1/read-only", headers=headers, body=body, split_at=7)
    assert r.status == 200, r.body[:300]
    assert registry.read_only


async def test_the_switch_and_status_stay_usable_while_read_only(client: Client, registry: Registry) -> None:
    r = await client.put("/hareg/v1/read-only", json={"readOnly": True})
    assert r.status == 200
    r = await client.get("/hareg/v1/status")
    assert r.status == 200
    available = next(c for c in (await r.json())["conditions"] if c["type"] == "Available")
    assert available["status"] == "True" and available["reason"] == "ReadOnly"
    r = await client.put("/hareg/v1/read-only", json={"readOnly": False})
    assert r.status == 200 and not registry.read_only


async def test_cli_read_only_on_off(
    client: Client, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(client.make_url("")).rstrip("/")
    code = await asyncio.to_thread(cli_main, ["read-only", "on", "--registry", url])
    assert code == 0
    assert "cluster read-only switch: on; this replica is read-only" in capsys.readouterr().out
    assert registry.read_only
    code = await asyncio.to_thread(cli_main, ["read-only", "status", "--registry", url, "--json"])
    assert code == 0 and '"cluster": true' in capsys.readouterr().out
    code = await asyncio.to_thread(cli_main, ["read-only", "off", "--registry", url])
    assert code == 0
    assert "switch: off; this replica is read-write" in capsys.readouterr().out
    assert not registry.read_only


async def test_no_write_commits_after_the_switch_on_a_replica_that_has_not_seen_it(
    etcd_url: str, tmp_path: Path
) -> None:
    """Replica b's watch never delivers the settings' events, so its own view
    says writable for good; still, once ``PUT /hareg/v1/read-only`` returned on
    replica a, every kind of write sent to b is refused and nothing changes
    in etcd: the switch is a compare in every write transaction."""
    prefix = f"/ro-lag-{uuid.uuid4().hex[:10]}"
    blobs = tmp_path / "shared-blobs"
    async with AsyncExitStack() as stack:
        [(reg_a, a)] = await start_replicas(stack, etcd_url, blobs, prefix, 1)
        inner = await EtcdKV.connect([etcd_url])
        stack.push_async_callback(inner.close)
        lagging = HookedKV(inner)
        store = FilesystemBlobStore(blobs)
        stack.push_async_callback(store.close)
        reg_b = Registry(lagging, store, SystemClock(), RandomIds(), prefix=prefix, replica="lagging")
        lagging.frozen_watch_prefixes.append(reg_b.meta.keys.kind_prefix("c"))
        await reg_b.start()
        stack.push_async_callback(reg_b.stop)
        b: Client = TestClient(TestServer(init_app(reg_b)))
        await b.start_server()
        stack.push_async_callback(b.close)

        old = await push_image(b, "lag/app", "old", seed="old")
        image = await push_image(b, "lag/app", "v1")
        await push_image(b, "lag/other", "v1", seed="other")
        loose = b"a blob no manifest uses"
        await b.post("/v2/lag/app/blobs/uploads/", params={"digest": sha256(loose)}, data=loose)
        location = await start_upload(b, "lag/app")
        chunk = b"chunked"
        assert (await b.patch(location, data=chunk, headers={"Content-Range": "0-6"})).status == 202
        open_upload = await start_upload(b, "lag/app")
        to_cancel = await start_upload(b, "lag/app")

        r = await a.put("/hareg/v1/read-only", json={"readOnly": True})
        assert r.status == 200
        assert not reg_b.read_only  # b has not seen it, and never will
        before = (await snapshot(reg_a)).keys

        manifest = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        new_blob = b"new layer"
        for resp in [
            await b.post("/v2/lag/app/blobs/uploads/", params={"digest": sha256(new_blob)}, data=new_blob),
            await b.put(location, params={"digest": sha256(chunk)}),
            await b.post("/v2/lag/app/blobs/uploads/"),  # a session: its record is a write too
            await b.patch(open_upload, data=chunk, headers={"Content-Range": "0-6"}),
            await b.delete(to_cancel),
            await b.put("/v2/lag/app/manifests/v2", data=image.body, headers=manifest),
            await b.put("/v2/lag/app/manifests/v1", data=image.body, headers=manifest),  # a re-push
            await b.put(f"/v2/lag/app/manifests/{image.digest}", data=image.body, headers=manifest),
            await b.delete("/v2/lag/app/manifests/v1"),
            await b.delete(f"/v2/lag/app/manifests/{old.digest}"),
            await b.delete(f"/v2/lag/app/blobs/{sha256(loose)}"),
            await b.post("/v2/lag/new/blobs/uploads/", params={"mount": image.blobs[0], "from": "lag/app"}),
            await b.post("/v2/lag/app/blobs/uploads/", params={"mount": image.blobs[0], "from": "lag/app"}),
            await b.post("/hareg/v1/repositories/lag/app/tags/v1/rollback", json={"digest": old.digest}),
            await b.post("/hareg/v1/repositories/lag/app/tags/v1/rollback", json={"digest": image.digest}),
            await b.put("/hareg/v1/repositories/lag/app/immutability", json={"patterns": ["v*"]}),
        ]:
            await expect_read_only(resp)
        assert (await snapshot(reg_a)).keys == before

        # Off again (b still has not seen anything): b's writes commit.
        assert (await a.put("/hareg/v1/read-only", json={"readOnly": False})).status == 200
        r = await b.put("/v2/lag/app/manifests/v2", data=image.body, headers=manifest)
        assert r.status == 201, await r.text()
        # The refused chunk staged nothing: the upload goes on from byte 0.
        r = await b.patch(open_upload, data=chunk, headers={"Content-Range": "0-6"})
        assert r.status == 202, await r.text()
