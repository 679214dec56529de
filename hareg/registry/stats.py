"""Plain counters the service layer keeps for the metrics endpoint to read.

They are ordinary integers on an object the Registry owns (no Prometheus
client in the service layer, no module-level state), so the simulator runs
the same code and can look at them too; ``hareg.observability.metrics`` exports them at
scrape time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["PrunerStats", "PullThroughStats"]


@dataclass
class PrunerStats:
    """What the pruner did, as ``hareg_pruner_*`` metrics.

    The pruner calls ``run_finished(result)`` once per run (result: ``success``,
    ``failure``, ``skipped`` ...), and ``deleted(kind, objects, nbytes)`` for
    what it removed (kind: ``blob``, ``manifest``, ``tag_history``, ``upload``
    ...).
    """

    runs: Counter[str] = field(default_factory=Counter)
    deleted_objects: Counter[str] = field(default_factory=Counter)
    deleted_bytes: Counter[str] = field(default_factory=Counter)
    last_run_finished: float | None = None  # wall-clock seconds, as the clock says

    def run_finished(self, result: str, at: float | None = None) -> None:
        self.runs[result] += 1
        if at is not None:
            self.last_run_finished = at

    def deleted(self, kind: str, objects: int = 1, nbytes: int = 0) -> None:
        self.deleted_objects[kind] += objects
        if nbytes:
            self.deleted_bytes[kind] += nbytes


@dataclass
class PullThroughStats:
    """What the pull-through cache did, as ``hareg_pull_through_*`` metrics, by
    mirror prefix: pulls answered (``hit``: from the cache, ``miss``: fetched
    from the upstream, ``stale``: from the cache because the upstream could not
    answer), upstream failures by kind, and bytes fetched."""

    pulls: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (prefix, manifest|blob, result)
    upstream_errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (prefix, kind)
    fetched_bytes: Counter[str] = field(default_factory=Counter)  # prefix

    def pulled(self, prefix: str, what: str, result: str) -> None:
        self.pulls[(prefix, what, result)] += 1

    def upstream_error(self, prefix: str, kind: str) -> None:
        self.upstream_errors[(prefix, kind)] += 1

    def fetched(self, prefix: str, nbytes: int) -> None:
        self.fetched_bytes[prefix] += nbytes
