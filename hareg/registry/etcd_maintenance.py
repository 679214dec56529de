"""etcd's space: the NOSPACE alarm as a condition, defragmentation on a schedule,
and recovery from the alarm (docs/operations.md, "etcd space").

Three parts, one job (keeping etcd's database within its quota):

* ``MetadataSpace``: whether etcd is out of space, as this replica sees it.  A
  write refused with ``KVNoSpace`` marks it at once (``SpaceWatchedKV``, the
  KV decorator the Registry puts in front of its KV); the alarm list, polled
  every ``alarm_check_interval``, marks it before any write fails and clears
  it once the alarm is disarmed.  Without the poll (the simulator, a KV with
  no maintenance calls) a write that etcd takes clears it.  The replica stays
  ready (pulls are served from the cache and etcd), degraded with reason
  ``MetadataStoreFull``; writes get 507 (registry/policy.py).
* ``EtcdMaintenance.defragment_all``: every member defragmented in turn,
  never two at once (a member answers nothing while it defragments),
  followers first and the etcd leader last.  Run on ``defrag_schedule`` by
  the pruner's leader only, so one replica at a time: leadership is checked
  in etcd before each member, and a member that stops answering (another
  replica's pass) ends the pass.
* ``EtcdMaintenance.recover``: while the alarm is raised, the pruner's leader
  (or any replica while there is none: a leader cannot be elected while etcd
  refuses the lease and the write) compacts at the current revision (writes
  are refused, so watchers are at it already), defragments every member and
  disarms the alarm when that freed enough space (``_space_allows``); else
  it is repeated at most every ``recovery_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from hareg.clock import Clock
from hareg.config.cron import CronSchedule, parse_cron
from hareg.config.model import EtcdMaintenanceConfig
from hareg.kv.base import (
    KV,
    Compare,
    KeyValue,
    KVError,
    KVNoSpace,
    Maintenance,
    MemberStatus,
    Put,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchBatch,
)
from hareg.metadata.roles import Leadership

__all__ = [
    "EtcdMaintenance",
    "MetadataSpace",
    "SpaceWatchedKV",
]

log = logging.getLogger("hareg.etcd_maintenance")

NOSPACE = "NOSPACE"


class MetadataSpace:
    """Whether etcd is out of space (its NOSPACE alarm), as this replica last saw it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.alarm_raised = False  # the last alarm list named NOSPACE
        self.write_refused = False  # a write was refused with NOSPACE since the last clear
        self.since: float | None = None  # wall-clock seconds it has been full
        self.refusals = 0  # writes refused with NOSPACE, in all (a metric)
        self._refusal_epoch = 0  # counts refusals, so a poll sent before one does not clear it

    @property
    def full(self) -> bool:
        return self.alarm_raised or self.write_refused

    def refused(self) -> None:
        """A write was refused with NOSPACE."""
        self.refusals += 1
        self._refusal_epoch += 1
        self.write_refused = True
        self._mark()

    def applied(self) -> None:
        """etcd took a write: it is not (or no longer) refusing them."""
        if not self.alarm_raised:
            self.write_refused = False
            self._mark()

    def epoch(self) -> int:
        """Taken before an alarm poll is sent; handed back to ``listed``."""
        return self._refusal_epoch

    def listed(self, raised: bool, epoch: int) -> None:
        """The alarm list, asked for when ``epoch()`` was ``epoch``, says ``raised``."""
        self.alarm_raised = raised
        if raised:
            self.write_refused = True
        elif epoch == self._refusal_epoch:  # no write was refused since the poll was sent
            self.write_refused = False
        self._mark()

    def _mark(self) -> None:
        if self.full and self.since is None:
            self.since = self.clock.now()
            log.error(
                "etcd is out of space (NOSPACE alarm): writes are refused, pulls are served; "
                "see docs/operations.md (MetadataStoreFull)"
            )
        elif not self.full and self.since is not None:
            self.since = None
            log.warning("etcd has space again: writes are taken")


