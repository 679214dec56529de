"""The availability benchmark: a mixed workload through haproxy while real
processes of a local cluster die, then a check of every acknowledged push on
every replica.

Workers (``concurrency`` of them, each with its own seeded RNG) loop until the
run's end, choosing per operation:

- ``push``: a new image in one of four repositories: the repository's shared
  base layer (HEAD first, pushed only if missing: layer sharing), a new layer
  (monolithic, or chunked so its PATCHes land on different replicas), a config
  and the manifest under a new tag.  Acknowledged once the manifest PUT
  answered 201;
- ``pull``: an acknowledged image by tag (it must resolve to the acknowledged
  digest: read-your-writes through the load balancer) and all its blobs,
  each checked against its digest;
- ``tag_move``: an acknowledged manifest PUT again under the tag ``latest``;
- ``tag_read``: a GET of ``latest`` in one of the repositories.

Faults come from :mod:`bench.faults` on a schedule (partitions included, when
this machine lets the run make them: :mod:`bench.partitions`).  Every operation is
recorded (start, end, kind, outcome), and the client history of tag writes and
reads (:mod:`bench.history`) is checked for per-tag linearizability after the
run, with the simulator's checker (:mod:`lincheck`).  :mod:`bench.monitor`
samples the memory of every process and the replicas' stale reads meanwhile.  After the run the faults are healed,
the cluster is awaited (bounded) until healthy, and then, on every replica
directly: each acknowledged push by digest and by tag with all its blobs
(``lost`` counts those that fail), and every manifest reachable by a tag with
every blob it references (``dangling`` counts those with a missing one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import history as hist
from bench.blobs import BlobSpec
from bench.client import DigestMismatch, OCIClient, RegistryHTTPError, image_manifest, sha256_digest
from bench.faults import (
    FAULT_ORDER,
    KILL_AND_PAUSE,
    PARTITION_KINDS,
    Cluster,
    Fault,
    heal,
    inject,
    minimum_duration,
    schedule,
)
from bench.history import Outcome, Recorder, outcome_of
from bench.monitor import Monitor
from bench.partitions import Partitions
from bench.targets import TargetSpec, started
from bench.throughput import machine
from bench.workload import Progress, percentile
from hareg.plants import ENV_PREFIX, ENV_VAR

REPOS = 4
OPS = ("push", "pull", "tag_move", "tag_read")
WEIGHTS = (0.3, 0.45, 0.15, 0.1)
PUSH_TARGET = 0.995  # pushes in every single-fault window (quorum loss aside)
PULL_TARGET = 0.999  # pulls outside quorum loss
LAYER_SIZES = (64 * 1024, 256 * 1024, 1024 * 1024)
BASE_SIZE = 512 * 1024
CHUNK = 128 * 1024

ProgressFactory = Callable[[str, float, str], Progress]


class StaleRead(Exception):
    """A tag resolved to another digest than the one acknowledged for it."""


@dataclass(frozen=True)
class Acked:
    repo: str
    tag: str
    digest: str
    body: bytes
    blobs: tuple[tuple[str, int], ...]  # (digest, size): config and layers
    at: float


@dataclass
class OpRecord:
    kind: str
    start: float
    end: float
    ok: bool
    error: str = ""

    def as_list(self) -> list[Any]:
        return [self.kind, round(self.start, 4), round(self.end, 4), self.ok, self.error]


@dataclass(frozen=True)
class AvailabilityOptions:
    duration: float = 180.0
    concurrency: int = 6
    replicas: int = 3
    storage: str = "auto"
    seed: int = 1
    start_timeout: float = 120.0
    heal_timeout: float = 90.0
    request_timeout: float = 10.0
    base_dir: Path | None = None
    quick: bool = False
    partitions: bool = True  # partition faults (need root, iptables and cgroup v2)
    plant: str = ""  # a planted bug switched on in the replicas (hareg/plants.py; tests only)
    faults: tuple[str, ...] = ()  # only these fault kinds (default: all that this machine allows)

    @classmethod
    def quick_options(cls) -> AvailabilityOptions:
        return cls(duration=45.0, concurrency=4, quick=True)


@dataclass
class _State:
    acked: list[Acked] = field(default_factory=list)
    records: list[OpRecord] = field(default_factory=list)
    next_image: int = 0
    bases: list[BlobSpec] = field(default_factory=list)
    history: Recorder = field(default_factory=lambda: Recorder(time.monotonic))


# What a failed operation raises: the cluster's answers and its outages, not bugs of this module.
OP_ERRORS = (aiohttp.ClientError, TimeoutError, RegistryHTTPError, DigestMismatch, StaleRead, OSError)


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, RegistryHTTPError):
        return f"HTTP {exc.status}"
    return type(exc).__name__


class _Workload:
    def __init__(self, client: OCIClient, state: _State, seed: int) -> None:
        self.client = client
        self.state = state
        self.seed = seed

    async def setup(self) -> None:
        """The shared base layers, one per repository (not measured)."""
        self.state.bases = [BlobSpec(seed=self.seed * 1_000_000 + r, size=BASE_SIZE) for r in range(REPOS)]
        for r, base in enumerate(self.state.bases):
            await self.client.push_blob_post_put(f"avail/app-{r}", base)

    async def push(self, rng: random.Random, t0: float, whole: hist.BenchOp | None = None) -> None:
        k = self.state.next_image
        self.state.next_image += 1
        r = k % REPOS
        repo = f"avail/app-{r}"
        if whole is not None:
            whole.repo, whole.tag = repo, f"v{k:05d}"
        base = self.state.bases[r]
        if await self.client.head_blob(repo, base.digest()) is None:
            await self.client.push_blob_post_put(repo, base)
        layer = BlobSpec(seed=self.seed * 1_000_000 + 1000 + k, size=rng.choice(LAYER_SIZES))
        if k % 3 == 0:
            await self.client.push_blob_chunked(repo, layer, CHUNK)
        else:
            await self.client.push_blob_post_put(repo, layer)
        config = json.dumps({"architecture": "amd64", "os": "linux", "image": k}).encode()
        config_digest = await self.client.push_small_blob(repo, config)
        body = image_manifest(
            (config_digest, len(config)), [(base.digest(), base.size), (layer.digest(), layer.size)]
        )
        if whole is not None:
            whole.digest = sha256_digest(body)
        tag = f"v{k:05d}"
        digest = await self._tag_write(repo, tag, body)
        if digest != sha256_digest(body):
            raise DigestMismatch(f"PUT {repo}:{tag}", sha256_digest(body), digest, len(body))
        blobs = ((config_digest, len(config)), (base.digest(), base.size), (layer.digest(), layer.size))
        self.state.acked.append(Acked(repo, tag, digest, body, blobs, time.monotonic() - t0))

    async def _tag_write(self, repo: str, tag: str, body: bytes) -> str:
        """A manifest PUT by tag, recorded in the history."""
        op = self.state.history.invoke(hist.TAG_WRITE, repo, tag=tag, digest=sha256_digest(body))
        try:
            digest = await self.client.put_manifest(repo, tag, body)
        except OP_ERRORS as exc:
            self.state.history.complete(op, outcome_of(exc), error=_error_name(exc))
            raise
        # Another digest than the body's: the registry did something, not known what.
        self.state.history.complete(op, Outcome.OK if digest == op.digest else Outcome.UNKNOWN, value=digest)
        return digest

    async def _tag_read(self, repo: str, tag: str) -> str | None:
        """A manifest GET by tag, recorded in the history; the digest (None: 404)."""
        op = self.state.history.invoke(hist.TAG_READ, repo, tag=tag)
        try:
            m = await self.client.get_manifest(repo, tag)
        except RegistryHTTPError as exc:
            if exc.status == 404:
                self.state.history.complete(op, Outcome.OK, value=None)
                return None
            self.state.history.complete(op, outcome_of(exc), error=_error_name(exc))
            raise
        except OP_ERRORS as exc:
            self.state.history.complete(op, outcome_of(exc), error=_error_name(exc))
            raise
        self.state.history.complete(op, Outcome.OK, value=m.digest)
        return m.digest

    async def pull(self, rng: random.Random, whole: hist.BenchOp | None = None) -> None:
        a = rng.choice(self.state.acked)
        if whole is not None:
            whole.repo, whole.tag, whole.digest = a.repo, a.tag, a.digest
        digest = await self._tag_read(a.repo, a.tag)
        if digest != a.digest:
            raise StaleRead(f"{a.repo}:{a.tag} is {digest}, acknowledged {a.digest}")
        for digest, size in a.blobs:
            await self.client.pull_blob(a.repo, digest, size)

    async def tag_move(self, rng: random.Random) -> None:
        a = rng.choice(self.state.acked)
        await self._tag_write(a.repo, "latest", a.body)

    async def tag_read(self, rng: random.Random) -> None:
        await self._tag_read(f"avail/app-{rng.randrange(REPOS)}", "latest")

    async def worker(self, index: int, t0: float, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while time.monotonic() < deadline:
            kind = rng.choices(OPS, WEIGHTS)[0] if self.state.acked else "push"
            start = time.monotonic()
            whole = (
                self.state.history.invoke(hist.PUSH if kind == "push" else hist.PULL, "")
                if kind in ("push", "pull")
                else None
            )
            try:
                if kind == "push":
                    await self.push(rng, t0, whole)
                elif kind == "pull":
                    await self.pull(rng, whole)
                elif kind == "tag_move":
                    await self.tag_move(rng)
                else:
                    await self.tag_read(rng)
            except OP_ERRORS as exc:
                if whole is not None:
                    self.state.history.complete(whole, outcome_of(exc), error=_error_name(exc))
                self.state.records.append(
                    OpRecord(
                        kind, start - t0, time.monotonic() - t0, False, f"{_error_name(exc)}: {exc}"[:300]
                    )
                )
                # A failing cluster answers fast: don't spin on it.
                await asyncio.sleep(0.05)
                continue
            if whole is not None:
                self.state.history.complete(whole, Outcome.OK)
            self.state.records.append(OpRecord(kind, start - t0, time.monotonic() - t0, True))


async def _run_faults(cluster: Cluster, faults: list[Fault], t0: float, deadline: float) -> None:
    for fault in faults:
        delay = t0 + fault.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the schedule, not a readiness wait
        if time.monotonic() >= deadline:
            fault.skipped = "the run ended first"
            continue
        await asyncio.to_thread(inject, cluster, fault)
        fault.injected_at = time.monotonic() - t0
        delay = t0 + fault.at + fault.hold - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.to_thread(heal, cluster, fault)
        fault.healed_at = time.monotonic() - t0


async def _ticker(bar: Progress, state: _State, t0: float, deadline: float) -> None:
    last = t0
    while True:
        now = time.monotonic()
        if now >= deadline:
            bar.update(deadline - last)
            return
        bar.update(now - last)
        last = now
        await asyncio.sleep(0.5)


async def _verify(
    replicas: list[dict[str, Any]], acked: list[Acked], progress: ProgressFactory, request_timeout: float
) -> dict[str, Any]:
    """Every acknowledged push on every replica; every tagged manifest's blobs."""
    lost: dict[str, list[str]] = {}
    dangling: list[str] = []
    sem = asyncio.Semaphore(16)
    pulled: set[tuple[str, str, str]] = set()
    present: set[tuple[object, str, str]] = set()
    bar = progress("verify acknowledged pushes", len(acked) * max(len(replicas), 1), "pull")
    client_timeout = aiohttp.ClientTimeout(total=request_timeout)

    async def check(client: OCIClient, name: str, a: Acked) -> None:
        error = ""
        for attempt in range(3):
            try:
                async with sem:
                    by_digest = await client.get_manifest(a.repo, a.digest)
                    by_tag = await client.get_manifest(a.repo, a.tag)
                    if by_digest.body != a.body or by_tag.digest != a.digest:
                        raise StaleRead(f"{a.repo}:{a.tag} -> {by_tag.digest}, expected {a.digest}")
                    for digest, size in a.blobs:
                        # A shared base layer is checked once per replica and repository.
                        if (name, a.repo, digest) not in pulled:
                            await client.pull_blob(a.repo, digest, size)
                            pulled.add((name, a.repo, digest))
                error = ""
                break
            except OP_ERRORS as exc:
                error = f"{name}: {_error_name(exc)}: {exc}"[:300]
                await asyncio.sleep(0.5 * (attempt + 1))
        if error:
            lost.setdefault(f"{a.repo}:{a.tag}@{a.digest}", []).append(error)
        bar.update(1)

    async def reachable(client: OCIClient, repo: str) -> None:
        for tag in await client.list_tags(repo):
            m = await client.get_manifest(repo, tag)
            doc = json.loads(m.body)
            refs = [doc.get("config", {}), *doc.get("layers", [])]
            for ref in refs:
                digest = ref.get("digest")
                if not digest or (client.base, repo, digest) in present:
                    continue
                if await client.head_blob(repo, digest) is not None:
                    present.add((client.base, repo, digest))
                else:
                    dangling.append(f"{repo}:{tag} ({m.digest}) references missing {digest}")
                    break

    connector = aiohttp.TCPConnector(limit=24)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        try:
            for replica in replicas:
                client = OCIClient(session, replica["url"])
                await asyncio.gather(*(check(client, replica["name"], a) for a in acked))
            dangling_errors: list[str] = []
            for replica in replicas:
                client = OCIClient(session, replica["url"])
                for r in range(REPOS):
                    try:
                        await reachable(client, f"avail/app-{r}")
                    except OP_ERRORS as exc:
                        dangling_errors.append(
                            f"{replica['name']} avail/app-{r}: {_error_name(exc)}: {exc}"[:300]
                        )
        finally:
            bar.close()
    return {
        "lost": len(lost),
        "lost_examples": dict(list(lost.items())[:20]),
        "dangling": len(set(dangling)),
        "dangling_examples": sorted(set(dangling))[:20],
        "dangling_check_errors": dangling_errors,
    }


