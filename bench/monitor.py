"""Watching a cluster during an availability run, every half second:

- the memory (resident set) of every process: replicas, etcd members, the
  object store, haproxy, the supervisor and the benchmark itself, by name (a
  replica restarted is the same name with another pid), so a leak shows;
- each replica's count of metadata reads it served stale from its cache
  (``hareg_cache_hits_total{freshness="stale"}``: while etcd is unreachable
  a replica answers from its cache, by design, docs/consistency.md).  The
  intervals in which a count grew are when a read may have been stale by
  design; the history check exempts reads overlapping them from
  linearizability (they must still return a digest that was written).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.faults import Cluster

MIN_GROWTH_SPAN_S = 60.0  # no growth rate from less than this
_STALE = re.compile(r'^hareg_cache_hits_total\{freshness="stale"\}\s+([0-9.e+]+)', re.M)


def rss_kib(pid: int) -> int | None:
    """The resident set of ``pid`` in KiB (None: gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def processes(cluster: Cluster) -> dict[str, int]:
    """name -> pid of every process of the run that is up now."""
    doc = cluster.doc()
    out: dict[str, int] = {"bench": os.getpid(), "supervisor": cluster.supervisor_pid}
    for r in doc.get("replicas", []):
        if r.get("pid"):
            out[r["name"]] = r["pid"]
    for m in doc.get("etcd", []):
        if m.get("pid"):
            out[f"etcd-{m['name']}"] = m["pid"]
    for name, key in (("storage", "storage"), ("haproxy", "lb")):
        pid = doc.get(key, {}).get("pid")
        if pid:
            out[name] = pid
    return out


@dataclass
class _StaleCount:
    pid: int
    at: float
    value: float


@dataclass
class Monitor:
    cluster: Cluster
    clock: Callable[[], float] = time.monotonic
    interval: float = 0.5
    memory: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)  # name -> (t, pid, KiB)
    stale: list[tuple[float, float, str]] = field(default_factory=list)  # (from, to, replica)
    _counts: dict[str, _StaleCount] = field(default_factory=dict)

    def sample_memory(self) -> None:
        now = self.clock()
        for name, pid in processes(self.cluster).items():
            kib = rss_kib(pid)
            if kib is not None:
                self.memory.setdefault(name, []).append((now, pid, kib))

    async def sample_stale(self, session: aiohttp.ClientSession) -> None:
        async def one(replica: dict[str, Any]) -> None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(
                    f"{replica['url']}/metrics", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    text = await r.text()
                m = _STALE.search(text)
                if m is None:
                    return
                now, value, pid = self.clock(), float(m.group(1)), int(replica["pid"])
                last = self._counts.get(replica["name"])
                grew = value > 0 if last is None or last.pid != pid else value > last.value
                if grew:
                    since = last.at if last is not None else now - self.interval
                    self.stale.append((since, now, replica["name"]))
                self._counts[replica["name"]] = _StaleCount(pid, now, value)

        await asyncio.gather(*(one(r) for r in self.cluster.replicas() if r.get("pid")))

    async def run(self, until: float) -> None:
        memory_at = 0.0
        async with aiohttp.ClientSession() as session:
            while self.clock() < until:
                if self.clock() - memory_at >= 2.0:
                    memory_at = self.clock()
                    self.sample_memory()
                await self.sample_stale(session)
                await asyncio.sleep(self.interval)  # the sampling period

    def exempt(self, start: float, end: float) -> bool:
        """Whether [start, end] overlaps an interval in which some replica served stale reads."""
        return any(s <= end and start <= e for s, e, _ in self.stale)

    def stale_report(self, t0: float) -> dict[str, Any]:
        return {"intervals": [[round(s - t0, 2), round(e - t0, 2), name] for s, e, name in self.stale],
                "seconds": round(_union(self.stale), 2)}  # fmt: skip

    def memory_report(self, t0: float) -> dict[str, Any]:
        """Per process: MiB at the start, the end, the peak, and the growth rate
        (least squares over the last pid's samples after the first fifth of the
        run; None when that pid lived for less than half the sampled time: a
        process restarted late is still loading its data, which says nothing
        about a leak)."""
        out: dict[str, Any] = {}
        everything = [t for samples in self.memory.values() for t, _, _ in samples]
        span = max(everything) - min(everything) if everything else 0.0
        for name, samples in sorted(self.memory.items()):
            last_pid = samples[-1][1]
            mine = [(t, kib) for t, pid, kib in samples if pid == last_pid]
            steady = mine[len(mine) // 5 :] if len(mine) >= 10 else mine
            out[name] = {
                "pids": sorted({pid for _, pid, _ in samples}),
                "samples": len(samples),
                "first_mib": round(samples[0][2] / 1024, 1),
                "last_mib": round(samples[-1][2] / 1024, 1),
                "peak_mib": round(max(k for _, _, k in samples) / 1024, 1),
                "growth_mib_per_10min": (
                    _slope(steady)
                    if mine and mine[-1][0] - mine[0][0] >= max(span / 2, MIN_GROWTH_SPAN_S)
                    else None
                ),
                "series": [[round(t - t0, 1), round(kib / 1024, 1)] for t, _, kib in samples],
            }
        return out


def _slope(points: list[tuple[float, int]]) -> float | None:
    """MiB per 10 minutes, least squares."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mk = sum(k for _, k in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    slope = sum((t - mt) * (k - mk) for t, k in points) / var  # KiB per second
    return round(slope * 600 / 1024, 2)


def _union(intervals: list[tuple[float, float, str]]) -> float:
    """Seconds covered by at least one interval."""
    total, end = 0.0, float("-inf")
    for s, e, _ in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total
