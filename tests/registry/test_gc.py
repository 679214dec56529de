"""Online garbage collection and the pruner against a real etcd and the
filesystem blob store: safety while pushes go on, fencing, and each setting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from registries import running

from hareg.clock import SystemClock
from hareg.http.app import init_app
from hareg.kv.etcd import EtcdKV
from hareg.metadata.gc import GcStore
from hareg.metadata.records import MirrorCheckRecord
from hareg.registry.errors import RegistryError
from hareg.registry.gc import MirrorExpiry, Policy, expired_mirror_tags
from hareg.registry.pruner import NotLeader
from hareg.registry.pull_through import Mirror
from hareg.registry.service import Registry
from hareg.registry.streams import one_chunk
from hareg.storage.filesystem import FilesystemBlobStore
from hareg.upstream.client import RegistryClient
from registry.images import OCI, digest, manifest


async def push_blob(reg: Registry, repo: str, data: bytes) -> None:
    await reg.uploads.monolithic(repo, digest(data), one_chunk(data), length=len(data))


async def push_image(reg: Registry, repo: str, tag: str | None, layers: list[bytes], note: str) -> str:
    config = f"config {repo} {note}".encode()
    for blob in [config, *layers]:
        try:
            await reg.blobs.stat(repo, digest(blob))  # "layer already exists"?
        except RegistryError:
            await push_blob(reg, repo, blob)
    body = manifest(config, layers, note)
    pushed = await reg.manifests.put(repo, tag or digest(body), body, OCI)
    return pushed.digest


@contextlib.asynccontextmanager
async def registry(
    kv: EtcdKV, root: Path, prefix: str, policy: Policy, name: str = "r0"
) -> AsyncIterator[Registry]:
    def short_lease(reg: Registry) -> None:
        reg.leadership.ttl = 2

    async with running(
        kv,
        FilesystemBlobStore(root),
        prefix=prefix,
        replica=name,
        gc_policy=policy,
        upload_grace=policy.grace,
        before_start=short_lease,
    ) as reg:
        yield reg


async def lead(reg: Registry) -> None:
    """Until ``reg`` leads; the bound is generous (a busy machine), tests that
    promise a takeover time assert it themselves."""
    async with asyncio.timeout(60):
        while not reg.leadership.is_leader:
            await asyncio.sleep(0.05)


async def check_invariants(reg: Registry) -> None:
    """Invariant 2 of docs/invariants.md: no manifest references a missing blob (link, live record, bytes)
    or a missing child manifest."""
    snap = await GcStore(reg.kv, reg.meta.keys).snapshot()
    for repo, manifests in snap.manifests.items():
        for d, rec in manifests.items():
            for b in rec.blobs:
                assert b in snap.links.get(repo, {}), f"{repo}@{d} references unlinked blob {b}"
                assert b in snap.blobs and snap.blobs[b][0].state == "live", f"blob record {b} gone"
                assert await reg.store.stat(b) is not None, f"bytes of {b} gone"
            for c in rec.manifests:
                assert c in manifests, f"{repo}@{d} references missing manifest {c}"
        for tag, t in snap.tags.get(repo, {}).items():
            assert t.digest in manifests, f"tag {repo}:{tag} dangles"


@pytest.fixture
def prefix() -> str:
    return f"/gc-{uuid.uuid4().hex[:10]}"


async def test_collection_racing_pushes_that_reuse_layers(kv: EtcdKV, tmp_path: Path, prefix: str) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.3)
    rng = random.Random(7)
    base = [f"shared base layer {i}".encode() * 200 for i in range(3)]
    pushed: dict[str, str] = {}  # tag -> digest of acknowledged pushes still tagged
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        stop = asyncio.Event()
        failures: list[str] = []

        async def pusher(worker: int) -> None:
            for i in range(25):
                layers = [rng.choice(base), f"own layer {worker}-{i}".encode() * 100]
                tag = f"w{worker}-{i % 4}"  # tags move: old revisions become garbage
                try:
                    pushed[tag] = await push_image(reg, "app", tag, layers, f"{worker}-{i}")
                except RegistryError as exc:
                    # A layer collected between "exists" and the manifest PUT is
                    # refused cleanly, never committed half-way.
                    assert exc.code.name in ("MANIFEST_BLOB_UNKNOWN", "UNAVAILABLE"), exc
                    failures.append(exc.code.name)

        async def deleter() -> None:
            for i in range(15):
                d = await push_image(reg, "scratch", None, [f"scratch {i}".encode() * 50, base[0]], str(i))
                await asyncio.sleep(0.02)
                with contextlib.suppress(RegistryError):
                    await reg.manifests.delete("scratch", d)

        async def collector() -> None:
            while not stop.is_set():
                await reg.pruner.run_once()
                await check_invariants(reg)
                await asyncio.sleep(0.05)

        gc_task = asyncio.create_task(collector())
        await asyncio.gather(*(pusher(w) for w in range(3)), deleter())
        stop.set()
        await gc_task
        await check_invariants(reg)
        # Every acknowledged push that is still tagged pulls back complete.
        for tag, d in pushed.items():
            content = await reg.manifests.get("app", tag)
            assert content.digest == d
        # Quiet now: past the grace window everything unreferenced goes.
        await asyncio.sleep(policy.grace + 0.1)
        await reg.pruner.run_once()
        await reg.pruner.run_once()
        snap = await GcStore(reg.kv, reg.meta.keys).snapshot()
        referenced = {b for ms in snap.manifests.values() for rec in ms.values() for b in rec.blobs}
        stored = {d async for d in reg.store.list_blobs()}
        assert stored == referenced, "unreferenced blobs left, or referenced ones missing"
        assert set(snap.blobs) == referenced
        assert not snap.manifests.get("scratch"), "deleted images' manifests left"
        assert len(pushed) == 12  # 3 workers x 4 tags


async def test_dry_run_reports_exactly_what_a_real_run_deletes(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        for i in range(3):
            await push_image(reg, "repo", "latest", [f"layer {i}".encode()], str(i))
        await push_image(reg, "other", None, [b"untagged"], "x")
        dry = await reg.pruner.run_once(dry_run=True)
        assert dry.manifests and dry.blobs and dry.history_entries == 2
        real = await reg.pruner.run_once()
        assert sorted(real.manifests) == sorted(dry.manifests)
        assert sorted(real.links) == sorted(dry.links)
        assert real.blobs == dry.blobs and real.bytes == dry.bytes
        assert real.history_entries == dry.history_entries
        again = await reg.pruner.run_once(dry_run=True)
        assert not again.manifests and not again.blobs and not again.links
        await check_invariants(reg)


async def test_a_prune_of_one_repository_leaves_the_others_alone(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        shared = b"a layer both repositories link"
        for i in range(2):  # the first revision of each tag becomes garbage
            await push_image(reg, "mine", "v", [shared, f"mine {i}".encode()], f"m{i}")
            await push_image(reg, "theirs", "v", [shared, f"theirs {i}".encode()], f"t{i}")
        await push_image(reg, "mine", "old", [shared], "replaced")
        await reg.meta.delete_tag("mine", "old")  # its manifest, now untagged, goes too
        dry = await reg.pruner.run_once(dry_run=True, only=frozenset({"mine"}))
        real = await reg.pruner.run_once(only=frozenset({"mine"}))
        assert real.repositories == ["mine"] and sorted(real.manifests) == sorted(dry.manifests)
        assert len(real.manifests) == 2 and all(m.startswith("mine@") for m in real.manifests)
        assert real.links and all(link.startswith("mine@") for link in real.links)
        assert real.blobs == dry.blobs
        assert digest(b"mine 0") in real.blobs  # linked by mine only
        assert digest(b"theirs 0") not in real.blobs and digest(shared) not in real.blobs
        assert real.uploads == []  # upload stagings are a whole run's business
        assert reg.pruner.last_report is None  # nor is it the pruner's last run
        # The other repository's garbage is all still there for a full run.
        full = await reg.pruner.run_once()
        assert [m.split("@")[0] for m in full.manifests] == ["theirs"]
        assert digest(b"theirs 0") in full.blobs and digest(shared) not in full.blobs
        await check_invariants(reg)


async def test_keep_tag_revisions_keeps_rollback_targets(kv: EtcdKV, tmp_path: Path, prefix: str) -> None:
    policy = Policy(keep_tag_revisions=2, keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        digests = [await push_image(reg, "repo", "v", [f"rev {i}".encode()], str(i)) for i in range(4)]
        report = await reg.pruner.run_once()
        assert sorted(report.manifests) == sorted(f"repo@{d}" for d in digests[:2])
        assert report.history_entries == 2
        history = await reg.meta.tag_history("repo", "v")
        assert [h.new for h in history] == digests[2:]
        assert await reg.meta.get_manifest("repo", digests[2]) is not None  # the kept previous revision


async def test_keep_younger_than_spares_recent_manifests(kv: EtcdKV, tmp_path: Path, prefix: str) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=3600.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        untagged = await push_image(reg, "repo", None, [b"young"], "young")
        report = await reg.pruner.run_once()
        assert not report.manifests and not report.blobs
        assert await reg.meta.get_manifest("repo", untagged) is not None


async def test_grace_window_spares_blobs_of_a_push_in_flight(kv: EtcdKV, tmp_path: Path, prefix: str) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=3600.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        layer = b"uploaded, manifest not pushed yet"
        await push_blob(reg, "repo", layer)
        report = await reg.pruner.run_once()
        assert not report.links and not report.blobs
        await reg.blobs.stat("repo", digest(layer))


async def test_only_the_leader_collects_and_a_killed_leader_is_replaced(
    kv: EtcdKV, etcd_url: str, tmp_path: Path, prefix: str
) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    kv_b = await EtcdKV.connect([etcd_url])
    try:
        async with (
            registry(kv, tmp_path / "blobs", prefix, policy, "a") as a,
            registry(kv_b, tmp_path / "blobs", prefix, policy, "b") as b,
        ):
            async with asyncio.timeout(60):
                while not (a.leadership.is_leader or b.leadership.is_leader):
                    await asyncio.sleep(0.05)
            leader, follower = (a, b) if a.leadership.is_leader else (b, a)
            with pytest.raises(NotLeader):
                await follower.pruner.run_once()
            # Crash the leader: its tasks stop, its lease is not revoked.
            for task in leader._tasks:
                task.cancel()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await lead(follower)
            # The lease runs out within its TTL, the follower campaigns every TTL/3; slack for a busy machine.
            ttl = follower.leadership.ttl
            assert loop.time() - t0 < ttl + ttl / 3 + 3
            assert await follower.leadership.leader() == follower.replica
    finally:
        await kv_b.close()


async def test_a_paused_leader_that_wakes_up_deletes_nothing(
    kv: EtcdKV, etcd_url: str, tmp_path: Path, prefix: str
) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    kv_b = await EtcdKV.connect([etcd_url])
    try:
        async with registry(kv, tmp_path / "blobs", prefix, policy, "old") as old:
            await lead(old)
            for i in range(2):
                await push_image(old, "repo", "t", [f"garbage soon {i}".encode()], str(i))
            # Pause: the old leader stops refreshing its lease...
            for task in old._tasks:
                task.cancel()
            async with registry(kv_b, tmp_path / "blobs", prefix, policy, "new") as new:
                await lead(new)  # ...which lapses, and another replica takes over.
                # The old one wakes up still believing it leads.
                old.leadership._renewed = old.clock.monotonic()
                assert old.leadership.is_leader
                before = await GcStore(kv, old.meta.keys).snapshot()
                report = await old.pruner.run_once()
                assert not report.manifests and not report.links and not report.blobs
                assert report.history_entries == 0
                after = await GcStore(kv, old.meta.keys).snapshot()
                assert after.manifests == before.manifests and after.blobs.keys() == before.blobs.keys()
                assert {d async for d in old.store.list_blobs()} >= set(before.blobs)
                # The real leader collects.
                assert (await new.pruner.run_once()).manifests
    finally:
        await kv_b.close()


async def test_suspend_and_schedule(kv: EtcdKV, tmp_path: Path, prefix: str) -> None:
    policy = Policy()
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        reg.pruner.schedule_text = None
        from hareg.config.cron import parse_cron

        reg.pruner.schedule = parse_cron("*/5 * * * *")
        seconds = reg.pruner._seconds_to_next()
        assert 0 < seconds <= 300
        reg.pruner.suspend = True
        await lead(reg)
        reg.pruner._seconds_to_next = lambda: 0.0  # type: ignore[method-assign]
        task = asyncio.create_task(reg.pruner.run_scheduled())
        await asyncio.sleep(0.3)
        assert reg.pruner.stats.runs["success"] == 0, "a suspended pruner ran"
        reg.pruner.suspend = False
        async with asyncio.timeout(60):
            while reg.pruner.stats.runs["success"] == 0:
                await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_stale_plan_cannot_delete_what_became_referenced(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    """Each guard on its own: the plan is made, then the victims are referenced
    again (a manifest PUT using the link, a tag on the manifest, a mount of the
    blob), then the stale plan is executed."""
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        gc = reg.pruner.collector
        fence = reg.leadership.fence()
        orphan_layer, config = b"layer nobody references yet", b"config for later"
        await push_blob(reg, "links", orphan_layer)
        await push_blob(reg, "links", config)
        untagged = await push_image(reg, "manifests", None, [b"kept by a late tag"], "late")
        await push_blob(reg, "blobs", b"blob that gets mounted")
        await reg.manifests.delete("manifests", untagged)  # drops its links' only user ...
        untagged = await push_image(reg, "manifests", None, [b"kept by a late tag"], "late")  # ... re-pushed
        snap, plan = await gc.plan()
        assert plan.links["links"] and plan.manifests["manifests"]
        mounted = digest(b"blob that gets mounted")
        assert mounted in plan.blob_sizes
        # The world moves on after the snapshot:
        body = manifest(config, [orphan_layer], "late push")
        await reg.manifests.put("links", "v1", body, OCI)
        late = await reg.manifests.get("manifests", untagged)
        await reg.manifests.put("manifests", "late", late.body, OCI)  # a tag now reaches it
        await reg.blobs.mount("elsewhere", mounted, "blobs")
        # The stale plan is refused at every step.
        links = plan.links["links"]
        assert await gc.gc_store.delete_links("links", links, plan.revision, fence) == []
        assert not await gc.gc_store.delete_manifests(
            "manifests", plan.manifests["manifests"], plan.revision, fence
        )
        record, mod = snap.blobs[mounted]
        assert not await gc.gc_store.mark_blob_deleting(mounted, record, mod, fence)
        await check_invariants(reg)
        assert (await reg.manifests.get("links", "v1")).body == body
        assert (await reg.blobs.stat("elsewhere", mounted)).size > 0


async def test_a_rollback_after_the_snapshot_saves_its_target(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    """A rollback moves a tag without writing any manifest: only the guard on
    the repository's tags stops a stale plan from deleting its target."""
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        old = await push_image(reg, "repo", "v", [b"first"], "1")
        await push_image(reg, "repo", "v", [b"second"], "2")
        _, plan = await reg.pruner.collector.plan()
        assert old in [d for d, _ in plan.manifests["repo"]]
        await reg.tag_lifecycle.rollback("repo", "v", old)
        fence = reg.leadership.fence()
        assert not await reg.pruner.collector.gc_store.delete_manifests(
            "repo", plan.manifests["repo"], plan.revision, fence
        )
        assert (await reg.manifests.get("repo", "v")).digest == old
        await check_invariants(reg)