def _window_of(faults: list[Fault], when: float) -> str:
    """The fault window an operation belongs to, by the time it ended (when its
    outcome was seen): from a fault's injection to the next fault's."""
    current = "baseline"
    for f in faults:
        if f.injected_at is not None and when >= f.injected_at:
            current = f.name
    return current


def _stats(records: list[OpRecord], window_start: float | None = None) -> dict[str, Any]:
    n = len(records)
    ok = [r for r in records if r.ok]
    lat = sorted(r.end - r.start for r in ok)
    out: dict[str, Any] = {
        "count": n,
        "ok": len(ok),
        "errors": n - len(ok),
        "success_rate": round(len(ok) / n, 5) if n else None,
        "p50_ms": round(percentile(lat, 50) * 1000, 2) if lat else None,
        "p99_ms": round(percentile(lat, 99) * 1000, 2) if lat else None,
    }
    failed = [r for r in records if not r.ok]
    if window_start is not None:
        # From the fault's injection to the end of the last failed operation of the window.
        out["time_to_recover_s"] = round(max(r.end for r in failed) - window_start, 2) if failed else 0.0
    kinds: dict[str, int] = {}
    for r in failed:
        key = r.error.split(":", 1)[0]
        kinds[key] = kinds.get(key, 0) + 1
    out["error_kinds"] = kinds
    return out


