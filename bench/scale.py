"""``python -m bench scale --manifests N``: what the registry's metadata costs as it grows.

One ``hareg serve`` (embedded etcd, filesystem blobs, 127.0.0.1) is grown to
N small images in steps: each image is one ~1 KB OCI manifest and its tag,
spread over ``--repositories`` repositories (each repository's config and
layer blobs are pushed once and shared by its images; the manifests differ
by an annotation).  After each step it records:

* the replica's RSS (the ``hareg serve`` process, not etcd) and its slope,
  RSS per manifest added since the step before;
* etcd's database size (``etcd_mvcc_db_total_size_in_bytes`` from etcd's own
  ``/metrics``, and the part in use) and bytes per image;
* the replica's cache: whole manifest records held and their bytes.

At N/20 and at N it times GET-by-tag (p50, p99) over the same number of
requests (``read_concurrency`` in flight, after a warm-up), twice: tags drawn from a fixed hot set (the last ``--hot`` images
pushed) and from every image pushed (the cold reads miss the replica's body
set and read etcd).  At N it starts a fresh replica on the same etcd and
times how long it takes to be ready (its cache listed), and its RSS then.

Everything it starts it stops; the loops are bounded by N and by timeouts.
The JSON and a Markdown summary are written (``--json``), the Markdown also
printed.  docs/scaling.md reports a run.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from bench.client import OCI_MANIFEST, OCIClient, image_manifest
from bench.targets import _start_ready, _terminate, free_port

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "scale.json"
READY_TIMEOUT = 600.0  # a fresh replica listing a large registry on a busy machine
HTTP_TIMEOUT = 120.0


@dataclass(frozen=True)
class ScaleOptions:
    manifests: int = 20_000
    repositories: int = 20
    concurrency: int = 16  # requests in flight while pushing
    read_concurrency: int = 4  # GET-by-tag requests in flight (few: latency, not queueing)
    reads: int = 2_000  # GET-by-tag requests per latency measurement (after a warm-up of a tenth)
    hot: int = 1_000  # the hot set: the last images pushed
    steps: int = 6  # sizes measured along the way (N/20 is always one)
    cache_bytes: int | None = None  # limits.manifestCacheBytes (None: hareg's default)
    fresh_replica: bool = True
    start_timeout: float = 120.0
    seed: int = 1


@dataclass
class Step:
    manifests: int
    push_s: float
    replica_rss_bytes: int
    replica_rss_kb_per_manifest: float | None  # slope since the previous step
    etcd_db_bytes: int
    etcd_db_in_use_bytes: int
    etcd_db_bytes_per_manifest: float | None  # (db size - db size when empty) / manifests
    cache_body_records: int
    cache_body_bytes: int
    latency: dict[str, dict[str, float]] = field(default_factory=dict)


def step_sizes(n: int, steps: int) -> list[int]:
    """N/20 first, then evenly up to N (distinct, increasing)."""
    sizes = {max(1, n // 20), n}
    sizes.update(max(1, n * k // max(1, steps - 1)) for k in range(1, steps - 1))
    return sorted(sizes)


def _metrics(url: str) -> dict[str, float]:
    """A Prometheus text page as {name{labels}: value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def _etcd_db(etcd_url: str) -> tuple[int, int]:
    m = _metrics(etcd_url)
    return int(m.get("etcd_mvcc_db_total_size_in_bytes", 0)), int(
        m.get("etcd_mvcc_db_total_size_in_use_in_bytes", 0)
    )


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Images:
    """The images pushed so far: (repository, tag)."""

    def __init__(self, options: ScaleOptions) -> None:
        self.options = options
        self.tags: list[tuple[str, str]] = []
        self.blobs: dict[str, tuple[tuple[str, int], list[tuple[str, int]]]] = {}

    def repo(self, i: int) -> str:
        return f"scale/r{i % self.options.repositories:02d}"

    def body(self, i: int) -> bytes:
        config, layers = self.blobs[self.repo(i)]
        # ~1 KB: a config, three layers and an annotation that makes each image distinct.
        return image_manifest(config, layers, f"image {i:08d} " + "x" * 300)


async def _run_limited(n: int, concurrency: int, one: Callable[[int], Any]) -> list[float]:
    """``one(i)`` for i in range(n), ``concurrency`` at a time; each call's seconds."""
    times: list[float] = [0.0] * n
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            await one(i)
            times[i] = time.perf_counter() - t0

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return times


async def _push_base(client: OCIClient, images: _Images) -> None:
    for r in range(images.options.repositories):
        repo = images.repo(r)
        config = json.dumps({"architecture": "amd64", "os": "linux", "repo": repo}).encode()
        layers = [f"layer {k} of {repo}".encode() * 8 for k in range(3)]
        cfg = (await client.push_small_blob(repo, config), len(config))
        lay = [(await client.push_small_blob(repo, data), len(data)) for data in layers]
        images.blobs[repo] = (cfg, lay)


async def _grow(client: OCIClient, images: _Images, upto: int) -> float:
    start = len(images.tags)
    t0 = time.perf_counter()

    async def push(k: int) -> None:
        i = start + k
        await client.put_manifest(images.repo(i), f"v{i}", images.body(i), OCI_MANIFEST)

    await _run_limited(upto - start, images.options.concurrency, push)
    images.tags.extend((images.repo(i), f"v{i}") for i in range(start, upto))
    return time.perf_counter() - t0


async def _latency(
    client: OCIClient, pool: list[tuple[str, str]], options: ScaleOptions, rng: random.Random
) -> dict[str, float]:
    warm_up = max(1, options.reads // 10)
    picks = [rng.choice(pool) for _ in range(warm_up + options.reads)]

    async def get(k: int) -> None:
        repo, tag = picks[k]
        await client.get_manifest(repo, tag)

    times = await _run_limited(len(picks), options.read_concurrency, get)
    ms = [t * 1000 for t in times[warm_up:]]
    return {
        "requests": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(_percentile(ms, 0.99), 3),
        "pool": len(pool),
    }


def _fresh_replica(workdir: Path, etcd_url: str, blobs: Path, options: ScaleOptions) -> dict[str, float]:
    """A second replica on the same etcd: seconds until its cache is listed, its RSS then."""
    config = workdir / "fresh.yaml"
    doc: dict[str, Any] = {
        "etcd": {"endpoints": [etcd_url]},
        "storage": {"filesystem": {"rootDirectory": str(blobs)}},
    }
    if options.cache_bytes is not None:
        doc["limits"] = {"manifestCacheBytes": options.cache_bytes}
    config.write_text(yaml.safe_dump(doc))
    t0 = time.perf_counter()
    args = ["serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(workdir / "fresh")]
    proc, url = _start_ready(
        [*args, "--config", str(config)], workdir / "fresh.log", READY_TIMEOUT, "fresh", 10
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while _metrics(url).get("hareg_cache_ready", 0) != 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fresh replica's cache was not ready within {READY_TIMEOUT:.0f}s")
            time.sleep(0.05)  # a readiness poll with a deadline
        ready = time.perf_counter() - t0
        entries = _metrics(url).get('hareg_cache_entries{kind="m"}', 0)
        return {"ready_s": round(ready, 3), "rss_bytes": _rss(proc.pid), "manifests_listed": entries}
    finally:
        _terminate(proc, 30)


async def _measure(options: ScaleOptions, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    data = workdir / "data"
    args = ["serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data)]
    if options.cache_bytes is not None:
        config = workdir / "hareg.yaml"
        config.write_text(yaml.safe_dump({"limits": {"manifestCacheBytes": options.cache_bytes}}))
        args += ["--config", str(config)]
    proc, url = _start_ready(args, workdir / "hareg.log", options.start_timeout, "hareg serve", 30)
    try:
        ports = json.loads((data / "etcd" / "ports.json").read_text())
        etcd_url = f"http://127.0.0.1:{ports['client']}"
        rng = random.Random(options.seed)
        images = _Images(options)
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=options.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            client = OCIClient(session, url)
            await client.ping()
            await _push_base(client, images)
            base_rss, (base_db, _) = _rss(proc.pid), _etcd_db(etcd_url)
            steps: list[Step] = []
            prev_n, prev_rss = 0, base_rss
            sizes = step_sizes(options.manifests, options.steps)
            for n in sizes:
                push_s = await _grow(client, images, n)
                rss = _rss(proc.pid)
                db, in_use = _etcd_db(etcd_url)
                m = _metrics(url)
                step = Step(
                    manifests=n,
                    push_s=round(push_s, 2),
                    replica_rss_bytes=rss,
                    replica_rss_kb_per_manifest=round((rss - prev_rss) / 1024 / (n - prev_n), 3),
                    etcd_db_bytes=db,
                    etcd_db_in_use_bytes=in_use,
                    etcd_db_bytes_per_manifest=round((db - base_db) / n, 1),
                    cache_body_records=int(m.get('hareg_cache_entries{kind="body"}', 0)),
                    cache_body_bytes=int(m.get("hareg_cache_body_bytes", 0)),
                )
                if n in (sizes[0], sizes[-1]):
                    hot = images.tags[-options.hot :]
                    step.latency = {
                        "hot": await _latency(client, hot, options, rng),
                        "all": await _latency(client, images.tags, options, rng),
                    }
                    m = _metrics(url)
                    step.latency["body_reads"] = {
                        "hit": m.get('hareg_cache_body_reads_total{result="hit"}', 0),
                        "miss": m.get('hareg_cache_body_reads_total{result="miss"}', 0),
                    }
                steps.append(step)
                log(
                    f"scale: {n} manifests, replica RSS {rss / 2**20:.1f} MiB "
                    f"({step.replica_rss_kb_per_manifest} KB/manifest since the last step), "
                    f"etcd db {db / 2**20:.1f} MiB ({step.etcd_db_bytes_per_manifest} B/image)"
                )
                prev_n, prev_rss = n, rss
        fresh = _fresh_replica(workdir, etcd_url, data / "blobs", options) if options.fresh_replica else None
    finally:
        _terminate(proc, 30)
    return _summary(options, base_rss, base_db, steps, fresh)


def _summary(
    options: ScaleOptions, base_rss: int, base_db: int, steps: list[Step], fresh: dict[str, float] | None
) -> dict[str, Any]:
    first, last = steps[0], steps[-1]
    # The replica's cost per additional manifest: the slope of its RSS from
    # the first step at which the body set had stopped growing (it is bounded,
    # limits.manifestCacheBytes) to N; and, for comparison, from N/20 to N.
    full = next(s for s in steps if s.cache_body_bytes >= last.cache_body_bytes)
    if full is last:
        full = first
    span = last.manifests - full.manifests
    slope = (last.replica_rss_bytes - full.replica_rss_bytes) / 1024 / span if span else None
    whole = last.manifests - first.manifests
    slope_all = (last.replica_rss_bytes - first.replica_rss_bytes) / 1024 / whole if whole else None
    growth = {
        kind: round(last.latency[kind]["p99_ms"] / first.latency[kind]["p99_ms"], 2)
        for kind in ("hot", "all")
        if first.latency.get(kind) and last.latency.get(kind) and first is not last
    }
    per_image = last.etcd_db_bytes_per_manifest or 0.0
    return {
        "benchmark": "scale",
        "options": asdict(options),
        "load": _load(),
        "baseline": {"replica_rss_bytes": base_rss, "etcd_db_bytes": base_db},
        "steps": [asdict(s) for s in steps],
        "replica_rss_kb_per_manifest": None if slope is None else round(slope, 3),
        "replica_rss_kb_per_manifest_from": full.manifests,
        "replica_rss_kb_per_manifest_with_body_set": None if slope_all is None else round(slope_all, 3),
        "etcd_db_bytes_per_manifest": per_image,
        "get_tag_p99_growth": growth,
        "fresh_replica": fresh,
        # The fresh replica's RSS over the first replica's before any image, per manifest listed.
        "fresh_replica_rss_kb_per_manifest": None
        if not fresh
        else round((fresh["rss_bytes"] - base_rss) / 1024 / last.manifests, 3),
        "capacity_extrapolated": {
            "manifests_per_8gib_etcd": int(8 * 2**30 / per_image) if per_image > 0 else None,
            "replica_rss_mb_at_1m_manifests": None
            if slope is None
            else round((last.replica_rss_bytes + slope * 1024 * (1_000_000 - last.manifests)) / 2**20),
        },
    }


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return ""


def markdown(doc: dict[str, Any]) -> str:
    o = doc["options"]
    lines = [
        f"# bench scale: {o['manifests']} images in {o['repositories']} repositories",
        "",
        f"Load average at the end: {doc['load']}. Cache bound: "
        f"{o['cache_bytes'] if o['cache_bytes'] is not None else 'default'} bytes. "
        f"Baseline (before the first image): replica RSS {doc['baseline']['replica_rss_bytes'] / 2**20:.1f} MiB, "
        f"etcd db {doc['baseline']['etcd_db_bytes'] / 2**20:.1f} MiB.",
        "",
        "| manifests | replica RSS MiB | KB/manifest (step) | etcd db MiB | in use MiB | etcd B/image "
        "| body set (records, MiB) | push s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in doc["steps"]:
        lines.append(
            f"| {s['manifests']} | {s['replica_rss_bytes'] / 2**20:.1f} | {s['replica_rss_kb_per_manifest']} "
            f"| {s['etcd_db_bytes'] / 2**20:.1f} | {s['etcd_db_in_use_bytes'] / 2**20:.1f} "
            f"| {s['etcd_db_bytes_per_manifest']} | {s['cache_body_records']}, "
            f"{s['cache_body_bytes'] / 2**20:.1f} | {s['push_s']} |"
        )
    lines += [
        "",
        "| GET by tag at | tags from | requests | p50 ms | p99 ms | body reads hit/miss (cumulative) |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for s in doc["steps"]:
        reads = s["latency"].get("body_reads")
        for kind in ("hot", "all"):
            lat = s["latency"].get(kind)
            if lat:
                pool = f"the last {lat['pool']}" if kind == "hot" else f"all {lat['pool']}"
                hits = f"{reads['hit']:.0f}/{reads['miss']:.0f}" if reads else ""
                lines.append(
                    f"| {s['manifests']} | {pool} | {lat['requests']:.0f} | {lat['p50_ms']} | {lat['p99_ms']} "
                    f"| {hits} |"
                )
    cap = doc["capacity_extrapolated"]
    lines += [
        "",
        f"* replica RSS per additional manifest (slope from {doc['replica_rss_kb_per_manifest_from']}, the body "
        f"set full, to N): {doc['replica_rss_kb_per_manifest']} KB; from N/20, the body set filling: "
        f"{doc['replica_rss_kb_per_manifest_with_body_set']} KB",
        f"* etcd bytes per image at N: {doc['etcd_db_bytes_per_manifest']}",
        f"* GET-by-tag p99 growth, N/20 to N: {doc['get_tag_p99_growth']}",
    ]
    if doc["fresh_replica"]:
        f = doc["fresh_replica"]
        lines.append(
            f"* a fresh replica at N: ready (cache listed) in {f['ready_s']} s, RSS {f['rss_bytes'] / 2**20:.1f} MiB "
            f"({doc['fresh_replica_rss_kb_per_manifest']} KB per manifest over the baseline)"
        )
    lines.append(
        f"* extrapolated (linear, not measured): {cap['manifests_per_8gib_etcd']} manifests per 8 GiB etcd; "
        f"replica RSS {cap['replica_rss_mb_at_1m_manifests']} MB at one million manifests"
    )
    return "\n".join(lines) + "\n"


def run(options: ScaleOptions, workdir: Path, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_measure(options, workdir, log))


def write(doc: dict[str, Any], path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    md = path.with_suffix(".md")
    md.write_text(markdown(doc))
    return [path, md]


def main_scale(options: ScaleOptions, json_path: Path, workdir: Path) -> int:
    doc = run(options, workdir, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    written = write(doc, json_path)
    print(markdown(doc))
    print("written: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0
