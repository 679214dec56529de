"""Whole simulated runs: determinism, clean seeds, planted bugs caught, shrinking, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hareg.plants import DESCRIPTIONS
from sim import faults
from sim.cli import main, plant_caught
from sim.runner import run
from sim.shrink import shrink

ROOT = str(Path(__file__).resolve().parents[2])

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_same_seed_same_trace(seed: int) -> None:
    options = faults.choose(seed, 15.0)
    first, second = run(options), run(options)
    assert first.trace_hash == second.trace_hash
    assert first.ops == second.ops and first.faults == second.faults
    assert not first.error


def test_a_seed_replays_to_the_same_trace_in_another_process(tmp_path: Path) -> None:
    in_process = run(faults.choose(3, 10.0), keep_trace=True)
    trace = tmp_path / "trace.jsonl"
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run(
        [sys.executable, "-m", "sim", "replay", "--seed", "3", "--duration", "10", "--trace", str(trace)],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
    )
    lines = trace.read_text().splitlines()
    assert (
        hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest() == in_process.trace_hash
    )
    assert lines == in_process.trace_lines
    first = json.loads(lines[0])
    assert first["ev"] == "options" and first["seed"] == 3


def test_fifty_clean_seeds_have_no_violation() -> None:
    failing = []
    for seed in range(1, 51):
        result = run(faults.choose(seed, 8.0))
        if result.error or result.violations:
            failing.append((seed, result.error, [v.to_json() for v in result.violations[:2]]))
    assert failing == []


@pytest.mark.parametrize("plant", sorted(DESCRIPTIONS))
def test_each_planted_bug_is_caught_within_a_few_seeds(plant: str) -> None:
    everything = tuple(faults.FAULT_KINDS)
    # Most are caught at seed 1; tag-no-compare in about one seed of four (seed 4
    # of 1..8 before the late fault existed, seeds 9, 12 and 14 of 1..20 since).
    for seed in range(1, 13):
        result = run(faults.choose(seed, 30.0, plants=frozenset({plant})))
        if plant_caught(result, everything):  # a violation the seed does not have without the plant
            return
    pytest.fail(f"{plant} not caught in seeds 1..12")


def _first_failing_seed(plant: str, duration: float, **options: Any) -> int:
    """The first seed the plant makes fail (which one moves whenever the workload changes),
    without the pull-through mirror (its traffic moves which seed that is; not its business)."""
    options.setdefault("upstream", False)
    for seed in range(1, 41):
        if run(faults.choose(seed, duration, plants=frozenset({plant}), **options)).failed:
            return seed
    pytest.fail(f"{plant} not caught in seeds 1..40 at {duration:g}s")


def test_shrinking_a_failure_that_needs_no_fault_removes_every_fault() -> None:
    seed = _first_failing_seed("upload-no-digest", 10.0)
    options = faults.choose(seed, 10.0, plants=frozenset({"upload-no-digest"}), upstream=False)
    assert options.faults
    shrunk = shrink(options, max_examples=5, log=lambda _: None)
    assert shrunk is not None
    assert shrunk.options.faults == () and shrunk.violation.startswith("3")


def test_shrinking_keeps_the_faults_a_failure_needs() -> None:
    """ambiguous-ack needs an etcd write whose outcome is unknown: shrinking keeps a
    fault that makes one (and drops the others).  On the first seed it makes
    fail without the identities (a fixed seed stopped failing whenever the
    workload changed: seed 1 once writes rode out etcd elections, seed 3 once
    a new registry wrote the reverse-index marker at its start)."""
    seed = _first_failing_seed("ambiguous-ack", 12.0, authz=False, upstream=True)
    options = faults.choose(seed, 12.0, plants=frozenset({"ambiguous-ack"}), authz=False)
    shrunk = shrink(options, max_examples=20, log=lambda _: None)
    assert shrunk is not None and shrunk.options.faults
    assert len(shrunk.options.faults) < len(options.faults) // 2
    assert {f.kind for f in shrunk.options.faults} & {
        "timeout",
        "lostreply",
        "late",
        "leader",
        "loss",
        "oneway",
        "split",
        "partition",
        "pause",
        "delay",
    }
    assert run(shrunk.options).failed  # the minimal schedule replays to the failure


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plants"]) == 0
    assert "tag-no-compare" in capsys.readouterr().out
    report = tmp_path / "run.json"
    assert main(["run", "--seeds", "2", "--duration", "5", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "speedup:" in out and "violations:     none" in out and "seed 2:" in out
    doc = json.loads(report.read_text())
    assert [s["seed"] for s in doc["seeds"]] == [1, 2]
    parallel = tmp_path / "parallel.json"
    assert main(["run", "--seeds", "2", "--duration", "5", "--jobs", "2", "--json", str(parallel)]) == 0
    capsys.readouterr()
    assert [s["trace_hash"] for s in json.loads(parallel.read_text())["seeds"]] == [
        s["trace_hash"] for s in doc["seeds"]
    ]
    with pytest.raises(SystemExit):
        main(["run", "--jobs", "0"])
    assert "expected a whole number of processes" in capsys.readouterr().err
    hunt = ["hunt", "--plant", "upload-no-digest", "--max-seeds", "10", "--duration", "10", "--no-upstream"]
    assert main(hunt) == 0
    assert "caught upload-no-digest at seed" in capsys.readouterr().out
    failing = str(_first_failing_seed("upload-no-digest", 10.0))
    planted = ["--plant", "upload-no-digest", "--no-upstream"]
    assert main(["run", "--seeds", "1", "--start", failing, "--duration", "10", *planted]) == 1
    schedule = tmp_path / "options.json"
    schedule.write_text(json.dumps(faults.choose(4, 5.0).to_json()))
    assert main(["replay", "--schedule", str(schedule)]) == 0