def summarize(records: list[OpRecord], faults: list[Fault], duration: float) -> dict[str, Any]:
    """Success rate and latency per operation, overall and per fault window;
    a one-second timeline for the plot."""
    overall = {kind: _stats([r for r in records if r.kind == kind]) for kind in OPS}
    windows: list[dict[str, Any]] = []
    names = ["baseline"] + [f.name for f in faults if f.injected_at is not None]
    starts = [0.0] + [f.injected_at for f in faults if f.injected_at is not None]
    for i, name in enumerate(names):
        fault = next((f for f in faults if f.name == name), None)
        start = starts[i]
        end = starts[i + 1] if i + 1 < len(starts) else duration
        in_window = [r for r in records if _window_of(faults, r.end) == name]
        ops: dict[str, Any] = {}
        for kind in OPS:
            stats = _stats([r for r in in_window if r.kind == kind], start if fault else None)
            # A stalled operation is not a failed one: the rate shows stalls that success rates hide.
            stats["ok_per_s"] = round(stats["ok"] / (end - start), 2) if end > start else None
            ops[kind] = stats
        windows.append({"window": name, "start_s": round(start, 2), "end_s": round(end, 2), "ops": ops})
    seconds = int(duration) + 1
    timeline: dict[str, list[int]] = {f"{k}_ok": [0] * seconds for k in OPS}
    timeline["errors"] = [0] * seconds
    for r in records:
        i = min(int(r.end), seconds - 1)
        if r.ok:
            timeline[f"{r.kind}_ok"][i] += 1
        else:
            timeline["errors"][i] += 1
    return {"success_rate": {k: overall[k]["success_rate"] for k in OPS}, "operations": overall,
            "windows": windows, "timeline": timeline}  # fmt: skip


