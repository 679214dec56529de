"""The pruner's HTTP API: /hareg/v1/prune and /hareg/v1/pruner."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kv_hooks import HookedKV
from oci_helpers import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_MANIFEST,
    Client,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
    sha256,
)

from hareg.kv.base import Compare, Delete, TxnOp
from hareg.registry.gc import Policy
from hareg.registry.service import Registry


async def _lead(registry: Registry) -> None:
    async with asyncio.timeout(60):  # a campaign: generous, the machine may be busy
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


async def test_a_prune_racing_a_push_leaves_no_referrer_entry_without_its_manifest(
    hooked: tuple[Registry, HookedKV, Client],
) -> None:
    """Three untagged referrers (of a subject never pushed) are garbage; the
    collector deletes them in batches of 3 operations, and a push into the
    repository lands right after the first batch, so every later batch's
    guard fails.  A referrer's manifest and its referrers entry must go in the
    same batch, and the report must name what was deleted."""
    registry, kv, client = hooked
    registry.pruner.collector.gc_store.batch = 3
    await _lead(registry)
    registry.pruner.collector.policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    subject = {"mediaType": OCI_MANIFEST, "digest": sha256(b"never pushed"), "size": 12}
    await push_blob(client, "repo", EMPTY_JSON)
    artifacts = []
    for i in range(3):
        payload = f"signature {i}".encode()
        await push_blob(client, "repo", payload)
        body = image_manifest(
            EMPTY_JSON,
            [payload],
            config_type=OCI_EMPTY,
            layer_type="application/octet-stream",
            artifact_type="application/vnd.example.signature.v1",
            subject=subject,
        )
        assert (await put_manifest(client, "repo", sha256(body), body)).status == 201
        artifacts.append(sha256(body))

    start, end = registry.meta.keys.manifests("repo")
    pushed: list[str] = []

    async def push_after_the_first_batch(compares: Sequence[Compare], ops: Sequence[TxnOp]) -> None:
        if not pushed and any(isinstance(op, Delete) and start <= op.key < end for op in ops):
            pushed.append("pushing")
            pushed.append((await push_image(client, "repo", "new")).digest)

    kv.after_txn = push_after_the_first_batch
    r = await client.post("/hareg/v1/prune")
    assert r.status == 200, await r.text()
    report = await r.json()
    assert len(pushed) == 2  # the push did land between the batches
    gone = [d for d in artifacts if (await client.get(f"/v2/repo/manifests/{d}")).status == 404]
    assert gone and len(gone) < len(artifacts)  # the first batch committed, a later one was refused
    assert sorted(report["manifests"]) == sorted(f"repo@{d}" for d in gone)
    assert report["counts"]["skipped"] >= 1
    r = await client.get(f"/v2/repo/referrers/{subject['digest']}")
    listed = [m["digest"] for m in (await r.json())["manifests"]]
    assert sorted(listed) == sorted(set(artifacts) - set(gone))
