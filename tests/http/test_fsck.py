"""The integrity check's API, POST /hareg/v1/fsck, over real HTTP (real etcd,
filesystem blobs), and the verification of large manifest bodies on pull."""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from oci_helpers import Client, Image, expect_error, push_image, sha256, start_led_replicas

from hareg.registry.service import Registry

NOTE = "n" * 2000  # makes a manifest larger than the test's inline limit


@pytest.fixture(autouse=True)
def small_inline_limit(registry: Registry) -> None:
    registry.meta.inline_limit = 1024  # manifests over 1 KiB live in the blob store


async def _lead(registry: Registry) -> None:
    async with asyncio.timeout(60):  # a campaign: generous, the machine may be busy
        while not registry.leadership.is_leader:
            await asyncio.sleep(0.05)


def _overwrite(path: str, data: bytes) -> None:
    os.chmod(path, 0o600)  # committed blobs may be read-only
    Path(path).write_bytes(data)


async def damage(registry: Registry, digest: str, data: bytes) -> None:
    path = registry.store.local_path(digest)
    assert path is not None
    await asyncio.to_thread(_overwrite, path, data)


async def push(client: Client) -> Image:
    image = await push_image(client, "team/app", "v1", annotations={"note": NOTE})
    assert len(image.body) > 1024
    return image


async def fsck(client: Client, **params: str) -> dict[str, object]:
    r = await client.post("/hareg/v1/fsck", params=params)
    assert r.status == 200, (r.status, await r.text())
    report: dict[str, object] = await r.json()
    return report


async def test_a_clean_registry(client: Client) -> None:
    await push(client)
    report = await fsck(client)
    assert report["checked"] == 4 and report["corrupt"] == []  # config, 2 layers, the manifest body


async def test_damage_is_reported_refused_on_pull_quarantined_and_restored(
    client: Client, registry: Registry
) -> None:
    await _lead(registry)
    image = await push(client)
    layer = image.layers[0]
    await damage(registry, sha256(layer), layer[:10] + b"!" + layer[11:])
    await damage(registry, image.digest, image.body.replace(b"nnn", b"nnm", 1))

    report = await fsck(client)
    assert report["checked"] == 4
    corrupt = report["corrupt"]
    assert isinstance(corrupt, list)
    assert {c["digest"] for c in corrupt} == {sha256(layer), image.digest}
    for c in corrupt:
        assert set(c) >= {"digest", "reason"} and c["quarantined"] is False
        assert c["reason"].startswith("its ") and " bytes hash to sha256:" in c["reason"]

    # The damaged manifest body is never served, by tag or by digest.
    for ref in ("v1", image.digest):
        entry = await expect_error(await client.get(f"/v2/team/app/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
        assert "damaged" in entry["message"]
        assert (await client.head(f"/v2/team/app/manifests/{ref}")).status == 404

    report = await fsck(client, repair="true")
    corrupt = report["corrupt"]
    assert isinstance(corrupt, list) and len(corrupt) == 2 and all(c["quarantined"] for c in corrupt)

    # Pulls fail loudly; a "layer already exists" HEAD says it does not.
    await expect_error(await client.get(f"/v2/team/app/blobs/{sha256(layer)}"), 404, "BLOB_UNKNOWN")
    assert (await client.head(f"/v2/team/app/blobs/{sha256(layer)}")).status == 404
    await expect_error(await client.get("/v2/team/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    # The undamaged blobs are untouched.
    r = await client.get(f"/v2/team/app/blobs/{sha256(image.layers[1])}")
    assert r.status == 200 and await r.read() == image.layers[1]

    # An honest re-push restores both.
    again = await push(client)
    assert again.digest == image.digest
    r = await client.get(f"/v2/team/app/blobs/{sha256(layer)}")
    assert r.status == 200 and await r.read() == layer
    r = await client.get("/v2/team/app/manifests/v1")
    assert r.status == 200 and await r.read() == image.body
    assert (await fsck(client))["corrupt"] == []

    r = await client.get("/hareg/v1/pruner")
    last = (await r.json())["fsck"]
    assert last["schedule"] is None and last["running"] is False
    assert last["lastRun"]["checked"] == 4 and last["lastRun"]["corrupt"] == []


async def test_a_second_check_meanwhile_is_refused(client: Client, registry: Registry) -> None:
    await _lead(registry)
    image = await push(client)
    await damage(registry, sha256(image.config), b"junk")
    # The first check holds still at its quarantine, which waits for the pruner's lock.
    async with registry.pruner._lock:
        first = asyncio.create_task(registry.pruner.run_fsck(repair=True))
        async with asyncio.timeout(30):
            while not (registry.pruner.fsck and registry.pruner.fsck.running):
                await asyncio.sleep(0.01)
        r = await client.post("/hareg/v1/fsck")
        entry = await expect_error(r, 429, "TOOMANYREQUESTS")
        assert "already running" in entry["message"] and r.headers["Retry-After"]
    report = await first
    assert [c.digest for c in report.corrupt] == [sha256(image.config)] and report.unrepaired == 0


async def test_a_bad_repair_flag_is_refused(client: Client) -> None:
    entry = await expect_error(
        await client.post("/hareg/v1/fsck", params={"repair": "maybe"}), 400, "UNSUPPORTED"
    )
    assert "repair=true or repair=false" in entry["message"]


async def test_refused_on_a_read_only_registry(client: Client) -> None:
    r = await client.put("/hareg/v1/read-only", json={"readOnly": True})
    assert r.status == 200
    await expect_error(await client.post("/hareg/v1/fsck"), 405, "UNSUPPORTED")


async def test_a_repair_sent_to_another_replica_runs_on_the_leader(etcd_url: str, tmp_path: Path) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:

        def small_inline(reg: Registry) -> None:
            reg.meta.inline_limit = 1024

        (leader, leader_client), (_, other) = await start_led_replicas(
            stack, etcd_url, tmp_path / "blobs", prefix, before_start=small_inline
        )
        image = await push(other)
        await damage(leader, sha256(image.config), b"junk")
        report = await fsck(other, repair="true")
        corrupt = report["corrupt"]
        assert isinstance(corrupt, list) and [c["digest"] for c in corrupt] == [sha256(image.config)]
        assert corrupt[0]["quarantined"] is True
        assert leader.pruner.fsck is not None and leader.pruner.fsck.last_report is not None
        await expect_error(await other.get(f"/v2/team/app/blobs/{sha256(image.config)}"), 404, "BLOB_UNKNOWN")

        # The leader stops answering (it still leads): a clear 503, not a 500.
        await leader_client.close()
        r = await other.post("/hareg/v1/fsck", params={"repair": "true"})
        assert r.status == 503, await r.text()
        [error] = (await r.json())["errors"]
        assert error["code"] == "UNAVAILABLE" and "did not answer" in error["message"]