def checks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's availability targets, reported (met / missed)."""
    out: list[dict[str, Any]] = [
        {"check": "lost == 0", "value": doc["lost"], "met": doc["lost"] == 0},
        {"check": "dangling == 0", "value": doc["dangling"], "met": doc["dangling"] == 0},
    ]
    faults: list[Fault] = doc["_faults"]
    kind_of = {f.name: f.kind for f in faults}
    pulls_outside = [r for r in doc["_records"] if r.kind == "pull"
                     and kind_of.get(_window_of(faults, r.end)) != "etcd_quorum_loss"]  # fmt: skip
    rate = _stats(pulls_outside)["success_rate"]
    out.append({"check": f"pulls >= {100 * PULL_TARGET:g}% outside quorum loss", "value": rate,
                "met": None if rate is None else rate >= PULL_TARGET})  # fmt: skip
    quorum = [w["ops"]["pull"]["success_rate"] for w in doc["windows"]
              if kind_of.get(w["window"]) == "etcd_quorum_loss"]  # fmt: skip
    value = min((q for q in quorum if q is not None), default=None)
    out.append({"check": "pulls >= 99% during quorum loss", "value": value,
                "met": None if value is None else value >= 0.99})  # fmt: skip
    for kind in FAULT_ORDER:
        if kind == "etcd_quorum_loss":
            continue
        rates = [w["ops"]["push"]["success_rate"] for w in doc["windows"] if kind_of.get(w["window"]) == kind]
        value = min((r for r in rates if r is not None), default=None)
        out.append({"check": f"pushes >= {100 * PUSH_TARGET:g}% in every {kind} window", "value": value,
                    "met": None if value is None else value >= PUSH_TARGET})  # fmt: skip
    lin = doc.get("linearizability")
    if lin is not None:
        out.append({"check": "tag history linearizable (violations == 0)", "value": lin["violations"],
                    "met": lin["violations"] == 0})  # fmt: skip
    return out


