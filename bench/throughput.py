"""The throughput benchmark: the same workload on every target, phase by phase.

Phases, in order (each measured on its own, with the server's CPU seconds and
peak RSS per role over exactly that phase):

============================  ===========================================  ========
phase                         what one operation is                        figure
============================  ===========================================  ========
``push``                      POST + PUT of a whole blob (monolithic)      MB/s
``push_chunked``              POST, PATCH per ``chunk_size``, PUT          MB/s
``pull``                      GET a blob, sha256-checked while streaming   MB/s
``manifest_put``              PUT an image manifest by tag                 ops/s
``manifest_get_tag``          GET a manifest by tag                        ops/s
``manifest_get_digest``       GET a manifest by digest                     ops/s
``head_blob``                 HEAD a blob                                  ops/s
``tag_list``                  GET the tag list of the manifests' repo      ops/s
``mount``                     cross-repository blob mount                  ops/s
``wrk_manifest_get_tag``      manifest GET by tag, driven by wrk           ops/s
============================  ===========================================  ========

Write phases run a fixed number of operations (the same data on every
target); read phases run for a fixed duration.  ``ratios`` compares the first
hareg target with distribution, figure by figure (hareg / distribution);
``ratios_cluster`` compares ``hareg-cluster`` with ``distribution-cluster``
(two distribution registries on one SeaweedFS bucket behind haproxy).

The ``ceiling`` target (:mod:`bench.ceiling`) runs only ``CEILING_PHASES``,
the reads it serves with fixed bodies: the blobs it is pulled are staged in
its directory beforehand (untimed), every tag answers its one manifest, and
the by-digest reads ask for that manifest's digest.  ``ratios_ceiling``
compares the first hareg target with it (hareg / ceiling) for the figures it
has: the fraction of what aiohttp + uvloop allow on this machine.

With ``--auth`` (:class:`Options` ``auth``) both targets authenticate the same
users (:mod:`bench.users`): hareg with the token flow, distribution with
Basic on every request (:mod:`bench.credentials`), and every request of the
client and of wrk carries credentials.  Beside the authenticated hareg a
second ``hareg serve`` without auth runs every phase (``COMPANION_PHASES``),
each right after the authenticated one, so ``auth_ratios`` (authenticated /
unauthenticated) compare two measurements taken side by side on servers
holding the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench import storage_raw
from bench.blobs import BlobSpec, MiB
from bench.ceiling import MANIFEST_DIGEST as CEILING_MANIFEST_DIGEST
from bench.ceiling import stage_blob
from bench.client import OCIClient, RegistryHTTPError, image_manifest
from bench.credentials import BasicCredentials, Credentials, TokenCredentials, TokenError, pull_scope
from bench.targets import ResourceMeter, RoleUsage, RunningTarget, TargetError, TargetSpec, started
from bench.users import BCRYPT_COST, BenchUsers, write_users
from bench.workload import PhaseResult, Progress, run_phase
from bench.wrk import run_wrk, wrk_binary

BLOB_PHASES = ("push", "push_chunked", "pull")
OP_PHASES = (
    "manifest_put",
    "manifest_get_tag",
    "manifest_get_digest",
    "head_blob",
    "tag_list",
    "mount",
    "wrk_manifest_get_tag",
)
PHASES = BLOB_PHASES + OP_PHASES
# What the ceiling serves (bench.ceiling): reads only.
CEILING_PHASES = ("pull", "manifest_get_tag", "manifest_get_digest", "head_blob", "wrk_manifest_get_tag")
# What the unauthenticated hareg of an --auth run measures, each phase right
# after the authenticated hareg's: every phase, so that both hold the same
# data when their reads are compared (with only the manifest phases, the
# authenticated server alone held every blob and 300 mounted repositories).
COMPANION_PHASES = PHASES
UNAUTHENTICATED_SUFFIX = "-unauthenticated"
REPO_PUSH = "bench/push"
REPO_CHUNKED = "bench/chunked"
REPO_MANIFESTS = "bench/manifests"
TAG_PREFIX = "t"
HAREG_KINDS = ("hareg", "hareg-cluster")
AUTH_MIN_RATIO = 0.8  # authenticated manifest GET by tag / unauthenticated, the target
CEILING_MIN_RATIO = 0.5  # hareg's manifest reads and HEAD blob / the ceiling's
# hareg-cluster / distribution-cluster (issue 15): (label, figure, at least)
CLUSTER_CHECKS = (
    ("blob push MB/s (monolithic)", "push_mb_s", 1.3),
    ("blob push MB/s (chunked)", "push_chunked_mb_s", 1.3),
    ("blob pull MB/s", "pull_mb_s", 1.0),
    ("cross-repo mount ops/s", "mount_ops", 1.0),
)

ProgressFactory = Callable[[str, float, str], Progress]
T = TypeVar("T")
# hareg-cluster's monolithic push / the object store's own PUT rate (issue 15)
RAW_PUT_MIN_FRACTION = 0.7


@dataclass(frozen=True)
class Workload:
    """What one target is asked to do (the same for every target of a run)."""

    blob_sizes: tuple[tuple[int, int], ...] = ((1 * MiB, 48), (32 * MiB, 6))  # (size, count) per phase
    chunk_size: int = 4 * MiB
    concurrency: int = 4  # blob phases
    request_concurrency: int = 16  # manifest, HEAD, tag list and mount phases
    manifests: int = 1000
    mounts: int = 300
    duration: float = 6.0  # seconds per read phase
    pull_rounds: int = 2
    wrk: bool = True
    wrk_duration: float = 6.0
    wrk_connections: int = 32
    wrk_threads: int = 1
    seed: int = 1

    @classmethod
    def quick(cls) -> Workload:
        return cls(
            blob_sizes=((1 * MiB, 16), (8 * MiB, 4)),
            manifests=150,
            mounts=60,
            duration=2.0,
            pull_rounds=1,
            wrk_duration=2.0,
        )

    def blobs(self, phase_offset: int) -> list[BlobSpec]:
        """The blobs of one push phase, sizes interleaved so big and small overlap."""
        per_size = [[size] * count for size, count in self.blob_sizes]
        order: list[int] = []
        for i in range(max((len(s) for s in per_size), default=0)):
            order.extend(s[i] for s in per_size if i < len(s))
        base = self.seed * 10_000_000 + phase_offset
        return [BlobSpec(seed=base + i, size=size) for i, size in enumerate(order)]

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["blob_sizes"] = [{"size_bytes": s, "count": c} for s, c in self.blob_sizes]
        d["bytes_per_push_phase"] = sum(s * c for s, c in self.blob_sizes)
        return d


@dataclass
class TargetRun:
    name: str
    url: str
    details: dict[str, Any]
    pids: dict[str, list[int]] = field(default_factory=dict)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    error: str = ""
    # --auth: the unauthenticated hareg measured beside this one (not in as_dict)
    companion: TargetRun | None = None

    def as_dict(self) -> dict[str, Any]:
        peak: dict[str, float] = {}
        peak_process: dict[str, float] = {}
        for summary in self.phases.values():
            for role, usage in summary.get("server", {}).items():
                peak[role] = max(peak.get(role, 0.0), usage["peak_rss_mb"])
                peak_process[role] = max(peak_process.get(role, 0.0), usage["max_process_peak_rss_mb"])
        out: dict[str, Any] = {
            "url": self.url,
            "details": self.details,
            "pids": self.pids,
            "elapsed_s": round(self.elapsed_s, 1),
            "phases": self.phases,
            "peak_rss_mb_by_role": peak,
            "max_process_peak_rss_mb_by_role": peak_process,
        }
        if self.error:
            out["error"] = self.error
        return out


def _server_summary(usage: dict[str, RoleUsage], ops: int) -> dict[str, Any]:
    cpu = sum(u.cpu_s for u in usage.values())
    return {
        "server": {role: u.as_dict() for role, u in usage.items()},
        "server_cpu_s": round(cpu, 3) if usage else None,
        "server_cpu_ms_per_op": round(cpu * 1000 / ops, 4) if usage and ops else None,
        "server_peak_rss_mb": round(sum(u.peak_rss_mb for u in usage.values()), 1) if usage else None,
    }


class _Runner:
    """One target's run: the phases in order, with shared state between them."""

    def __init__(
        self,
        target: RunningTarget,
        workload: Workload,
        progress: ProgressFactory,
        session: aiohttp.ClientSession,
        credentials: Credentials | None = None,
        companion: _Runner | None = None,
    ) -> None:
        self.target = target
        self.w = workload
        self.progress = progress
        self.session = session
        self.credentials = credentials
        self.companion = companion
        self.client = OCIClient(session, target.url, credentials=credentials)
        self.run = TargetRun(name=target.name, url=target.url, details=dict(target.details))
        self.pushed = workload.blobs(0)
        self.chunked = workload.blobs(1_000_000)
        self.manifest_digests: list[str] = []

    def _bar(self, phase: str, total: float, unit: str) -> Progress:
        return self.progress(f"{self.target.name:>14} {phase:<20}", total, unit)

    async def _measure(
        self,
        phase: str,
        op: Callable[[int], Any],
        *,
        concurrency: int,
        count: int | None = None,
        duration: float | None = None,
        progress_bytes: int = 0,
    ) -> PhaseResult:
        if count is not None:
            bar = self._bar(phase, progress_bytes or count, "B" if progress_bytes else "op")
        else:
            bar = self._bar(phase, duration or 0.0, "s")
        meter = ResourceMeter(self.target)
        meter.start()
        try:
            result = await run_phase(
                phase,
                op,
                concurrency=concurrency,
                count=count,
                duration=duration,
                progress=bar,
                progress_bytes=bool(progress_bytes),
            )
        finally:
            usage = meter.stop()
        summary = result.summary()
        summary.update(_server_summary(usage, result.ops))
        self.run.phases[phase] = summary
        return result

    @property
    def is_ceiling(self) -> bool:
        return self.target.details.get("kind") == "ceiling"

    async def setup(self) -> None:
        await self.client.ping()
        # Evidence that credentials were needed: the status of /v2/ without them.
        self.run.details["anonymous_v2_status"] = self.client.anonymous_ping_status
        # Hashed before any timed phase (and once per process): the client's
        # sha256 of what it pushes must not count against the first target.
        for blob in self.pushed + self.chunked:
            blob.digest()
        if self.is_ceiling:
            # What the other targets were pushed, put where the ceiling serves it from.
            blobs_dir = Path(self.target.details["blobs_dir"])
            for blob in self.pushed + self.chunked:
                await asyncio.to_thread(stage_blob, blobs_dir, blob)
            self.manifest_digests = [CEILING_MANIFEST_DIGEST]
        self.run.pids = self.target.pids()

    async def push(self) -> None:
        blobs = self.pushed

        async def op(i: int) -> int:
            await self.client.push_blob_post_put(REPO_PUSH, blobs[i])
            return blobs[i].size

        total = sum(b.size for b in blobs)
        await self._measure(
            "push", op, concurrency=self.w.concurrency, count=len(blobs), progress_bytes=total
        )

    async def push_chunked(self) -> None:
        blobs = self.chunked

        async def op(i: int) -> int:
            await self.client.push_blob_chunked(REPO_CHUNKED, blobs[i], self.w.chunk_size)
            return blobs[i].size

        total = sum(b.size for b in blobs)
        await self._measure(
            "push_chunked", op, concurrency=self.w.concurrency, count=len(blobs), progress_bytes=total
        )

    async def pull(self) -> None:
        plan: list[tuple[str, BlobSpec]] = []
        for _ in range(self.w.pull_rounds):
            for a, b in zip(self.pushed, self.chunked, strict=True):
                plan += [(REPO_PUSH, a), (REPO_CHUNKED, b)]

        async def op(i: int) -> int:
            repo, blob = plan[i]
            return await self.client.pull_blob(repo, blob.digest(), blob.size)

        total = sum(b.size for _, b in plan)
        await self._measure("pull", op, concurrency=self.w.concurrency, count=len(plan), progress_bytes=total)

    async def manifest_put(self) -> None:
        config = await self.client.push_small_blob(REPO_MANIFESTS, b'{"architecture":"amd64","os":"linux"}')
        layer_bytes = b"bench layer " * 100
        layer = await self.client.push_small_blob(REPO_MANIFESTS, layer_bytes)
        config_ref = (config, len(b'{"architecture":"amd64","os":"linux"}'))
        digests: list[str] = [""] * self.w.manifests

        async def op(i: int) -> int:
            body = image_manifest(config_ref, [(layer, len(layer_bytes))], annotation=str(i))
            digests[i] = await self.client.put_manifest(REPO_MANIFESTS, f"{TAG_PREFIX}{i:05d}", body)
            return 0

        await self._measure(
            "manifest_put", op, concurrency=self.w.request_concurrency, count=self.w.manifests
        )
        self.manifest_digests = [d for d in digests if d]

    def _tags(self) -> int:
        return max(len(self.manifest_digests), 1)

    async def manifest_get_tag(self) -> None:
        n = self._tags()

        async def op(i: int) -> int:
            return len((await self.client.get_manifest(REPO_MANIFESTS, f"{TAG_PREFIX}{i % n:05d}")).body)

        await self._measure(
            "manifest_get_tag", op, concurrency=self.w.request_concurrency, duration=self.w.duration
        )

    async def manifest_get_digest(self) -> None:
        digests = self.manifest_digests or ["sha256:" + "0" * 64]

        async def op(i: int) -> int:
            return len((await self.client.get_manifest(REPO_MANIFESTS, digests[i % len(digests)])).body)

        await self._measure(
            "manifest_get_digest", op, concurrency=self.w.request_concurrency, duration=self.w.duration
        )

    async def head_blob(self) -> None:
        blobs = self.pushed

        async def op(i: int) -> int:
            size = await self.client.head_blob(REPO_PUSH, blobs[i % len(blobs)].digest())
            if size is None:
                raise LookupError(f"HEAD {blobs[i % len(blobs)].digest()}: 404")
            return 0

        await self._measure("head_blob", op, concurrency=self.w.request_concurrency, duration=self.w.duration)

    async def tag_list(self) -> None:
        expected = len(self.manifest_digests)

        async def op(i: int) -> int:
            tags = await self.client.list_tags(REPO_MANIFESTS)
            if len(tags) < expected:
                raise AssertionError(f"tag list has {len(tags)} tags, expected {expected}")
            return 0

        await self._measure("tag_list", op, concurrency=self.w.request_concurrency, duration=self.w.duration)

    async def mount(self) -> None:
        blobs = self.pushed
        mounted = 0

        async def op(i: int) -> int:
            nonlocal mounted
            if await self.client.mount_blob(
                f"bench/mount-{i:05d}", REPO_PUSH, blobs[i % len(blobs)].digest()
            ):
                mounted += 1
            return 0

        await self._measure("mount", op, concurrency=self.w.request_concurrency, count=self.w.mounts)
        self.run.phases["mount"]["mounted"] = mounted

    async def wrk_manifest_get_tag(self) -> None:
        if not self.w.wrk or wrk_binary() is None:
            return
        headers: dict[str, str] = {}
        if self.credentials is not None:
            # One header for the whole wrk run: it must outlive the run.
            try:
                headers["Authorization"] = await self.credentials.header(
                    self.session, (pull_scope(REPO_MANIFESTS),), valid_for=self.w.wrk_duration + 10
                )
            except (TokenError, aiohttp.ClientError) as exc:
                self.run.phases["wrk_manifest_get_tag"] = {"error": str(exc)[:500]}
                return
        bar = self._bar("wrk_manifest_get_tag", self.w.wrk_duration, "s")
        meter = ResourceMeter(self.target)
        meter.start()
        try:
            result = await asyncio.to_thread(
                run_wrk,
                self.target.url,
                REPO_MANIFESTS,
                self._tags(),
                duration=self.w.wrk_duration,
                connections=self.w.wrk_connections,
                threads=self.w.wrk_threads,
                headers=headers,
            )
        except (RuntimeError, OSError) as exc:
            self.run.phases["wrk_manifest_get_tag"] = {"error": str(exc)[:500]}
            return
        finally:
            usage = meter.stop()
            bar.update(self.w.wrk_duration)
            bar.close()
        summary = result.summary()
        summary.update(_server_summary(usage, result.requests))
        self.run.phases["wrk_manifest_get_tag"] = summary

    async def all(self) -> TargetRun:
        start = time.perf_counter()
        await self.setup()
        if self.companion is not None:
            await self.companion.setup()
        for phase in CEILING_PHASES if self.is_ceiling else PHASES:
            await getattr(self, phase)()
            if self.companion is not None and phase in COMPANION_PHASES:
                await getattr(self.companion, phase)()
        self.run.elapsed_s = time.perf_counter() - start
        if isinstance(self.credentials, TokenCredentials):
            self.run.details["auth_token_fetches"] = self.credentials.fetches
        if self.companion is not None:
            self.run.companion = self.companion.run
        return self.run


