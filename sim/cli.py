"""``python -m sim``: run seeds, replay one, list and hunt planted bugs, shrink a failure.

    python -m sim run --seeds 100 [--start 1] [--duration 60] [--faults crash,pause,...]
                      [--plant NAME] [--no-hostile] [--no-authz] [--check-determinism] [--json FILE] [--quiet] [--jobs N]
    python -m sim replay --seed S [--trace FILE] [--plant NAME] [--faults ...]
    python -m sim plants
    python -m sim hunt --plant NAME [--max-seeds 1000] [--start 1]
    python -m sim shrink --seed S [--plant NAME] [--budget 60]

Exit status: 0 when every seed passed (``hunt``: when the plant was caught),
1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from hareg.plants import DESCRIPTIONS
from sim import faults as faults_mod
from sim import hostile as hostile_mod
from sim.checkers import INVARIANTS
from sim.runner import RunResult, run

DEFAULT_DURATION = 60.0


def _fault_list(text: str | None) -> tuple[str, ...]:
    if text is None or text == "all":
        return tuple(faults_mod.FAULT_KINDS)
    if text in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in faults_mod.FAULT_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault kind(s) {unknown}; known: {', '.join(faults_mod.FAULT_KINDS)}"
        )
    return kinds


def _plants(names: Sequence[str] | None) -> frozenset[str]:
    chosen = frozenset(names or ())
    unknown = sorted(chosen - DESCRIPTIONS.keys())
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown plant(s) {unknown}; see `python -m sim plants`")
    return chosen


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes >= 1, got {text!r}")
    return n


class Summary:
    """Aggregates results of many seeds."""

    def __init__(self) -> None:
        self.results: list[RunResult] = []
        self.cpu = 0.0
        self.nondeterministic: list[int] = []

    def add(self, result: RunResult) -> None:
        self.results.append(result)

    def failing(self) -> list[RunResult]:
        return [r for r in self.results if r.failed]

    def render(self, out: TextIO, wall: float) -> None:
        results = self.results
        sim_time = sum(r.sim_time for r in results)
        ops: dict[str, int] = {}
        faults: dict[str, int] = {}
        behaviours: dict[str, int] = {}
        for r in results:
            for k, v in r.ops.items():
                ops[k] = ops.get(k, 0) + v
            for k, v in r.faults.items():
                faults[k] = faults.get(k, 0) + v
            for k, v in r.hostile.items():
                behaviours[k] = behaviours.get(k, 0) + v
        seeds = [r.options.seed for r in results]
        total_ops = sum(ops.values())
        availability = sum(r.availability for r in results) / len(results) if results else 1.0
        print("", file=out)
        print(
            f"seeds:          {len(results)} ({min(seeds)}..{max(seeds)})" if seeds else "seeds: 0", file=out
        )
        print(f"simulated time: {sim_time:,.1f} s", file=out)
        print(f"wall time:      {wall:,.1f} s (cpu {self.cpu:,.1f} s)", file=out)
        if wall > 0 and self.cpu > 0:
            print(
                f"speedup:        {sim_time / wall:,.0f}x real time (wall), {sim_time / self.cpu:,.0f}x per core (cpu)",
                file=out,
            )
        outcome = ", ".join(f"{k} {v:,}" for k, v in sorted(ops.items()))
        print(f"operations:     {total_ops:,} ({outcome})", file=out)
        print(
            f"availability:   {availability:.1%} of client operations answered with success (mean per seed)",
            file=out,
        )
        print(
            "faults:         " + (", ".join(f"{k} {v}" for k, v in sorted(faults.items())) or "none"),
            file=out,
        )
        print(
            "hostile:        " + (", ".join(f"{k} {v}" for k, v in sorted(behaviours.items())) or "none"),
            file=out,
        )
        failing = self.failing()
        if not failing and not self.nondeterministic:
            print("violations:     none", file=out)
            return
        print("violations:", file=out)
        per_inv: dict[str, list[int]] = {}
        for r in failing:
            kinds = {v.invariant for v in r.violations} or {"simulator"}
            for k in kinds:
                per_inv.setdefault(k, []).append(r.options.seed)
        for inv in [*INVARIANTS, "simulator"]:
            if inv in per_inv:
                seeds_text = ", ".join(str(s) for s in per_inv[inv][:20])
                more = f" (+{len(per_inv[inv]) - 20} more)" if len(per_inv[inv]) > 20 else ""
                label = f"invariant {inv}" if inv.isdigit() else inv
                print(f"  {label:<18} {len(per_inv[inv])} seed(s): {seeds_text}{more}", file=out)
        if self.nondeterministic:
            print(
                f"  nondeterminism     {len(self.nondeterministic)} seed(s): {self.nondeterministic[:20]}",
                file=out,
            )


def _print_result(result: RunResult, out: TextIO, *, verbose: bool) -> None:
    status = "FAIL" if result.failed else "ok"
    print(result.options.describe(), file=out)
    line = (
        f"    -> {status}: {result.sim_time:.1f}s simulated in {result.wall_time:.2f}s, "
        f"{sum(result.ops.values())} ops {result.ops}, availability {result.availability:.1%}, "
        f"trace {result.trace_hash[:16]}"
    )
    print(line, file=out)
    if result.error:
        print(f"    !! simulator error: {result.error}", file=out)
    for v in result.violations[: 10 if verbose else 3]:
        print(f"    !! invariant {v.invariant} at t={v.time:.3f}s: {v.message}", file=out)
    if len(result.violations) > (10 if verbose else 3):
        print(f"    !! ... {len(result.violations)} violations in all", file=out)


def _one_seed(job: tuple[faults_mod.Options, bool]) -> tuple[RunResult, float, bool]:
    """Run one seed (twice with the determinism check): (result, cpu seconds, deterministic)."""
    options, determinism = job
    cpu0 = time.process_time()
    result = run(options)
    same = True
    if determinism:
        again = run(options)
        if again.trace_hash != result.trace_hash:
            same = False
            result.error = (
                result.error
                or f"nondeterministic: trace {result.trace_hash[:16]} then {again.trace_hash[:16]}"
            )
    return result, time.process_time() - cpu0, same


def _freeze_heap() -> None:
    """Move what exists now (modules, the interpreter's own objects) out of the
    collector's sight: the collection after each run then scans only that run's
    objects (it was a tenth of a short run's time)."""
    gc.collect()
    gc.freeze()


def _run_many(
    seeds: Iterable[int],
    *,
    duration: float,
    allowed: tuple[str, ...],
    plants: frozenset[str],
    hostile: bool = True,
    authz: bool = True,
    upstream: bool = True,
    determinism: bool,
    quiet: bool,
    out: TextIO,
    jobs: int = 1,
) -> Summary:
    summary = Summary()
    work = (
        (
            faults_mod.choose(
                seed,
                duration,
                allowed=allowed,
                plants=plants,
                hostile=hostile,
                authz=authz,
                upstream=upstream,
            ),
            determinism,
        )
        for seed in seeds
    )

    def record(result: RunResult, cpu: float, same: bool) -> None:
        summary.cpu += cpu
        if not same:
            summary.nondeterministic.append(result.options.seed)
        summary.add(result)
        if not quiet or result.failed:
            _print_result(result, out, verbose=False)
        out.flush()

    if jobs > 1:
        # Seeds are independent: run them in forked workers (results come back in seed order).
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_freeze_heap) as pool:
            for outcome in pool.imap(_one_seed, work, chunksize=4):
                record(*outcome)
        return summary
    _freeze_heap()
    try:
        for job in work:
            record(*_one_seed(job))
    finally:
        gc.unfreeze()  # the caller's objects are the collector's business again
    return summary


def cmd_run(args: argparse.Namespace) -> int:
    out = sys.stdout
    started = time.perf_counter()
    summary = _run_many(
        range(args.start, args.start + args.seeds),
        duration=args.duration,
        allowed=args.faults,
        plants=args.plant,
        hostile=args.hostile,
        authz=args.authz,
        upstream=args.upstream,
        determinism=args.check_determinism,
        quiet=args.quiet,
        out=out,
        jobs=args.jobs,
    )
    wall = time.perf_counter() - started
    if args.check_determinism:
        wall /= 2  # every seed ran twice
        summary.cpu /= 2
        n = len(summary.results)
        print(
            f"\ndeterminism:    {n - len(summary.nondeterministic)}/{n} seeds replayed to the same trace hash",
            file=out,
        )
    summary.render(out, wall)
    if args.json:
        doc: dict[str, Any] = {
            "seeds": [r.to_json() for r in summary.results],
            "wall_time": wall,
            "cpu_time": summary.cpu,
            "nondeterministic": summary.nondeterministic,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 1 if summary.failing() else 0


def cmd_replay(args: argparse.Namespace) -> int:
    if args.schedule:
        options = faults_mod.Options.from_json(json.loads(Path(args.schedule).read_text()))
    elif args.seed is None:
        print("replay needs --seed or --schedule", file=sys.stderr)
        return 2
    else:
        options = faults_mod.choose(
            args.seed,
            args.duration,
            allowed=args.faults,
            plants=args.plant,
            hostile=args.hostile,
            authz=args.authz,
            upstream=args.upstream,
        )
    result = run(options, keep_trace=True)
    _print_result(result, sys.stdout, verbose=True)
    if args.trace:
        Path(args.trace).write_text("".join(line + "\n" for line in result.trace_lines))
        print(
            f"    trace: {len(result.trace_lines)} lines written to {args.trace} (sha256 {result.trace_hash})"
        )
    return 1 if result.failed else 0


def cmd_plants(args: argparse.Namespace) -> int:
    for name, text in DESCRIPTIONS.items():
        caught_by = ", ".join(sorted(PLANT_INVARIANTS.get(name, ())))
        print(f"{name:<24} {text}; caught by: {caught_by}")
    return 0


# What each planted bug breaks: a hunt counts a plant as caught only by these,
# and only if the same seed without the plant does not violate them too (so a
# bug of the registry itself is not taken for the plant).
PLANT_INVARIANTS: dict[str, frozenset[str]] = {
    "tag-no-compare": frozenset({"5"}),
    "ambiguous-ack": frozenset({"7", "1", "4", "linearizability"}),
    "naive-resend": frozenset({"7", "linearizability"}),
    "upload-no-digest": frozenset({"3"}),
    "cache-keeps-deleted-tag": frozenset({"4", "linearizability"}),
    "cache-keeps-moved-tag": frozenset({"linearizability"}),
    "gc-no-grace": frozenset({"6", "2"}),
    "reference-index-skip": frozenset({"2"}),
    "commit-unverified-bytes": frozenset({"3", "hostile"}),
    "access-no-barrier": frozenset({"8"}),
    "mirror-skip-verify": frozenset({"mirror", "3"}),
}


def plant_caught(result: RunResult, allowed: tuple[str, ...]) -> list[str]:
    """The invariants of the plant(s) the planted run violates and the same seed
    without the plant does not."""
    expected: set[str] = set()
    for plant in result.options.plants:
        expected |= PLANT_INVARIANTS.get(plant, frozenset())
    planted = {v.invariant for v in result.violations} & expected
    if not planted:
        return []
    options = result.options
    baseline = run(
        faults_mod.choose(
            options.seed,
            options.duration,
            allowed=allowed,
            hostile=options.hostile,
            authz=options.authz,
            upstream=options.upstream,
        )
    )
    return sorted(planted - {v.invariant for v in baseline.violations})


def cmd_hunt(args: argparse.Namespace) -> int:
    if len(args.plant) != 1:
        print("hunt needs exactly one --plant", file=sys.stderr)
        return 2
    (plant,) = tuple(args.plant)
    started = time.perf_counter()
    for seed in range(args.start, args.start + args.max_seeds):
        options = faults_mod.choose(
            seed,
            args.duration,
            allowed=args.faults,
            plants=args.plant,
            hostile=args.hostile,
            authz=args.authz,
            upstream=args.upstream,
        )
        result = run(options)
        new = plant_caught(result, args.faults)
        if new:
            first = next(v for v in result.violations if v.invariant in new)
            print(
                f"caught {plant} at seed {seed} ({seed - args.start + 1} seed(s), "
                f"{time.perf_counter() - started:.1f}s): invariant {first.invariant}: {first.message}"
            )
            print(seed)
            return 0
        if not args.quiet:
            note = " (fails without the plant too)" if result.violations else ""
            print(f"seed {seed}: not caught{note}", flush=True)
    print(f"not caught in {args.max_seeds} seeds from {args.start}")
    return 1


def cmd_shrink(args: argparse.Namespace) -> int:
    from sim.shrink import shrink

    options = faults_mod.choose(
        args.seed,
        args.duration,
        allowed=args.faults,
        plants=args.plant,
        hostile=args.hostile,
        authz=args.authz,
        upstream=args.upstream,
    )
    outcome = shrink(options, max_examples=args.budget, log=print)
    if outcome is None:
        print(f"seed {args.seed} does not fail: nothing to shrink")
        return 1
    print(
        f"\nminimal failing schedule for seed {args.seed} ({len(outcome.options.faults)} of {len(options.faults)} faults, "
        f"{outcome.options.duration:g}s):"
    )
    print(outcome.options.describe())
    print(f"fails with: invariant {outcome.violation}")
    if args.output:
        Path(args.output).write_text(json.dumps(outcome.options.to_json(), indent=1))
        print(f"schedule written to {args.output}; replay it: python -m sim replay --schedule {args.output}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim", description="hareg's deterministic fault-injection simulator"
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--duration", type=float, default=DEFAULT_DURATION, help="simulated seconds of workload"
        )
        sp.add_argument(
            "--faults",
            type=_fault_list,
            default=tuple(faults_mod.FAULT_KINDS),
            help="comma-separated fault kinds to allow ('all', 'none'); kinds: "
            + ", ".join(faults_mod.FAULT_KINDS),
        )
        sp.add_argument("--plant", action="append", type=str, help="switch on a planted bug (repeatable)")
        sp.add_argument(
            "--no-hostile",
            dest="hostile",
            action="store_false",
            help="without the hostile clients; their behaviours: " + ", ".join(hostile_mod.BEHAVIOURS),
        )
        sp.add_argument(
            "--no-authz",
            dest="authz",
            action="store_false",
            help="without identities: every client a cluster-admin's, no runtime grants (sim/identities.py)",
        )
        sp.add_argument(
            "--no-upstream",
            dest="upstream",
            action="store_false",
            help="without the pull-through mirror, its upstream and its clients (sim/upstream_model.py): "
            "a seed runs as it did before they existed",
        )

    r = sub.add_parser("run", help="run many seeds and summarize")
    r.add_argument("--seeds", type=int, default=10)
    r.add_argument("--start", type=int, default=1)
    r.add_argument(
        "--check-determinism", action="store_true", help="run every seed twice and compare trace hashes"
    )
    r.add_argument("--json", type=str, help="write every seed's result to this file")
    r.add_argument("--quiet", action="store_true", help="print only failing seeds and the summary")
    r.add_argument(
        "--jobs", type=_positive, default=1, help="run seeds in this many processes (speedup stays per core)"
    )
    common(r)
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("replay", help="run one seed and write its trace")
    rp.add_argument("--seed", type=int)
    rp.add_argument("--trace", type=str, help="write the trace (JSON lines) here")
    rp.add_argument(
        "--schedule", type=str, help="replay these options (JSON from shrink --output or run --json)"
    )
    common(rp)
    rp.set_defaults(func=cmd_replay)

    pl = sub.add_parser("plants", help="list the planted bugs")
    pl.set_defaults(func=cmd_plants)

    hu = sub.add_parser("hunt", help="run seeds until a planted bug is caught")
    hu.add_argument("--max-seeds", type=int, default=1000)
    hu.add_argument("--start", type=int, default=1)
    hu.add_argument("--quiet", action="store_true")
    common(hu)
    hu.set_defaults(func=cmd_hunt)

    sh = sub.add_parser("shrink", help="shrink a failing seed's fault schedule (Hypothesis)")
    sh.add_argument("--seed", type=int, required=True)
    sh.add_argument("--budget", type=int, default=60, help="at most this many runs")
    sh.add_argument("--output", type=str, help="write the minimal options (JSON) here")
    common(sh)
    sh.set_defaults(func=cmd_shrink)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        if hasattr(args, "plant"):
            args.plant = _plants(args.plant)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    code: int = args.func(args)
    return code