async def _run_workload(
    cluster: Cluster, options: AvailabilityOptions, faults: list[Fault], progress: ProgressFactory
) -> tuple[_State, Monitor, float]:
    state = _State()
    monitor = Monitor(cluster)
    timeout = aiohttp.ClientTimeout(total=options.request_timeout, sock_connect=3)
    connector = aiohttp.TCPConnector(limit=options.concurrency + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        workload = _Workload(OCIClient(session, cluster.registry_url), state, options.seed)
        await workload.setup()
        t0 = time.monotonic()
        deadline = t0 + options.duration
        bar = progress("availability workload", options.duration, "s")
        try:
            await asyncio.gather(
                _run_faults(cluster, faults, t0, deadline),
                _ticker(bar, state, t0, deadline),
                monitor.run(deadline),
                *(workload.worker(i, t0, deadline) for i in range(options.concurrency)),
            )
        finally:
            bar.close()
            state.history.close_pending()
            cluster.resume_everything()
    return state, monitor, t0


@contextlib.contextmanager
def _planted(plant: str) -> Iterator[None]:
    """The replicas started inside run with the planted bug (hareg/plants.py: tests only)."""
    if not plant:
        yield
        return
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ENV_PREFIX + plant
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous


def run(
    options: AvailabilityOptions, progress: ProgressFactory, log: Callable[[str], None] = print
) -> dict[str, Any]:
    partitions = Partitions() if options.partitions else None
    why_not = partitions.unavailable() if partitions is not None else "switched off (--no-partitions)"
    if why_not is not None:
        partitions = None
    kinds = KILL_AND_PAUSE if options.quick or partitions is None else FAULT_ORDER
    if options.faults:
        kinds = tuple(
            k for k in FAULT_ORDER if k in options.faults and (partitions or k not in PARTITION_KINDS)
        )
        if not kinds:
            raise ValueError(f"--faults {','.join(options.faults)}: none of them can run here ({why_not})")
    duration = max(options.duration, minimum_duration(kinds))
    if duration != options.duration:
        log(f"bench: --duration {options.duration} is too short for the fault schedule; using {duration:.0f}")
        options = AvailabilityOptions(**{**options.__dict__, "duration": duration})
    faults = schedule(options.duration, kinds)
    t_start = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "availability",
        "format": 2,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": options.quick,
        "machine": machine(),
        "load_before": os.getloadavg(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.__dict__.items()},
        "partitions": "on" if partitions is not None else f"off: {why_not}",
    }
    if why_not is not None and not options.quick:
        log(f"bench: partitions are off ({why_not}): the partition faults are left out")
    guard = partitions.guard(log) if partitions is not None else contextlib.nullcontext()
    with guard:
        if partitions is not None:
            removed = partitions.remove_orphans()
            if removed:
                log(f"bench: removed {removed} iptables rule(s) left by benchmark runs that are gone")
        log(
            "bench: starting the local cluster"
            + (f" with the planted bug {options.plant}" if options.plant else "")
        )
        with (
            _planted(options.plant),
            started(
                TargetSpec(kind="hareg-cluster", name="hareg-cluster"),
                base_dir=options.base_dir,
                timeout=options.start_timeout,
                cluster_replicas=options.replicas,
                cluster_storage=options.storage,
            ) as target,
        ):
            cluster = Cluster(
                Path(target.details["cluster_json"]), target.details["supervisor_pid"], target.url, partitions
            )
            doc["cluster"] = {"url": target.url, **{k: v for k, v in target.details.items() if k != "log"},
                              "topology": cluster.doc()}  # fmt: skip
            log(f"bench: cluster at {target.url} (storage {target.details['storage']}); {len(faults)} faults: "
                + ", ".join(f"{f.name}@{f.at:.0f}s" for f in faults[:12])
                + (" ..." if len(faults) > 12 else ""))  # fmt: skip
            state, monitor, t0 = _run_uvloop(_run_workload(cluster, options, faults, progress))
            if partitions is not None:  # every partition healed before the cluster is awaited
                partitions.remove(list(partitions.rules))
            log("bench: healing the cluster")
            cluster.resume_everything()
            cluster.sighup_supervisor()
            doc["heal_s"] = round(cluster.wait_healthy(options.heal_timeout), 2)
            replicas = cluster.replicas()
            log(f"bench: verifying {len(state.acked)} acknowledged pushes on {len(replicas)} replicas")
            verdict = _run_uvloop(_verify(replicas, state.acked, progress, options.request_timeout))
    log(f"bench: checking the linearizability of {len(state.history.ops)} recorded operations")
    lin_start = time.perf_counter()
    linearizability = hist.check(state.history, monitor.exempt)
    linearizability["check_s"] = round(time.perf_counter() - lin_start, 2)
    summary = summarize(state.records, faults, options.duration)
    doc.update(
        {
            "acknowledged_pushes": len(state.acked),
            "lost": verdict["lost"],
            "dangling": verdict["dangling"],
            "success_rate": summary["success_rate"],
            "operations": summary["operations"],
            "windows": summary["windows"],
            "faults": [f.as_dict() for f in faults],
            "verification": verdict,
            "linearizability": linearizability,
            "history": {"operations": len(state.history.ops), "outcomes": state.history.counts()},
            "stale_reads": monitor.stale_report(t0),
            "memory": monitor.memory_report(t0),
            "load_after": os.getloadavg(),
            "timeline": summary["timeline"],
            "requests_recorded": len(state.records),
            "records": [r.as_list() for r in state.records],
            "records_columns": ["kind", "start_s", "end_s", "ok", "error"],
            "_history": (state.history, t0),
        }
    )
    doc["checks"] = checks({**doc, "_records": state.records, "_faults": faults})
    doc["verdict"] = (
        "pass" if doc["lost"] == 0 and doc["dangling"] == 0 and linearizability["violations"] == 0 else "fail"
    )
    doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return doc


def _run_uvloop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hareg dependency
        return asyncio.run(coro)
    return uvloop.run(coro)
