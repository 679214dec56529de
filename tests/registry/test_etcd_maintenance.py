"""etcd's space (hareg/registry/etcd_maintenance.py) on real etcd: a member
with a tiny --quota-backend-bytes filled until its NOSPACE alarm, a push
refused at once with 507 while pulls are served and /readyz says
MetadataStoreFull, then recovery (delete, compact, defragment, disarm) and
pushes again; and the scheduled defragmentation of a three-member cluster,
one member at a time, as the members' own logs tell."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from etcd_fixtures import leader_of
from process_checks import require_etcd
from registries import Client, serving

from hareg.clock import SystemClock
from hareg.config.model import EtcdMaintenanceConfig
from hareg.http.keys import HttpSettings
from hareg.ids import RandomIds
from hareg.kv.base import Delete, KVNoSpace, Maintenance, MemberStatus, Put, prefix_end
from hareg.kv.etcd import EtcdKV
from hareg.kv.instrumented import InstrumentedKV
from hareg.metadata.roles import Leadership
from hareg.observability.metrics import Metrics
from hareg.processes.etcd import EtcdProcess
from hareg.registry.etcd_maintenance import EtcdMaintenance, MetadataSpace, _space_allows
from hareg.storage.filesystem import FilesystemBlobStore
from registry.images import digest, manifest

pytestmark = pytest.mark.timeout(180)

QUOTA = 2 * 1024 * 1024  # etcd's --quota-backend-bytes here: full after a few MB of writes
JUNK = b"/junk/"
NO_HANG = 10.0  # a refused write is answered well within this, even on a loaded machine


@pytest.fixture
async def small_etcd(tmp_path: Path) -> AsyncIterator[EtcdProcess]:
    require_etcd()
    proc = EtcdProcess(
        "small", tmp_path / "etcd", quota_backend_bytes=QUOTA, progress_notify_interval="100ms"
    )
    await proc.start(startup_timeout=60)
    try:
        yield proc
    finally:
        await proc.stop(grace=5)


async def fill(kv: EtcdKV) -> int:
    """Write junk beside the registry's keys until etcd refuses for lack of space."""
    for i in range(1000):
        try:
            await kv.txn([], [Put(JUNK + b"%06d" % i, b"x" * 100_000)])
        except KVNoSpace:
            return i
    raise AssertionError("etcd never ran out of space")


async def push_blob(client: Client, repo: str, data: bytes) -> int:
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest(data)}, data=data)
    return r.status


async def put_manifest(client: Client, repo: str, tag: str, body: bytes) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    r = await client.put(f"/v2/{repo}/manifests/{tag}", data=body, headers=headers)
    return r.status, (await r.json() if r.status >= 400 else {})


def no_space_sends(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "hareg_etcd_request_errors_total", {"op": "txn", "error": "no_space"}
    )
    return value or 0.0


async def until(check: Callable[[], bool], within: float = 60.0) -> None:
    """Wait for ``check`` to hold, within a generous bound."""
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.05)


