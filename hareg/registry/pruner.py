"""The pruner: garbage collection on a cron schedule, on the leader only.

Shaped like OpenShift's image pruner (``schedule``, ``suspend``,
``keepTagRevisions``, ``keepYoungerThanDuration``).  Every replica runs the
schedule loop; only the current leader (hareg/metadata/roles.py) collects,
and each of its deletions is fenced by its leadership token.

The integrity check (fsck.py) runs here too: on its own schedule (off by
default), on the leader only; a repairing run needs leadership as a
garbage collection does, and each of its quarantines holds the pruner's lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from hareg.clock import Clock
from hareg.config.cron import CronSchedule, parse_cron
from hareg.kv.base import KVError
from hareg.metadata.roles import Leadership
from hareg.metadata.switch import ReadOnlyGuard, WritesFrozen
from hareg.registry.fsck import FsckBusy, FsckReport, IntegrityChecker
from hareg.registry.gc import GarbageCollector, Report
from hareg.registry.stats import PrunerStats
from hareg.storage.base import StorageError

log = logging.getLogger("hareg.pruner")


class NotLeader(Exception):
    def __init__(self, leader: str | None) -> None:
        super().__init__(f"the pruner runs on the leader ({leader or 'none elected yet'})")
        self.leader = leader


class Pruner:
    def __init__(
        self,
        collector: GarbageCollector,
        leadership: Leadership,
        clock: Clock,
        *,
        schedule: str | None = None,
        suspend: bool = False,
        stats: PrunerStats | None = None,
        read_only: Callable[[], bool] = lambda: False,
        fsck: IntegrityChecker | None = None,
        fsck_schedule: str | None = None,
        fsck_repair: bool = False,
        switch: ReadOnlyGuard | None = None,
    ) -> None:
        self.schedule_text = schedule
        self.schedule: CronSchedule | None = parse_cron(schedule) if schedule else None
        self.collector = collector
        self.leadership = leadership
        self.clock = clock
        self.suspend = suspend
        self.last_report: Report | None = None
        self.stats = stats or PrunerStats()
        # A read-only registry deletes nothing, on a schedule either.
        self.read_only = read_only
        self.fsck = fsck
        self.fsck_schedule_text = fsck_schedule
        self.fsck_schedule: CronSchedule | None = parse_cron(fsck_schedule) if fsck_schedule else None
        self.fsck_repair = fsck_repair
        # ... and its deletions compare the cluster switch, so none commits after
        # the switch is turned on (a run already going then stops deleting).
        self.switch = switch
        self._lock = asyncio.Lock()

    async def run_once(self, *, dry_run: bool = False, only: frozenset[str] | None = None) -> Report:
        """One garbage collection (``only``: of those repositories).  A real run
        needs leadership; a dry run does not (it only reads)."""
        if not dry_run and not self.leadership.is_leader:
            raise NotLeader(await self.leadership.leader())
        async with self._lock:
            try:
                fence = list(self.leadership.fence())
                if not dry_run and self.switch is not None:
                    await self.switch.refresh()  # WritesFrozen if read-only now
                    fence.append(await self.switch.compare())
                report = await self.collector.run(fence, dry_run=dry_run, only=only)
            except (KVError, StorageError):
                self.stats.run_finished("failure", self.clock.now())
                raise
            if not dry_run:
                self.stats.deleted("tag_history", report.history_entries)
                self.stats.deleted("manifest", len(report.manifests))
                self.stats.deleted("link", len(report.links))
                self.stats.deleted("blob", len(report.blobs), report.bytes)
                self.stats.deleted("upload", len(report.uploads))
                self.stats.deleted("mirror_tag", len(report.expired_tags))
                if only is None:  # the pruner's status tells of whole runs
                    self.stats.run_finished("success", self.clock.now())
                    self.last_report = report
            return report

    def _seconds_to_next(self, schedule: CronSchedule | None = None) -> float:
        """Seconds until ``schedule`` (default: the garbage collection's) fires next."""
        schedule = schedule or self.schedule
        assert schedule is not None
        now = datetime.fromtimestamp(self.clock.now(), UTC)
        return max((schedule.next_after(now) - now).total_seconds(), 0.0)

    async def run_scheduled(self) -> None:
        if self.schedule is None:
            return
        while True:
            await self.clock.sleep(self._seconds_to_next())
            if self.suspend or self.read_only() or not self.leadership.is_leader:
                continue
            try:
                await self.run_once()
            except (KVError, StorageError, NotLeader, WritesFrozen) as exc:
                log.warning("scheduled pruner run failed: %s", exc)

    async def run_fsck(self, *, repair: bool = False) -> FsckReport:
        """One integrity check (fsck.py).  A repairing run needs leadership: its
        quarantines are fenced by it and never run beside a garbage collection."""
        if self.fsck is None:
            raise RuntimeError("this pruner has no integrity checker")
        if repair and not self.leadership.is_leader:
            raise NotLeader(await self.leadership.leader())
        if not repair:
            return await self.fsck.run()
        return await self.fsck.run(repair=True, fence=self.leadership.fence(), exclusive=self._lock)

    async def run_fsck_scheduled(self) -> None:
        if self.fsck_schedule is None or self.fsck is None:
            return
        while True:
            await self.clock.sleep(self._seconds_to_next(self.fsck_schedule))
            if self.suspend or not self.leadership.is_leader or self.fsck.running:
                continue
            # A read-only registry deletes nothing: it only checks.
            repair = self.fsck_repair and not self.read_only()
            try:
                report = await self.run_fsck(repair=repair)
            except (KVError, StorageError, NotLeader, FsckBusy) as exc:
                log.warning("scheduled integrity check did not run to the end: %s", exc)
                continue
            if report.unrepaired:
                log.error(
                    "scheduled integrity check found damaged objects it did not quarantine",
                    extra={
                        "fields": {"digests": [f.digest for f in report.corrupt if not f.quarantined][:100]}
                    },
                )
