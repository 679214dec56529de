"""The pruner's HTTP API: /hareg/v1/prune and /hareg/v1/pruner."""

from __future__ import annotations

import asyncio

from oci_helpers import Client, push_image

from hareg.registry.service import Registry


async def _lead(registry: Registry) -> None:
    async with asyncio.timeout(15):
        while not registry.leadership.is_leader:
            await asyncio.sleep(0.05)


async def test_dry_run_then_real_run(client: Client, registry: Registry) -> None:
    await _lead(registry)
    from hareg.registry.gc import Policy

    registry.pruner.collector.policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    first = await push_image(client, "repo", "latest", seed="one")
    await push_image(client, "repo", "latest", seed="two")  # the first revision becomes garbage
    r = await client.post("/hareg/v1/prune", params={"dryRun": "true"})
    assert r.status == 200
    dry = await r.json()
    assert dry["dryRun"] is True and f"repo@{first.digest}" in dry["manifests"]
    r = await client.post("/hareg/v1/prune")
    real = await r.json()
    assert real["dryRun"] is False and real["manifests"] == dry["manifests"] and real["blobs"] == dry["blobs"]
    assert real["counts"]["bytes"] > 0
    r = await client.get(f"/v2/repo/manifests/{first.digest}")
    assert r.status == 404
    r = await client.get("/hareg/v1/pruner")
    status = await r.json()
    assert status["isLeader"] is True and status["leader"] == registry.replica
    assert status["runs"] == {"success": 1} and status["lastRun"]["counts"]["manifests"] == 1


async def test_a_real_run_on_a_replica_without_a_reachable_leader_is_refused(
    client: Client, registry: Registry
) -> None:
    # Leadership taken by someone else that is not a known member.
    await _lead(registry)
    await registry.leadership.resign()
    for task in registry._tasks:
        if task.get_name() == "pruner-leadership":
            task.cancel()
    from hareg.kv.base import Compare, Put

    await registry.kv.txn(
        [Compare.missing(registry.leadership.key)], [Put(registry.leadership.key, b"elsewhere#1")]
    )
    r = await client.post("/hareg/v1/prune")
    assert r.status == 503
    body = await r.json()
    assert body["errors"][0]["code"] == "UNAVAILABLE" and "elsewhere" in body["errors"][0]["message"]
    r = await client.post("/hareg/v1/prune", params={"dryRun": "1"})
    assert r.status == 200  # a dry run only reads: it runs anywhere