async def test_a_full_etcd_refuses_writes_with_507_serves_reads_and_recovers(
    small_etcd: EtcdProcess, tmp_path: Path
) -> None:
    raw = await EtcdKV.connect([small_etcd.client_url])
    metrics = Metrics()
    settings = EtcdMaintenanceConfig(alarm_check_interval=0.2, recover_no_space=False, recovery_interval=0.2)
    try:
        async with serving(
            InstrumentedKV(raw, metrics.observe_etcd),
            FilesystemBlobStore(tmp_path / "blobs"),
            metrics=metrics,
            settings=HttpSettings(etcd_endpoints=(small_etcd.client_url,)),
            etcd_maintenance=raw,
            maintenance_settings=settings,
            # A pull re-touches a link older than half this: a write, refused under the alarm.
            upload_grace=0.2,
        ) as (reg, client):
            config, layer = b'{"architecture":"amd64"}', b"layer bytes" * 100
            assert await push_blob(client, "app", config) == 201
            assert await push_blob(client, "app", layer) == 201
            before = manifest(config, [layer], "before")
            assert (await put_manifest(client, "app", "v1", before))[0] == 201

            await fill(raw)
            with pytest.raises(KVNoSpace):  # a lease too: etcd grants none under the alarm
                await raw.grant_lease(10)
            # The alarm poll shows it before any write of the registry failed.
            assert not reg.space.full
            await until(lambda: reg.space.alarm_raised)
            assert reg.space.full

            r = await client.get("/readyz")
            body = await r.json()
            assert r.status == 200 and body["degraded"] is True, body
            assert body["reason"] == "MetadataStoreFull"
            # Writers stay routable: a push gets this replica's clear refusal.
            assert (await client.get("/readyz", params={"for": "writes"})).status == 200
            status = await (await client.get("/hareg/v1/status")).json()
            degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
            assert (degraded["status"], degraded["reason"]) == ("True", "MetadataStoreFull")
            # The member at its quota still serves reads: healthy, not down.
            members = await (await client.get("/hareg/v1/members")).json()
            assert [m["healthy"] for m in members["etcd"]] == [True], members

            # A push: refused at once with 507, sent to etcd once (never re-sent).
            sends = no_space_sends(metrics)
            started = time.monotonic()
            async with asyncio.timeout(NO_HANG):
                code, err = await put_manifest(client, "app", "v2", manifest(config, [layer], "during"))
            assert code == 507, err
            assert err["errors"][0]["detail"] == {"reason": "MetadataStoreFull"}  # type: ignore[index]
            assert "full" in err["errors"][0]["message"]  # type: ignore[index]
            assert no_space_sends(metrics) == sends + 1
            assert reg.space.refusals >= 1
            print(f"push refused in {time.monotonic() - started:.3f}s")
            async with asyncio.timeout(NO_HANG):
                assert await push_blob(client, "app", b"a new layer") == 507

            # Pulls are served (the blob's touch, a write, is refused and skipped).
            refusals = reg.space.refusals
            r = await client.get("/v2/app/manifests/v1")
            assert r.status == 200 and await r.read() == before
            r = await client.get(f"/v2/app/blobs/{digest(layer)}")
            assert r.status == 200 and await r.read() == layer
            assert reg.space.refusals > refusals
            scrape = (await (await client.get("/metrics")).read()).decode()
            assert "hareg_etcd_space_full 1.0" in scrape
            assert "hareg_etcd_nospace_alarm 1.0" in scrape

            # The operator frees space (deletes are taken under the alarm) and
            # hareg compacts, defragments and disarms.
            await raw.txn([], [Delete(JUNK, prefix_end(JUNK))])
            reg.etcd_maintenance.settings = replace(settings, recover_no_space=True)
            await until(lambda: not reg.space.full)
            runs = reg.etcd_maintenance.runs
            assert runs[("compact", "success")] >= 1 and runs[("disarm", "success")] >= 1, runs
            assert runs[("defragment", "success")] >= 1, runs
            assert await raw.alarms() == []
            body = await (await client.get("/readyz")).json()
            assert (body["degraded"], body["reason"]) == (False, "Ready"), body
            assert (await put_manifest(client, "app", "v2", manifest(config, [layer], "after")))[0] == 201
            scrape = (await (await client.get("/metrics")).read()).decode()
            assert "hareg_etcd_space_full 0.0" in scrape
            revision = await raw.current_revision()
            await raw.compact(revision)
            await raw.compact(revision)  # again: nothing to do, no error
    finally:
        await raw.close()


class OnceClock(SystemClock):
    """Real time, except that the first sleep passes at once (the cron's next
    time comes now) and every later one never ends (one scheduled run)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps = 0

    def now(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps > 1:
            await asyncio.Future()
        self.offset += seconds


def defrag_interval(log_file: Path) -> tuple[float, float]:
    """When the member's own log says it started and finished defragmenting."""
    start = end = None
    for line in log_file.read_text().splitlines():
        if '"defragmenting"' in line or '"defragmented"' in line:
            entry = json.loads(line)
            at = datetime.fromisoformat(re.sub("Z$", "+00:00", entry["ts"])).timestamp()
            if entry["msg"] == "defragmenting":
                start = at
            else:
                end = at
    assert start is not None and end is not None, f"{log_file} tells of no defragmentation"
    return start, end