def _session(workload: Workload) -> aiohttp.ClientSession:
    limit = max(workload.concurrency, workload.request_concurrency) + 4
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


def credentials_for(target: RunningTarget, users: BenchUsers | None) -> Credentials | None:
    """How a client logs in to ``target``: by the auth it was started with."""
    if users is None:
        return None
    scheme = target.details.get("auth")
    if scheme == "token":
        return TokenCredentials(users.username, users.password)
    if scheme == "basic":
        return BasicCredentials(users.username, users.password)
    raise TargetError(f"{target.name}: started without auth (details.auth {scheme!r})")


async def run_target(
    target: RunningTarget,
    workload: Workload,
    progress: ProgressFactory,
    *,
    credentials: Credentials | None = None,
    companion: RunningTarget | None = None,
) -> TargetRun:
    """Every phase on ``target``; with ``companion`` (an unauthenticated hareg),
    its ``COMPANION_PHASES`` too, each right after ``target``'s."""
    async with _session(workload) as session, _session(workload) as companion_session:
        beside = None
        if companion is not None:
            beside = _Runner(companion, workload, progress, companion_session)
        return await _Runner(target, workload, progress, session, credentials, beside).all()


# -- the figures and how they compare ---------------------------------------------


def figures(phases: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Every figure of one target, flat: ``push_mb_s``, ``manifest_get_tag_ops``,
    ``pull_p99_ms``, ``push_server_cpu_s`` and so on."""
    out: dict[str, float] = {}
    for phase, s in phases.items():
        if "ops_s" not in s:
            continue
        if phase in BLOB_PHASES:
            out[f"{phase}_mb_s"] = s["mb_s"]
        out[f"{phase}_ops"] = s["ops_s"]
        for key in ("p50_ms", "p99_ms", "server_cpu_s", "server_cpu_ms_per_op", "server_peak_rss_mb"):
            value = s.get(key)
            if isinstance(value, int | float):
                out[f"{phase}_{key}"] = value
    return out


def ratios(numerator: dict[str, float], denominator: dict[str, float]) -> dict[str, float | None]:
    """``numerator / denominator`` for every figure both have (None where undefined)."""
    out: dict[str, float | None] = {}
    for key, value in numerator.items():
        base = denominator.get(key)
        out[key] = round(value / base, 3) if base else None
    return out


def target_checks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's throughput targets, reported (met / missed), never asserted."""
    checks: list[dict[str, Any]] = []

    def ratio_check(
        target: str, label: str, key: str, minimum: float, table: dict[str, Any], versus: str = "distribution"
    ) -> None:
        value = table.get(key)
        checks.append(
            {
                "target": target,
                "check": f"{label} >= {minimum}x {versus}",
                "figure": key,
                "value": value,
                "met": None if value is None else value >= minimum,
            }
        )

    for name, table in doc.get("ratios_by_target", {}).items():
        ratio_check(name, "manifest GET by tag (Python client)", "manifest_get_tag_ops", 1.5, table)
        if "wrk_manifest_get_tag_ops" in table:
            ratio_check(name, "manifest GET by tag (wrk)", "wrk_manifest_get_tag_ops", 1.5, table)
        ratio_check(name, "blob pull MB/s", "pull_mb_s", 1.3, table)
        ratio_check(name, "blob push MB/s (monolithic)", "push_mb_s", 1.0, table)
        ratio_check(name, "blob push MB/s (chunked)", "push_chunked_mb_s", 1.0, table)
    for name, table in doc.get("ratios_cluster_by_target", {}).items():
        for label, key, minimum in CLUSTER_CHECKS:
            ratio_check(name, label, key, minimum, table, "distribution-cluster")
    raw_put = doc.get("storage_raw", {}).get("put_mb_s")
    for name, run in doc.get("targets", {}).items():
        push = run.get("phases", {}).get("push", {}).get("mb_s")
        if run.get("details", {}).get("kind") == "hareg-cluster" and raw_put:
            fraction = round(push / raw_put, 3) if isinstance(push, int | float) else None
            checks.append(
                {
                    "target": name,
                    "check": f"blob push MB/s >= {RAW_PUT_MIN_FRACTION} of the object store's own PUT",
                    "figure": "push_mb_s / storage_raw.put_mb_s",
                    "value": fraction,
                    "met": None if fraction is None else fraction >= RAW_PUT_MIN_FRACTION,
                }
            )
    for name, table in doc.get("ratios_ceiling_by_target", {}).items():
        for label, key in (
            ("manifest GET by tag (Python client)", "manifest_get_tag_ops"),
            ("manifest GET by tag (wrk)", "wrk_manifest_get_tag_ops"),
            ("manifest GET by digest", "manifest_get_digest_ops"),
            ("HEAD blob", "head_blob_ops"),
        ):
            if key in table:
                ratio_check(name, label, key, CEILING_MIN_RATIO, table, "the ceiling")
    for name, table in doc.get("auth_ratios", {}).items():
        for label, key in (
            ("(Python client)", "manifest_get_tag_ops"),
            ("(wrk)", "wrk_manifest_get_tag_ops"),
        ):
            if key in table:
                ratio_check(
                    name,
                    f"authenticated manifest GET by tag {label}",
                    key,
                    AUTH_MIN_RATIO,
                    table,
                    "unauthenticated",
                )
    for name, run in doc.get("targets", {}).items():
        role = {"hareg": "hareg", "hareg-cluster": "replica"}.get(run.get("details", {}).get("kind", ""))
        if role is None:
            continue
        rss = run.get("max_process_peak_rss_mb_by_role", {}).get(role)
        checks.append(
            {
                "target": name,
                "check": "replica peak RSS < 150 MB",
                "figure": f"max_process_peak_rss_mb_by_role.{role}",
                "value": rss,
                "met": None if rss is None else rss < 150,
            }
        )
    return checks


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }


@dataclass(frozen=True)
class Options:
    targets: tuple[TargetSpec, ...]
    workload: Workload
    quick: bool = False
    cluster_replicas: int = 2
    cluster_storage: str = "auto"
    start_timeout: float = 120.0
    base_dir: Path | None = None
    auth: bool = False  # both targets authenticate the same users (bench.users)
    bcrypt_cost: int = BCRYPT_COST
    token_expiry: float = 300.0  # hareg's auth.token.expiry, seconds (its default)


def run(options: Options, progress: ProgressFactory, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the workload on every target, one after the other; the JSON document."""
    doc: dict[str, Any] = {
        "benchmark": "throughput",
        "format": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": options.quick,
        "machine": machine(),
        "workload": options.workload.describe(),
        "wrk": wrk_binary() is not None and options.workload.wrk,
        "targets": {},
        "failed_targets": {},
    }
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        users = None
        if options.auth:
            users_dir = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="hareg-bench-users-", dir=options.base_dir)
                )
            )
            users = write_users(users_dir, bcrypt_cost=options.bcrypt_cost, token_expiry=options.token_expiry)
            doc["auth"] = users.describe()
            doc["unauthenticated_targets"] = {}
        for spec in options.targets:
            _run_one(spec, options, users, doc, progress, log)
    doc["elapsed_s"] = round(time.perf_counter() - t0, 1)
    add_ratios(doc)
    return doc


def _started(
    spec: TargetSpec, options: Options, users: BenchUsers | None
) -> contextlib.AbstractContextManager[RunningTarget]:
    return started(
        spec,
        base_dir=options.base_dir,
        timeout=options.start_timeout,
        cluster_replicas=options.cluster_replicas,
        cluster_storage=options.cluster_storage,
        users=users,
    )


def _run_one(
    spec: TargetSpec,
    options: Options,
    users: BenchUsers | None,
    doc: dict[str, Any],
    progress: ProgressFactory,
    log: Callable[[str], None],
) -> None:
    """Start ``spec`` (and, for an authenticated hareg, an unauthenticated one
    beside it), run the workload, and put the result in ``doc``."""
    log(f"bench: starting {spec.name}")
    try:
        with contextlib.ExitStack() as stack:
            target = stack.enter_context(_started(spec, options, users))
            log(f"bench: {spec.name} at {target.url} ({target.details})")
            companion = None
            if users is not None and spec.kind == "hareg":
                plain = TargetSpec(kind="hareg", name=spec.name + UNAUTHENTICATED_SUFFIX)
                companion = stack.enter_context(_started(plain, options, None))
                log(
                    f"bench: {plain.name} at {companion.url} (no auth, every phase beside the authenticated one)"
                )
            # Other work on the machine skews every figure: keep the evidence.
            target.details["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
            result = _run_loop(
                run_target(
                    target,
                    options.workload,
                    progress,
                    credentials=credentials_for(target, users),
                    companion=companion,
                )
            )
            if target.s3 is not None and "storage_raw" not in doc:
                doc["storage_raw"] = _storage_raw(target, options.workload, log)
        doc["targets"][spec.name] = result.as_dict()
        if result.companion is not None:
            doc["unauthenticated_targets"][spec.name] = result.companion.as_dict()
    except (TargetError, TokenError, RegistryHTTPError, OSError, aiohttp.ClientError) as exc:
        log(f"bench: {spec.name} failed: {exc}")
        doc["failed_targets"][spec.name] = str(exc)[-2000:]


def add_ratios(doc: dict[str, Any]) -> None:
    """``ratios`` (the first hareg target / distribution), ``ratios_by_target``,
    ``ratios_ceiling`` (the first hareg target / the ceiling, for the figures
    the ceiling has), ``ratios_ceiling_by_target`` and ``target_checks``."""
    targets: dict[str, Any] = doc["targets"]
    base = next((n for n, t in targets.items() if t["details"].get("kind") == "distribution"), None)
    by_target: dict[str, dict[str, float | None]] = {}
    if base is not None:
        base_figures = figures(targets[base]["phases"])
        for name, t in targets.items():
            if t["details"].get("kind") in HAREG_KINDS:
                by_target[name] = ratios(figures(t["phases"]), base_figures)
    doc["baseline"] = base
    doc["ratios_by_target"] = by_target
    first = next(iter(by_target), None)
    doc["ratios_target"] = first
    doc["ratios"] = by_target[first] if first is not None else {}
    ceiling = next((n for n, t in targets.items() if t["details"].get("kind") == "ceiling"), None)
    ceiling_by_target: dict[str, dict[str, float | None]] = {}
    if ceiling is not None:
        ceiling_figures = figures(targets[ceiling]["phases"])
        for name, t in targets.items():
            if t["details"].get("kind") in HAREG_KINDS:
                mine = figures(t["phases"])
                # Only the figures the ceiling has: it serves reads, nothing else.
                ceiling_by_target[name] = ratios(
                    {k: v for k, v in mine.items() if k in ceiling_figures}, ceiling_figures
                )
    doc["ceiling"] = ceiling
    doc["ratios_ceiling_by_target"] = ceiling_by_target
    _add_cluster_ratios(doc)
    doc["ratios_ceiling"] = ceiling_by_target.get(first, {}) if first is not None else {}
    auth_ratios: dict[str, dict[str, float | None]] = {}
    for name, plain in doc.get("unauthenticated_targets", {}).items():
        if name in targets:
            authenticated = figures({p: targets[name]["phases"].get(p, {}) for p in COMPANION_PHASES})
            auth_ratios[name] = ratios(authenticated, figures(plain["phases"]))
    if "auth" in doc:
        doc["auth_ratios"] = auth_ratios
    doc["target_checks"] = target_checks(doc)


def _add_cluster_ratios(doc: dict[str, Any]) -> None:
    """``ratios_cluster`` (the first ``hareg-cluster`` / ``distribution-cluster``,
    the keys of ``ratios``), ``ratios_cluster_by_target`` and
    ``cluster_replica_peak_rss_mb`` (the largest replica process of any hareg-cluster)."""
    targets: dict[str, Any] = doc["targets"]
    clusters = [n for n, t in targets.items() if t["details"].get("kind") == "hareg-cluster"]
    base = next((n for n, t in targets.items() if t["details"].get("kind") == "distribution-cluster"), None)
    by_target: dict[str, dict[str, float | None]] = {}
    if base is not None:
        base_figures = figures(targets[base]["phases"])
        by_target = {n: ratios(figures(targets[n]["phases"]), base_figures) for n in clusters}
    doc["cluster_baseline"] = base
    doc["ratios_cluster_by_target"] = by_target
    doc["ratios_cluster"] = by_target[clusters[0]] if by_target else {}
    peaks = [targets[n].get("max_process_peak_rss_mb_by_role", {}).get("replica") for n in clusters]
    known = [p for p in peaks if isinstance(p, int | float)]
    doc["cluster_replica_peak_rss_mb"] = max(known) if known else None


def _storage_raw(target: RunningTarget, workload: Workload, log: Callable[[str], None]) -> dict[str, Any]:
    """The push phase's blobs straight to ``target``'s object store (bench.storage_raw)."""
    assert target.s3 is not None
    log(f"bench: the object store of {target.name} on its own ({target.s3.url})")
    try:
        raw = _run_loop(storage_raw.measure(target.s3, workload.blobs(0), workload.concurrency))
    except Exception as exc:  # recorded; the registries' figures stand without it
        return {"target": target.name, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"target": target.name, **raw}


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hareg dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


def with_overrides(workload: Workload, **changes: Any) -> Workload:
    """``workload`` with the non-None ``changes`` applied."""
    return replace(workload, **{k: v for k, v in changes.items() if v is not None})


def iter_phase_rows(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(phase, target, summary) for every measured phase, in phase order."""
    for phase in PHASES:
        for name, t in doc["targets"].items():
            s = t["phases"].get(phase)
            if s is not None and "ops_s" in s:
                yield phase, name, s
