"""Prometheus metrics of one replica, on a CollectorRegistry of its own.

``Metrics`` owns a ``prometheus_client.CollectorRegistry`` (never the
library's global ``REGISTRY``) and the metric objects the HTTP layer, the
etcd decorator and the blob-storage wrapper update as things happen.  What the service layer counts in
plain integers (cache hits, pruner runs, the request limiters' queues) is read
at scrape time by ``ServiceCollector``, so that layer needs no Prometheus
client and the simulator runs it unchanged.

Every metric is listed, with its labels, in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hareg.metadata.barrier import Freshness

if TYPE_CHECKING:
    from hareg.registry.service import Registry

__all__ = ["CONTENT_TYPE", "LimiterState", "Metrics", "ServiceCollector"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Request latency: from a few ms (cached manifest reads) to minutes (big blobs).
_HTTP_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# etcd calls: sub-millisecond to the request timeout.
_ETCD_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Labelled children of the HTTP metrics kept per (route, method, status): a
# request then updates its series without prometheus_client's label lookup
# (validation, a lock, a tuple of strings). Bounded: past this many
# combinations (unknown methods a client invents) the lookup is done as before.
_HTTP_CHILDREN_MAX: Final = 1024
# Storage calls: a local stat to a streamed multi-GiB blob.
_STORAGE_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300
)  # fmt: skip


class LimiterState(Protocol):
    """What a request limiter exposes for scraping (hareg.http.limits.Limiter)."""

    @property
    def kind(self) -> str: ...
    @property
    def running(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def max_running(self) -> int: ...
    @property
    def max_in_queue(self) -> int: ...
    @property
    def max_wait_in_queue(self) -> float: ...
    @property
    def rejected(self) -> dict[str, int]: ...


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "hareg_http_requests",
            "HTTP requests served, by route template, method and status code.",
            ("route", "method", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            "hareg_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by route template and method.",
            ("route", "method"),
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.http_received = Counter(
            "hareg_http_received_bytes",
            "Request body bytes received, by route template.",
            ("route",),
            registry=r,
        )
        self.http_sent = Counter(
            "hareg_http_sent_bytes",
            "Response body bytes sent, by route template (sendfile included).",
            ("route",),
            registry=r,
        )
        self.http_in_flight = Gauge(
            "hareg_http_requests_in_flight", "Requests being served (queued ones included).", registry=r
        )
        self.uploads_in_progress = Gauge(
            "hareg_uploads_in_progress",
            "Blob upload requests (POST, PATCH, PUT under /blobs/uploads/) being served.",
            registry=r,
        )
        self.etcd_duration = Histogram(
            "hareg_etcd_request_duration_seconds",
            "Latency of etcd calls, by operation.",
            ("op",),
            buckets=_ETCD_BUCKETS,
            registry=r,
        )
        self.etcd_errors = Counter(
            "hareg_etcd_request_errors",
            "Failed etcd calls, by operation and error kind.",
            ("op", "error"),
            registry=r,
        )
        self.storage_requests = Counter(
            "hareg_storage_requests",
            "Blob storage calls, by operation and outcome.",
            ("op", "outcome"),
            registry=r,
        )
        self.storage_duration = Histogram(
            "hareg_storage_request_duration_seconds",
            "Latency of blob storage calls (for streams, to the end of the stream), by operation.",
            ("op",),
            buckets=_STORAGE_BUCKETS,
            registry=r,
        )
        self.storage_bytes = Counter(
            "hareg_storage_bytes",
            "Bytes streamed out of (read, upload_read) or appended to (upload_write) blob storage.",
            ("op",),
            registry=r,
        )
        self.cache_revision_lag = Gauge(
            "hareg_cache_revision_lag",
            "etcd's revision minus the revision the watch-fed cache has applied (measured at scrape).",
            registry=r,
        )
        self._service: ServiceCollector | None = None
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        # By route, made at a route's first body (a series exists once it counted bytes).
        self._received_children: dict[str, Counter] = {}
        self._sent_children: dict[str, Counter] = {}

    # ----------------------------------------------------------------- hooks

    def observe_etcd(self, op: str, seconds: float, error: str | None) -> None:
        """The InstrumentedKV observer."""
        self.etcd_duration.labels(op).observe(seconds)
        if error is not None:
            self.etcd_errors.labels(op, error).inc()

    def observe_storage(self, op: str, seconds: float, outcome: str, nbytes: int) -> None:
        """The CheckedBlobStore observer."""
        self.storage_requests.labels(op, outcome).inc()
        self.storage_duration.labels(op).observe(seconds)
        if nbytes:
            self.storage_bytes.labels(op).inc(nbytes)

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_duration.labels(route, method),
            )
            if len(self._http_children) < _HTTP_CHILDREN_MAX:
                self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if received:
            _child(self._received_children, self.http_received, route).inc(received)
        if sent:
            _child(self._sent_children, self.http_sent, route).inc(sent)

    def attach(self, registry: Registry, limiters: Callable[[], Iterable[LimiterState]]) -> None:
        """Export the service layer's counters and the limiters' state (once per Metrics)."""
        if self._service is None:
            self._service = ServiceCollector(registry, limiters)
            self.registry.register(self._service)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _child(children: dict[str, Counter], parent: Counter, route: str) -> Counter:
    """``parent.labels(route)``, kept in ``children`` (route templates: a bounded set)."""
    child = children.get(route)
    if child is None:
        child = parent.labels(route)
        if len(children) < _HTTP_CHILDREN_MAX:
            children[route] = child
    return child


class ServiceCollector(Collector):
    """Reads plain counters kept by the service layer and the limiters, at scrape time."""

    def __init__(self, registry: Registry, limiters: Callable[[], Iterable[LimiterState]]) -> None:
        self.registry = registry
        self.limiters = limiters

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: names are only known at collect time

    def collect(self) -> Iterator[Metric]:
        reg = self.registry
        yield from self._cache(reg)
        yield from self._limits()
        yield from self._pruner(reg)
        yield from self._fsck(reg)
        yield from self._pull_through(reg)
        yield from self._etcd_space(reg)
        read_only = GaugeMetricFamily(
            "hareg_read_only",
            "1 while this replica refuses writes, by source (config file or cluster switch).",
            labels=("source",),
        )
        read_only.add_metric(("config",), float(reg.settings.config_read_only))
        read_only.add_metric(("cluster",), float(reg.settings.cluster_read_only))
        yield read_only

    def _cache(self, reg: Registry) -> Iterator[Metric]:
        barrier, cache = reg.barrier, reg.cache
        hits = CounterMetricFamily(
            "hareg_cache_hits",
            "Metadata reads answered from the watch-fed cache, by freshness (current, or stale "
            "while etcd is unavailable).",
            labels=("freshness",),
        )
        misses = CounterMetricFamily(
            "hareg_cache_misses", "Metadata reads that went to etcd (cache not loaded or behind)."
        )
        if barrier is not None:
            hits.add_metric(("current",), barrier.results[Freshness.CURRENT])
            hits.add_metric(("stale",), barrier.results[Freshness.STALE])
            misses.add_metric((), barrier.results[Freshness.UNCACHED])
            yield CounterMetricFamily(
                "hareg_cache_revision_reads",
                "Quorum revision reads made by the read barrier (each serves many requests).",
                value=barrier.revision_reads,
            )
        yield hits
        yield misses
        if cache is not None:
            yield GaugeMetricFamily(
                "hareg_cache_revision", "etcd revision the cache reflects.", cache.revision
            )
            yield GaugeMetricFamily("hareg_cache_ready", "1 once the cache is loaded.", float(cache.ready))
            yield GaugeMetricFamily(
                "hareg_cache_watch_connected", "1 while the cache's watch is live.", float(cache.connected)
            )
            yield CounterMetricFamily(
                "hareg_cache_relists", "Full listings of the cache (start-up and compaction).", cache.relists
            )
            yield CounterMetricFamily(
                "hareg_cache_events", "Watch events applied to the cache.", cache.events_applied
            )
            entries = GaugeMetricFamily(
                "hareg_cache_entries", "Records in the cache, by kind.", labels=("kind",)
            )
            for kind, count in sorted(cache.size().items()):
                entries.add_metric((kind,), count)
            yield entries
            yield GaugeMetricFamily(
                "hareg_cache_body_bytes",
                "Bytes of whole manifest records held (bounded by limits.manifestCacheBytes).",
                cache.bodies_held,
            )
            reads = CounterMetricFamily(
                "hareg_cache_body_reads",
                "Manifest record reads after the barrier: held (hit) or read from etcd (miss).",
                labels=("result",),
            )
            reads.add_metric(("hit",), cache.body_hits)
            reads.add_metric(("miss",), cache.body_misses)
            yield reads

    def _limits(self) -> Iterator[Metric]:
        labels = ("kind",)
        queued = GaugeMetricFamily("hareg_requests_queued", "Requests waiting for a slot.", labels=labels)
        running = GaugeMetricFamily(
            "hareg_requests_running", "Requests holding a slot of the limiter.", labels=labels
        )
        limit = GaugeMetricFamily(
            "hareg_requests_limit",
            "The configured limits (0: unlimited; maxWaitInQueue in seconds).",
            labels=("kind", "limit"),
        )
        rejected = CounterMetricFamily(
            "hareg_requests_rejected",
            "Requests answered 429: the queue was full (queue_full) or the wait too long (timeout).",
            labels=("kind", "reason"),
        )
        for state in self.limiters():
            queued.add_metric((state.kind,), state.queued)
            running.add_metric((state.kind,), state.running)
            limit.add_metric((state.kind, "maxRunning"), state.max_running)
            limit.add_metric((state.kind, "maxInQueue"), state.max_in_queue)
            limit.add_metric((state.kind, "maxWaitInQueue"), state.max_wait_in_queue)
            for reason in ("queue_full", "timeout"):
                rejected.add_metric((state.kind, reason), state.rejected.get(reason, 0))
        yield from (queued, running, limit, rejected)

    def _pruner(self, reg: Registry) -> Iterator[Metric]:
        stats = reg.pruner_stats
        runs = CounterMetricFamily(
            "hareg_pruner_runs", "Pruner runs on this replica, by result.", labels=("result",)
        )
        for result, count in sorted(stats.runs.items()):
            runs.add_metric((result,), count)
        objects = CounterMetricFamily(
            "hareg_pruner_deleted_objects", "Objects the pruner deleted, by kind.", labels=("kind",)
        )
        for kind, count in sorted(stats.deleted_objects.items()):
            objects.add_metric((kind,), count)
        nbytes = CounterMetricFamily(
            "hareg_pruner_deleted_bytes", "Bytes of blob storage the pruner freed, by kind.", labels=("kind",)
        )
        for kind, count in sorted(stats.deleted_bytes.items()):
            nbytes.add_metric((kind,), count)
        yield from (runs, objects, nbytes)
        if stats.last_run_finished is not None:
            yield GaugeMetricFamily(
                "hareg_pruner_last_run_timestamp_seconds",
                "When the last pruner run on this replica finished.",
                stats.last_run_finished,
            )

    def _pull_through(self, reg: Registry) -> Iterator[Metric]:
        """The pull-through cache on this replica, by mirror prefix (docs/pull-through.md)."""
        stats = reg.pull_through.stats
        if not reg.pull_through.mirrors:
            return
        pulls = CounterMetricFamily(
            "hareg_pull_through_pulls",
            "Pulls of mirrored manifests and blobs, by result (hit, miss: fetched, stale: the upstream failed).",
            labels=("prefix", "kind", "result"),
        )
        for (prefix, kind, result), count in sorted(stats.pulls.items()):
            pulls.add_metric((prefix, kind, result), count)
        errors = CounterMetricFamily(
            "hareg_pull_through_upstream_errors",
            "Upstream failures, by kind (unreachable, rate_limited, denied, not_found, invalid).",
            labels=("prefix", "kind"),
        )
        for (prefix, kind), count in sorted(stats.upstream_errors.items()):
            errors.add_metric((prefix, kind), count)
        fetched = CounterMetricFamily(
            "hareg_pull_through_fetched_bytes", "Bytes read from upstreams.", labels=("prefix",)
        )
        for prefix, count in sorted(stats.fetched_bytes.items()):
            fetched.add_metric((prefix,), count)
        yield from (pulls, errors, fetched)

    def _etcd_space(self, reg: Registry) -> Iterator[Metric]:
        """etcd's space quota (registry/etcd_maintenance.py): the NOSPACE alarm,
        the database sizes the pruner's leader last saw, maintenance runs."""
        space, maintenance = reg.space, reg.etcd_maintenance
        yield GaugeMetricFamily(
            "hareg_etcd_space_full",
            "1 while etcd is out of space (NOSPACE alarm raised or a write refused): writes get 507.",
            float(space.full),
        )
        yield GaugeMetricFamily(
            "hareg_etcd_nospace_alarm", "1 while etcd's alarm list names NOSPACE.", float(space.alarm_raised)
        )
        yield CounterMetricFamily(
            "hareg_etcd_nospace_refusals", "Writes etcd refused for lack of space (NOSPACE).", space.refusals
        )
        runs = CounterMetricFamily(
            "hareg_etcd_maintenance_runs",
            "etcd maintenance on this replica, by kind (defragment: one member, compact, disarm, recovery) "
            "and result.",
            labels=("kind", "result"),
        )
        for (kind, result), count in sorted(maintenance.runs.items()):
            runs.add_metric((kind, result), count)
        yield runs
        if maintenance.statuses:
            size = GaugeMetricFamily(
                "hareg_etcd_db_size_bytes", "Each etcd member's database file, last seen.", labels=("member",)
            )
            in_use = GaugeMetricFamily(
                "hareg_etcd_db_size_in_use_bytes",
                "The part of each etcd member's database in use (the rest a defragmentation gives back).",
                labels=("member",),
            )
            for status in maintenance.statuses:
                size.add_metric((status.address,), status.db_size)
                in_use.add_metric((status.address,), status.db_size_in_use)
            yield from (size, in_use)
        if maintenance.last_defrag is not None:
            yield GaugeMetricFamily(
                "hareg_etcd_last_defrag_timestamp_seconds",
                "When this replica last finished defragmenting every etcd member.",
                maintenance.last_defrag,
            )

    def _fsck(self, reg: Registry) -> Iterator[Metric]:
        """The last integrity check on this replica (hareg fsck, manual or scheduled)."""
        checker = reg.pruner.fsck
        report = checker.last_report if checker is not None else None
        if report is None or report.finished is None:
            return
        yield GaugeMetricFamily(
            "hareg_fsck_checked_objects",
            "Objects the last integrity check on this replica read.",
            report.checked,
        )
        corrupt = GaugeMetricFamily(
            "hareg_fsck_corrupt_objects",
            "Damaged objects the last integrity check on this replica found, by what it did with them.",
            labels=("state",),
        )
        corrupt.add_metric(("quarantined",), report.quarantined_total)
        corrupt.add_metric(("left",), report.unrepaired)
        yield corrupt
        yield GaugeMetricFamily(
            "hareg_fsck_last_run_timestamp_seconds",
            "When the last integrity check on this replica finished.",
            report.finished,
        )