def large_manifest(config: bytes, layers: list[bytes], note: str, size: int = 300 * 1024) -> bytes:
    """A manifest above the inline limit: its body goes to the blob store."""
    body = manifest(config, layers, note)
    doc = json.loads(body)
    doc["annotations"]["padding"] = "x" * (size - len(body))
    return json.dumps(doc).encode()


async def push_large(reg: Registry, repo: str, tag: str | None, note: str) -> tuple[str, bytes]:
    config, layer = f"config {note}".encode(), f"layer {note}".encode()
    for blob in (config, layer):
        await push_blob(reg, repo, blob)
    body = large_manifest(config, [layer], note)
    assert len(body) > reg.meta.inline_limit
    pushed = await reg.manifests.put(repo, tag or digest(body), body, OCI)
    return pushed.digest, body


async def test_the_stored_body_of_a_large_manifest_is_collected_once_no_manifest_needs_it(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        big, body = await push_large(reg, "repo", "v1", "big")
        await push_large(reg, "other", "v1", "big")  # the same manifest in a second repository
        assert await reg.store.stat(big) is not None
        report = await reg.pruner.run_once()
        assert big not in report.blobs  # tagged in both: kept
        await reg.manifests.delete("repo", big)
        report = await reg.pruner.run_once()
        assert big not in report.blobs  # still the body of other@big
        assert (await reg.manifests.get("other", big)).body == body
        await reg.manifests.delete("other", big)
        report = await reg.pruner.run_once()
        assert big in report.blobs
        assert await reg.store.stat(big) is None
        assert big not in (await GcStore(reg.kv, reg.meta.keys).snapshot()).blobs
        # Pushed again afterwards: stored and readable again.
        again, body2 = await push_large(reg, "repo", "v2", "big")
        assert again == big and (await reg.manifests.get("repo", "v2")).body == body2
        await check_invariants(reg)


@pytest.mark.parametrize("claimed_first", [False, True])
async def test_a_push_racing_the_collection_of_a_large_manifests_body(
    kv: EtcdKV, tmp_path: Path, prefix: str, claimed_first: bool
) -> None:
    """The body is unneeded at the snapshot; then the manifest is pushed again.
    Push first: the stale claim fails.  Claim first: the push gets a 503 to retry."""
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        gc = reg.pruner.collector
        big, body = await push_large(reg, "repo", None, "race")
        await reg.manifests.delete("repo", big)
        snap, plan = await gc.plan()
        assert big in plan.blob_sizes  # nothing needs the body at the snapshot
        record, mod = snap.blobs[big]
        if not claimed_first:
            await reg.manifests.put("repo", "v1", body, OCI)
            assert not await gc.gc_store.mark_blob_deleting(big, record, mod, reg.leadership.fence())
            assert (await reg.manifests.get("repo", "v1")).body == body
            return
        assert await gc.gc_store.mark_blob_deleting(big, record, mod, reg.leadership.fence())
        with pytest.raises(RegistryError) as info:
            await reg.manifests.put("repo", "v1", body, OCI)
        assert info.value.status == 503 and info.value.code.name == "UNAVAILABLE"
        assert await reg.meta.get_manifest("repo", big) is None
        assert await reg.meta.get_tag("repo", "v1") is None


async def test_a_mount_of_a_blob_already_linked_renews_its_grace_like_a_head(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    """The mount finds the link already there (from an old upload, unreferenced):
    answered "mounted", it must give the push that follows the grace a HEAD gives."""
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=1.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await lead(reg)
        layer = b"an old layer, mounted again"
        await push_blob(reg, "src", layer)
        await push_blob(reg, "repo", layer)
        await asyncio.sleep(1.2)  # both links now older than the grace window
        mounted = await reg.blobs.mount("repo", digest(layer), "src")
        assert mounted is not None
        report = await reg.pruner.run_once()
        assert f"repo@{digest(layer)}" not in report.links  # renewed by the mount
        assert f"src@{digest(layer)}" in report.links  # the untouched one goes
        assert (await reg.blobs.stat("repo", digest(layer))).size == len(layer)


class OffsetClock(SystemClock):
    """The real clock, whose wall time a test moves forward (past an expiry)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset


async def test_mirrored_tags_not_pulled_for_expire_after_are_expired_and_collected(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    """docs/pull-through.md#expiry: a mirrored tag not pulled for the mirror's
    expireAfter (plus its ttl) goes with its history and check record, and the
    same run collects its manifest and blobs; a tag pulled meanwhile, and an
    ordinary repository's tags however old, stay."""
    clock = OffsetClock()
    policy = Policy(keep_tag_revisions=1, keep_younger_than=0.0, grace=0.0)
    old_layer, kept_layer = b"layer of v1 " * 100, b"layer of v2 " * 100
    async with (
        running(kv, FilesystemBlobStore(tmp_path / "upstream")) as upstream_reg,
        TestServer(init_app(upstream_reg), host="127.0.0.1") as server,
        contextlib.AsyncExitStack() as stack,
    ):
        old = await push_image(upstream_reg, "lib/app", "v1", [old_layer], "v1")
        kept = await push_image(upstream_reg, "lib/app", "v2", [kept_layer], "v2")
        upstream = RegistryClient(str(server.make_url("")).rstrip("/"), clock)
        stack.push_async_callback(upstream.close)
        reg = await stack.enter_async_context(
            running(
                kv,
                FilesystemBlobStore(tmp_path / "cache"),
                clock=clock,
                prefix=prefix,
                gc_policy=policy,
                mirrors=[Mirror("mirror", upstream, 60.0, expire_after=3600.0)],
            )
        )
        client = await stack.enter_async_context(TestClient(TestServer(init_app(reg), host="127.0.0.1")))

        async def pull(tag: str) -> str:
            response = await client.get(f"/v2/mirror/lib/app/manifests/{tag}", headers={"Accept": OCI})
            assert response.status == 200, await response.text()
            image = json.loads(await response.read())
            for layer in [image["config"], *image["layers"]]:  # all of it: no sparse manifest stays
                blob = await client.get(f"/v2/mirror/lib/app/blobs/{layer['digest']}")
                assert blob.status == 200
                await blob.read()
            return response.headers["Docker-Content-Digest"]

        assert await pull("v1") == old and await pull("v2") == kept
        own = await push_image(reg, "own/app", "v1", [b"an ordinary layer " * 50], "own")
        clock.offset += 1800.0
        assert await pull("v2") == kept  # past the ttl: a check, recorded
        clock.offset += 1900.0  # v1: 3700 s since its check (> 3600 + 60); v2: 1900 s
        await lead(reg)
        dry = await reg.pruner.run_once(dry_run=True)
        assert dry.expired_tags == ["mirror/lib/app:v1"]
        assert dry.manifests == [f"mirror/lib/app@{old}"]
        assert await reg.meta.get_tag("mirror/lib/app", "v1") is not None  # a dry run deletes nothing
        report = await reg.pruner.run_once()
        assert report.expired_tags == ["mirror/lib/app:v1"]
        assert report.manifests == [f"mirror/lib/app@{old}"]
        assert digest(old_layer) in report.blobs and digest(kept_layer) not in report.blobs
        assert await reg.store.stat(digest(old_layer)) is None
        assert await reg.meta.get_tag("mirror/lib/app", "v1") is None
        assert await reg.meta.get_mirror_check("mirror/lib/app", "v1") is None
        history = await reg.meta.tag_history("mirror/lib/app", "v1")
        assert [(e.action, e.old, e.new) for e in history] == [("expire", old, None)]
        assert reg.pruner_stats.deleted_objects["mirror_tag"] == 1
        # What stays: the tag pulled meanwhile, and the ordinary repository.
        assert await reg.meta.get_tag("mirror/lib/app", "v2") is not None
        assert (await reg.manifests.get("own/app", "v1")).digest == own
        assert await reg.store.stat(digest(kept_layer)) is not None
        await check_invariants(reg)
        # Pulled again, it is fetched again.
        assert await pull("v1") == old
        assert await reg.store.stat(digest(old_layer)) is not None


async def test_a_mirrored_tag_pulled_after_the_snapshot_is_not_expired(
    kv: EtcdKV, tmp_path: Path, prefix: str
) -> None:
    """The expiry's guards: a pull that re-checks the tag after the snapshot
    keeps it; a check record whose tag was never cached expires alone."""
    policy = Policy(keep_younger_than=0.0, grace=0.0)
    async with registry(kv, tmp_path / "blobs", prefix, policy) as reg:
        await push_image(reg, "mirror/app", "v1", [b"layer " * 10], "v1")
        await push_image(reg, "own/app", "v1", [b"own " * 10], "own")
        later = reg.clock.now() + 1000.0  # planned as if much later
        await reg.meta.set_mirror_check("mirror/app", "v1", MirrorCheckRecord(later - 100.0))
        gc_store = GcStore(reg.kv, reg.meta.keys)
        snap = await gc_store.snapshot()
        assert expired_mirror_tags(snap, [MirrorExpiry("mirror", 100.0, 10.0)], later) == []  # 100 < 110
        assert expired_mirror_tags(snap, [MirrorExpiry("mirror", 0.0, 10.0)], later) == []  # 0: never
        mirrors = [MirrorExpiry("mirror", 50.0, 10.0), MirrorExpiry("own", 0.0, 0.0)]
        (expired,) = expired_mirror_tags(snap, mirrors, later)
        assert (expired.repo, expired.tag) == ("mirror/app", "v1")
        _, revision = snap.mirror_checks[("mirror/app", "v1")]
        assert await reg.meta.claim_mirror_check("mirror/app", "v1", revision, MirrorCheckRecord(later))
        assert not await gc_store.expire_mirror_tag(expired, later, "r0", [])
        assert await reg.meta.get_tag("mirror/app", "v1") is not None
        await reg.meta.set_mirror_check("mirror/app", "never-cached", MirrorCheckRecord(later - 100.0))
        (orphan,) = expired_mirror_tags(await gc_store.snapshot(), mirrors, later)
        assert (orphan.tag, orphan.record) == ("never-cached", None)
        assert await gc_store.expire_mirror_tag(orphan, later, "r0", [])
        assert await reg.meta.get_mirror_check("mirror/app", "never-cached") is None
        assert await reg.meta.get_tag("mirror/app", "v1") is not None
