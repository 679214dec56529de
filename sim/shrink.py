"""Shrinking a failing seed's fault schedule to a minimal one, with Hypothesis.

A seed fixes the workload and the run's randomness; its faults are a list
(``Options.faults``).  Shrinking searches for a small sub-list that still
makes the run fail the same way (a violation of one of the invariants the
original run violated):

1. If the run fails with no fault at all, that is the answer.
2. Hypothesis (``hypothesis.find``) draws sub-lists — each fault is kept with
   probability 0.8, encoded so that *dropping* a fault is the simpler choice
   — until one fails, then shrinks it: its shrinker removes faults (and
   keeps trying smaller combinations) as long as the run still fails.
3. A final greedy pass drops any single remaining fault that is not needed,
   so the result is 1-minimal.

Every candidate is a full deterministic run, so results are cached and the
number of runs is bounded by ``max_examples`` (plus the greedy pass).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from sim.faults import Options
from sim.runner import RunResult, run


@dataclass(frozen=True, slots=True)
class Shrunk:
    options: Options  # the original options with the minimal schedule
    violation: str  # the invariant it still violates, and how
    runs: int


def _signature(result: RunResult) -> set[str]:
    kinds = {v.invariant for v in result.violations}
    if result.error:
        kinds.add("simulator")
    return kinds


def shrink(options: Options, *, max_examples: int = 60, log: Callable[[str], None] = print) -> Shrunk | None:
    base = run(options)
    if not base.failed:
        return None
    target = _signature(base)
    log(
        f"seed {options.seed} fails ({', '.join(sorted(target))}) with {len(options.faults)} faults; shrinking"
    )
    faults = options.faults
    cache: dict[tuple[int, ...], RunResult] = {tuple(range(len(faults))): base}
    budget = [max_examples]

    def attempt(kept: tuple[int, ...]) -> RunResult | None:
        if kept in cache:
            return cache[kept]
        if budget[0] <= 0:
            return None
        budget[0] -= 1
        result = run(options.with_faults(tuple(faults[i] for i in kept)))
        cache[kept] = result
        verdict = "fails" if result.failed and _signature(result) & target else "passes"
        log(f"  {len(kept):3d} faults: {verdict}")
        return result

    def fails(kept: tuple[int, ...]) -> bool:
        result = attempt(kept)
        return result is not None and result.failed and bool(_signature(result) & target)

    if fails(()):
        kept: tuple[int, ...] = ()
    else:
        n = len(faults)
        # 0 and 1 drop a fault, 2..9 keep it: random sub-lists keep most faults
        # (likely to fail again), and the shrinker's way down (towards 0) drops them.
        subsets = st.lists(st.integers(0, 9), min_size=n, max_size=n).map(
            lambda xs: tuple(i for i, x in enumerate(xs) if x >= 2)
        )
        try:
            kept = find(
                subsets,
                fails,
                settings=settings(
                    max_examples=max_examples,
                    database=None,
                    deadline=None,
                    phases=[Phase.generate, Phase.shrink],
                    suppress_health_check=list(HealthCheck),
                ),
            )
        except NoSuchExample:
            kept = tuple(range(n))
        # 1-minimal: no single fault can be dropped.
        budget[0] = max(budget[0], len(kept))
        changed = True
        while changed:
            changed = False
            for i in kept:
                smaller = tuple(k for k in kept if k != i)
                if fails(smaller):
                    kept, changed = smaller, True
                    break
    final = cache[kept]
    first = next((v for v in final.violations if v.invariant in target), None)
    message = f"{first.invariant}: {first.message}" if first else final.error
    return Shrunk(options.with_faults(tuple(faults[i] for i in kept)), message, len(cache))