async def test_scheduled_defragmentation_takes_one_member_at_a_time_leader_last(
    etcd_cluster: list[EtcdProcess],
) -> None:
    kv = await EtcdKV.connect([m.client_url for m in etcd_cluster])
    leadership = Leadership(kv, b"/test-defrag/leader", "r0", SystemClock(), RandomIds())
    runner = asyncio.get_running_loop().create_task(leadership.run())
    try:
        await until(lambda: leadership.is_leader)
        settings = EtcdMaintenanceConfig(defrag_schedule="*/5 * * * *")
        # A replica that does not lead skips the scheduled time.
        other = Leadership(kv, b"/test-defrag/leader", "r1", SystemClock(), RandomIds())
        idle_clock = OnceClock()
        idle = EtcdMaintenance(kv, kv, other, MetadataSpace(idle_clock), idle_clock, settings)
        idle_task = asyncio.get_running_loop().create_task(idle.run_defrag_scheduled())

        clock = OnceClock()
        maintenance = EtcdMaintenance(kv, kv, leadership, MetadataSpace(clock), clock, settings)
        task = asyncio.get_running_loop().create_task(maintenance.run_defrag_scheduled())
        await until(lambda: maintenance.last_defrag is not None and clock.sleeps > 1)
        await until(lambda: idle_clock.sleeps > 1)
        for t in (task, idle_task):
            t.cancel()
        await asyncio.gather(task, idle_task, return_exceptions=True)
        assert idle.runs == {} and idle.last_defrag is None

        leader = etcd_cluster[await leader_of(etcd_cluster)]
        assert len(maintenance.defragmented) == 3
        assert maintenance.defragmented[-1] == leader.client_url.removeprefix("http://")
        by_address = {m.client_url.removeprefix("http://"): m for m in etcd_cluster}
        intervals = [defrag_interval(by_address[a].data_dir / "etcd.log") for a in maintenance.defragmented]
        # In the order hareg took them, each started once the one before had finished.
        for (_, previous_end), (start, _) in itertools.pairwise(intervals):
            assert start >= previous_end, intervals
        assert maintenance.runs[("defragment", "success")] == 3
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await leadership.resign()
        await kv.close()


def status(size: int, quota: int = 0) -> MemberStatus:
    return MemberStatus("m:2379", 1, 1, db_size=size, db_size_in_use=size, db_size_quota=quota)


def test_space_allows_disarming_below_the_quota_or_well_below_where_etcd_was_full() -> None:
    # etcd 3.5 on tells its quota: disarm below 95% of it.
    assert _space_allows([status(90, 100)], 100)
    assert not _space_allows([status(97, 100)], 100)
    # etcd 3.4 does not: disarm once the database is 10% smaller than when full
    # (compaction alone frees a little, and the next write would raise it again).
    assert _space_allows([status(60)], 100)
    assert not _space_allows([status(95)], 100)
    assert not _space_allows([status(60)], None)  # the size when full is not known
    assert not _space_allows([], 100)  # no member answered


def test_a_poll_sent_before_a_refusal_does_not_clear_it() -> None:
    space = MetadataSpace(SystemClock())
    epoch = space.epoch()
    space.refused()  # a write refused while the poll was on its way
    space.listed(False, epoch)
    assert space.full
    space.listed(False, space.epoch())  # a later poll: the alarm was disarmed
    assert not space.full
    space.listed(True, space.epoch())
    space.applied()  # a write taken cannot clear a raised alarm
    assert space.full and space.alarm_raised


class LeadershipLostAfterFirst:
    """etcd's own maintenance calls; after the first member's
    defragmentation the leader key is deleted (the leader's lease lapsed)."""

    def __init__(self, kv: EtcdKV, key: bytes) -> None:
        self.kv = kv
        self.key = key
        self.defragmented: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)

    async def defragment(self, address: str, timeout: float) -> None:  # noqa: ASYNC109
        await self.kv.defragment(address, timeout)
        self.defragmented.append(address)
        await self.kv.txn([], [Delete(self.key)])


async def test_a_scheduled_pass_ends_when_the_replica_no_longer_leads(
    etcd_cluster: list[EtcdProcess],
) -> None:
    kv = await EtcdKV.connect([m.client_url for m in etcd_cluster])
    key = b"/test-defrag-fence/leader"
    leadership = Leadership(kv, key, "r0", SystemClock(), RandomIds())
    runner = asyncio.get_running_loop().create_task(leadership.run())
    try:
        await until(lambda: leadership.is_leader)
        assert await leadership.confirm()
        api = LeadershipLostAfterFirst(kv, key)
        clock = OnceClock()
        settings = EtcdMaintenanceConfig(defrag_schedule="*/5 * * * *")
        maintenance = EtcdMaintenance(
            cast(Maintenance, api), kv, leadership, MetadataSpace(clock), clock, settings
        )
        task = asyncio.get_running_loop().create_task(maintenance.run_defrag_scheduled())
        await until(lambda: clock.sleeps > 1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Its lease still runs, but the key no longer holds its token.
        assert not await leadership.confirm()
        assert len(api.defragmented) == 1 and maintenance.defragmented == api.defragmented
        assert maintenance.runs[("defragment", "stopped")] == 1
        assert maintenance.last_defrag is None  # not a full pass
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await leadership.resign()
        await kv.close()