class SpaceWatchedKV:
    """A KV decorator that tells ``space`` when etcd refuses a write with
    NOSPACE and when it takes one (every other call passes through)."""

    def __init__(self, inner: KV, space: MetadataSpace) -> None:
        self.inner = inner
        self.space = space

    async def get(self, key: bytes) -> KeyValue | None:
        return await self.inner.get(key)

    async def range(
        self, start: bytes, end: bytes, *, limit: int = 0, revision: int = 0, keys_only: bool = False
    ) -> RangeResult:
        return await self.inner.range(start, end, limit=limit, revision=revision, keys_only=keys_only)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        try:
            result = await self.inner.txn(compares, success, failure)
        except KVNoSpace:
            self.space.refused()
            raise
        if any(isinstance(op, Put) for op in (*success, *failure)):
            # etcd refuses any transaction that could write under the alarm,
            # whichever branch runs: this one was taken.
            self.space.applied()
        return result

    async def current_revision(self) -> int:
        return await self.inner.current_revision()

    async def grant_lease(self, ttl: int) -> int:
        try:
            lease = await self.inner.grant_lease(ttl)
        except KVNoSpace:
            self.space.refused()
            raise
        self.space.applied()
        return lease

    async def refresh_lease(self, lease_id: int) -> int:
        return await self.inner.refresh_lease(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self.inner.revoke_lease(lease_id)

    def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        return self.inner.watch(start, end, start_revision)

    def request_watch_progress(self) -> None:
        self.inner.request_watch_progress()

    async def close(self) -> None:
        await self.inner.close()


class EtcdMaintenance:
    """The alarm poll (every replica), scheduled defragmentation and NOSPACE
    recovery (the pruner's leader).  ``maintenance`` None: etcd's maintenance
    calls are not available (the simulator), and nothing runs."""

    def __init__(
        self,
        maintenance: Maintenance | None,
        kv: KV,
        leadership: Leadership,
        space: MetadataSpace,
        clock: Clock,
        settings: EtcdMaintenanceConfig,
    ) -> None:
        self.maintenance = maintenance
        self.kv = kv
        self.leadership = leadership
        self.space = space
        self.clock = clock
        self.settings = settings
        # suspend: the operator runs etcdctl instead (docs/operations.md).
        schedule = None if settings.suspend else settings.defrag_schedule
        self.defrag_schedule: CronSchedule | None = parse_cron(schedule) if schedule else None
        # What was done, for the metrics: (kind, result) -> count, kind one of
        # defragment (a member), compact, disarm, recovery.
        self.runs: Counter[tuple[str, str]] = Counter()
        self.statuses: list[MemberStatus] = []  # each member's last status seen
        self.defragmented: list[str] = []  # the members of the last pass, in order
        self.last_defrag: float | None = None  # wall-clock end of the last full pass
        self._last_recovery: float | None = None  # monotonic
        self._full_size: int | None = None  # the largest member's size when recovery first ran
        self._lock = asyncio.Lock()  # one pass (scheduled or recovery) at a time here

    @property
    def enabled(self) -> bool:
        return self.maintenance is not None

    def _api(self) -> Maintenance:
        if self.maintenance is None:
            raise RuntimeError("etcd's maintenance calls are not available")
        return self.maintenance

    async def check_alarms(self) -> bool:
        """Ask etcd for its alarms now; whether NOSPACE is raised."""
        epoch = self.space.epoch()
        alarms = await self._api().alarms()
        raised = any(a.kind == NOSPACE for a in alarms)
        self.space.listed(raised, epoch)
        if not raised:
            self._full_size = None  # disarmed (by anyone): the next alarm is measured afresh
        return raised

    async def member_statuses(self) -> list[MemberStatus]:
        self.statuses = await self._api().member_statuses()
        return self.statuses

    async def defragment_all(self, *, fenced: bool = False) -> list[str]:
        """Defragment every member that answers, one at a time, followers
        first and the etcd leader last; the members done, in order.  A member
        that fails or times out ends the pass (the others are left alone:
        something is wrong with the cluster).

        A defragmentation is not a transaction that a fencing token can
        guard, so before each member the pass checks that every member that
        answered at its start still answers (one that does not may be
        defragmenting for another replica) and, ``fenced``, that this replica
        still leads the pruner; either failing ends the pass."""
        api = self._api()
        async with self._lock:
            statuses = await self.member_statuses()
            order = sorted(statuses, key=lambda s: s.member_id == s.leader_id)
            done: list[str] = []
            self.defragmented = done
            for status in order:
                if done:
                    answering = {s.address for s in await self.member_statuses()}
                    silent = sorted({s.address for s in statuses} - answering)
                    if silent:
                        self.runs[("defragment", "stopped")] += 1
                        raise KVError(
                            f"defragment: pass ended, member(s) {', '.join(silent)} stopped answering"
                        )
                if fenced and not await self.leadership.confirm():
                    self.runs[("defragment", "stopped")] += 1
                    log.warning("scheduled etcd defragmentation ended: this replica no longer leads")
                    break
                try:
                    await api.defragment(status.address, self.settings.defrag_timeout)
                except KVError:
                    self.runs[("defragment", "failure")] += 1
                    raise
                self.runs[("defragment", "success")] += 1
                done.append(status.address)
                log.info(
                    "defragmented etcd member",
                    extra={"fields": {"member": status.address, "dbSizeBefore": status.db_size}},
                )
            if len(done) == len(order):
                self.last_defrag = self.clock.now()
            await self.member_statuses()
            return done

    async def recover(self) -> bool:
        """Compact at the current revision, defragment every member, and
        disarm the NOSPACE alarm if that freed space; whether it was disarmed."""
        api = self._api()
        self._last_recovery = self.clock.monotonic()
        try:
            before = await self.member_statuses()
            if self._full_size is None and before:
                # Where etcd said it was full (3.4 does not tell its quota).
                self._full_size = max(s.db_size for s in before)
            revision = await self.kv.current_revision()
            await api.compact(revision)
            self.runs[("compact", "success")] += 1
            await self.defragment_all()
            after = self.statuses
            if not _space_allows(after, self._full_size):
                self.runs[("recovery", "still_full")] += 1
                log.error(
                    "etcd is still full after compaction and defragmentation: free space (hareg prune, "
                    "or delete keys) or raise etcd's --quota-backend-bytes",
                    extra={"fields": {"dbSize": max((s.db_size for s in after), default=0)}},
                )
                return False
            for alarm in await api.alarms():
                if alarm.kind == NOSPACE:
                    await api.disarm(alarm)
                    self.runs[("disarm", "success")] += 1
            await self.check_alarms()
        except KVError:
            self.runs[("recovery", "failure")] += 1
            raise
        self.runs[("recovery", "success")] += 1
        log.warning("etcd NOSPACE alarm disarmed after compaction and defragmentation")
        return True

    async def _may_recover(self) -> bool:
        """The pruner's leader recovers; while there is none (etcd refuses the
        lease a campaign needs), any replica may."""
        if self.leadership.is_leader:
            return True
        try:
            return await self.leadership.leader() is None
        except KVError:
            return False

    async def run_alarm_checks(self) -> None:
        """Every ``alarm_check_interval``: the alarm list; while NOSPACE is
        raised, recovery (at most every ``recovery_interval``)."""
        if self.maintenance is None:
            return
        failing = False  # warned once per outage, not every interval
        while True:
            try:
                raised = await self.check_alarms()
                if self.leadership.is_leader:  # the database sizes, for the metrics
                    await self.member_statuses()
                due = (
                    self._last_recovery is None
                    or self.clock.monotonic() - self._last_recovery >= self.settings.recovery_interval
                )
                if (
                    raised
                    and self.settings.recover_no_space
                    and not self.settings.suspend
                    and due
                    and await self._may_recover()
                ):
                    await self.recover()
                failing = False
            except KVError as exc:
                if not failing:
                    log.warning("etcd alarm check or recovery failed: %s", exc)
                failing = True
            await self.clock.sleep(self.settings.alarm_check_interval)

    def _seconds_to_next(self) -> float:
        assert self.defrag_schedule is not None
        now = datetime.fromtimestamp(self.clock.now(), UTC)
        return max((self.defrag_schedule.next_after(now) - now).total_seconds(), 0.0)

    async def run_defrag_scheduled(self) -> None:
        """Defragment every member at each time of ``defrag_schedule``, on the
        pruner's leader only."""
        if self.maintenance is None or self.defrag_schedule is None:
            return
        while True:
            await self.clock.sleep(self._seconds_to_next())
            if not self.leadership.is_leader:
                continue
            try:
                await self.defragment_all(fenced=True)
            except KVError as exc:
                log.warning("scheduled etcd defragmentation did not finish: %s", exc)


def _space_allows(after: Sequence[MemberStatus], full_size: int | None) -> bool:
    """Whether to disarm: the largest member below 95% of the quota where etcd
    tells it (3.5 on); else (3.4) at least 10% smaller than when etcd said it
    was full, so that compaction alone, which frees little, does not disarm an
    alarm the next write raises again."""
    if not after:
        return False
    largest = max(s.db_size for s in after)
    quota = max(s.db_size_quota for s in after)
    if quota:
        return largest < quota * 0.95
    return full_size is not None and largest < full_size * 0.9
