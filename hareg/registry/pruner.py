"""The pruner: garbage collection on a cron schedule, on the leader only.

Shaped like OpenShift's image pruner (``schedule``, ``suspend``,
``keepTagRevisions``, ``keepYoungerThanDuration``).  Every replica runs the
schedule loop; only the current leader (leadership.py) collects, and each of
its deletions is fenced by its leadership token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from hareg.clock import Clock
from hareg.config import CronSchedule, parse_cron
from hareg.kv.base import KVError
from hareg.metadata.switch import ReadOnlyGuard, WritesFrozen
from hareg.registry.gc import GarbageCollector, Report
from hareg.registry.leadership import Leadership
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
        # ... and its deletions compare the cluster switch, so none commits after
        # the switch is turned on (a run already going then stops deleting).
        self.switch = switch
        self._lock = asyncio.Lock()

    async def run_once(self, *, dry_run: bool = False) -> Report:
        """One collection.  A real run needs leadership; a dry run does not
        (it only reads)."""
        if not dry_run and not self.leadership.is_leader:
            raise NotLeader(await self.leadership.leader())
        async with self._lock:
            try:
                fence = list(self.leadership.fence())
                if not dry_run and self.switch is not None:
                    await self.switch.refresh()  # WritesFrozen if read-only now
                    fence.append(await self.switch.compare())
                report = await self.collector.run(fence, dry_run=dry_run)
            except (KVError, StorageError):
                self.stats.run_finished("failure", self.clock.now())
                raise
            if not dry_run:
                self.stats.run_finished("success", self.clock.now())
                self.stats.deleted("tag_history", report.history_entries)
                self.stats.deleted("manifest", len(report.manifests))
                self.stats.deleted("link", len(report.links))
                self.stats.deleted("blob", len(report.blobs), report.bytes)
                self.stats.deleted("upload", len(report.uploads))
                self.last_report = report
            return report

    def _seconds_to_next(self) -> float:
        assert self.schedule is not None
        now = datetime.fromtimestamp(self.clock.now(), UTC)
        return max((self.schedule.next_after(now) - now).total_seconds(), 0.0)

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
