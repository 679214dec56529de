"""Running one benchmark phase: many async operations at a fixed concurrency,
bounded by a count or a duration, with a latency per operation.

An operation is ``op(i) -> bytes moved``; a failed one counts as an error (the
first message is kept) and is not timed.  A phase stops early once it has seen
``max_errors`` errors, so a broken target cannot stretch a run.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

Op = Callable[[int], Awaitable[int]]
MB = 1_000_000


class Progress(Protocol):
    """What a phase reports as it goes (a tqdm bar fits)."""

    def update(self, n: float = 1) -> bool | None: ...

    def close(self) -> None: ...


class NoProgress:
    def update(self, n: float = 1) -> bool | None:
        return None

    def close(self) -> None:
        return None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of an ascending list; nan if empty."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def client_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class PhaseResult:
    name: str
    ops: int = 0
    errors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""
    error_kinds: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ops_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_s(self) -> float:
        return self.bytes / MB / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        out: dict[str, Any] = {
            "ops": self.ops,
            "errors": self.errors,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "ops_s": round(self.ops_s, 1),
            "mb_s": round(self.mb_s, 1),
            "p50_ms": round(percentile(lat, 50) * 1000, 3) if lat else None,
            "p99_ms": round(percentile(lat, 99) * 1000, 3) if lat else None,
            "client_cpu_s": round(self.client_cpu_s, 3),
        }
        if self.first_error:
            out["first_error"] = self.first_error[:500]
            out["error_kinds"] = dict(self.error_kinds)
        out.update(self.extra)
        return out


async def run_phase(
    name: str,
    op: Op,
    *,
    concurrency: int,
    count: int | None = None,
    duration: float | None = None,
    progress: Progress | None = None,
    progress_bytes: bool = False,
    max_errors: int = 20,
) -> PhaseResult:
    """Run ``op(0)``, ``op(1)``, ... on ``concurrency`` workers until ``count``
    operations were started or ``duration`` seconds passed (at least one bound)."""
    if count is None and duration is None:
        raise ValueError("a phase needs a count or a duration")
    bar = progress or NoProgress()
    result = PhaseResult(name=name)
    next_index = 0
    stop = False
    start = time.perf_counter()
    deadline = start + duration if duration is not None else math.inf
    last_tick = start

    async def worker() -> None:
        nonlocal next_index, stop, last_tick
        while not stop:
            now = time.perf_counter()
            if (count is not None and next_index >= count) or now >= deadline:
                return
            i = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                moved = await op(i)
            except Exception as exc:  # every failure is counted, none ends the run by itself
                result.errors += 1
                kind = type(exc).__name__
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                if not result.first_error:
                    result.first_error = f"{type(exc).__name__}: {exc}"
                if result.errors >= max_errors:
                    stop = True
                continue
            t1 = time.perf_counter()
            result.latencies.append(t1 - t0)
            result.ops += 1
            result.bytes += moved
            if duration is not None and count is None:
                bar.update(min(t1, deadline) - last_tick)
                last_tick = min(t1, deadline)
            else:
                bar.update(moved if progress_bytes else 1)

    cpu0 = client_cpu_seconds()
    try:
        await asyncio.gather(*(worker() for _ in range(max(concurrency, 1))))
    finally:
        result.seconds = time.perf_counter() - start
        result.client_cpu_s = client_cpu_seconds() - cpu0
        bar.close()
    return result
