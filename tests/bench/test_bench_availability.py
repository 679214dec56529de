"""The availability benchmark's bookkeeping on synthetic records (the run
itself needs the local cluster and minutes: ``python -m bench availability``):
the fault schedule fits the duration, operations land in the window where
their outcome was seen, and the report and timeline are written."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from bench_support import PROJECT_ROOT  # noqa: F401  (puts the checkout on sys.path)

from bench import availability_report
from bench.availability import OPS, OpRecord, checks, summarize
from bench.faults import (
    FAULT_ORDER,
    KILL_AND_PAUSE,
    LEASE_TTL_S,
    PARTITION_KINDS,
    Fault,
    minimum_duration,
    schedule,
)
from bench.history import ROW_COLUMNS, TAG_WRITE, Outcome, Recorder
from bench.throughput import machine


@pytest.mark.parametrize(
    ("duration", "kinds"), [(45.0, KILL_AND_PAUSE), (180.0, FAULT_ORDER), (600.0, FAULT_ORDER)]
)
def test_schedule_fits_the_duration(duration: float, kinds: tuple[str, ...]) -> None:
    faults = schedule(duration, kinds)
    assert [f.kind for f in faults[: len(kinds)]] == list(kinds)
    assert len({f.name for f in faults}) == len(faults)  # window names are unique
    assert faults[0].at > 0
    for a, b in itertools.pairwise(faults):
        assert a.at + a.hold + 3.0 <= b.at + 1e-9, (a, b)
    assert faults[-1].at + faults[-1].hold < duration
    pause = next(f for f in faults if f.kind == "etcd_leader_pause")
    assert pause.hold > LEASE_TTL_S
    assert minimum_duration(KILL_AND_PAUSE) <= 45.0
    assert set(FAULT_ORDER) >= PARTITION_KINDS


def test_a_long_run_repeats_the_faults_a_few_seconds_apart() -> None:
    faults = schedule(900.0)
    assert len(faults) >= 5 * len(FAULT_ORDER)
    assert (
        faults[len(FAULT_ORDER)].name == "replica_kill#2" and faults[len(FAULT_ORDER)].kind == "replica_kill"
    )
    gaps = [b.at - (a.at + a.hold) for a, b in itertools.pairwise(faults)]
    assert max(gaps) < 10.0


def _faults() -> list[Fault]:
    out = []
    for i, name in enumerate(FAULT_ORDER):
        f = Fault(name=name, at=10.0 * (i + 1), hold=2.0)
        f.injected_at, f.healed_at = f.at, f.at + f.hold
        out.append(f)
    return out


def _records() -> list[OpRecord]:
    records = []
    for second in range(10 * (len(FAULT_ORDER) + 1)):
        for kind in OPS:
            records.append(OpRecord(kind, second + 0.1, second + 0.3, True))
    # A push that started before the replica kill and failed after it.
    records.append(OpRecord("push", 9.5, 10.5, False, "ServerDisconnectedError: Server disconnected"))
    # Pulls failing during the quorum loss only.
    quorum = 10.0 * (FAULT_ORDER.index("etcd_quorum_loss") + 1)
    records.append(OpRecord("pull", quorum + 0.2, quorum + 1.0, False, "HTTP 503: etcd unavailable"))
    return records


def test_summary_windows_and_checks() -> None:
    faults = _faults()
    records = _records()
    summary = summarize(records, faults, 100.0)
    windows = {w["window"]: w for w in summary["windows"]}
    assert list(windows) == ["baseline", *FAULT_ORDER]
    kill = windows["replica_kill"]["ops"]["push"]
    assert kill["errors"] == 1 and kill["error_kinds"] == {"ServerDisconnectedError": 1}
    assert kill["time_to_recover_s"] == pytest.approx(0.5)
    assert kill["ok_per_s"] == pytest.approx(1.0)
    assert windows["baseline"]["ops"]["push"]["errors"] == 0
    assert windows["etcd_quorum_loss"]["ops"]["pull"]["errors"] == 1
    assert sum(summary["timeline"]["errors"]) == 2
    assert summary["success_rate"]["tag_move"] == 1.0

    doc: dict[str, Any] = {"lost": 0, "dangling": 0, **summary}
    by_check = {c["check"]: c for c in checks({**doc, "_records": records, "_faults": faults})}
    assert by_check["lost == 0"]["met"] and by_check["dangling == 0"]["met"]
    assert by_check["pulls >= 99.9% outside quorum loss"]["met"] is True
    assert by_check["pulls >= 99% during quorum loss"]["met"] is False  # 10 of 11
    assert by_check["pushes >= 99.5% in every replica_kill window"]["met"] is False
    assert by_check["pushes >= 99.5% in every storage_pause window"]["met"] is True
    assert "tag history linearizable (violations == 0)" not in by_check  # no history in this doc
    with_history = checks(
        {**doc, "linearizability": {"violations": 2}, "_records": records, "_faults": faults}
    )
    assert {c["check"]: c["met"] for c in with_history}["tag history linearizable (violations == 0)"] is False


def test_report_and_timeline_are_written(tmp_path: Path) -> None:
    faults = _faults()
    records = _records()
    summary = summarize(records, faults, 60.0)
    doc: dict[str, Any] = {
        "started_at": "now",
        "quick": True,
        "machine": machine(),
        "options": {"duration": 60.0, "concurrency": 2},
        "cluster": {"replicas": 3, "storage": "seaweedfs"},
        "heal_s": 1.0,
        "elapsed_s": 70.0,
        "acknowledged_pushes": 60,
        "lost": 0,
        "dangling": 0,
        "verdict": "pass",
        "faults": [f.as_dict() for f in faults],
        "verification": {"lost_examples": {}, "dangling_examples": [], "dangling_check_errors": []},
        **summary,
    }
    recorder = Recorder(lambda: 5.0)
    op = recorder.invoke(TAG_WRITE, "r", tag="latest", digest="sha256:a")
    recorder.complete(op, Outcome.OK)
    doc |= {
        "linearizability": {"checked_ops": 1, "violations": 0, "examples": [], "tags": 1, "exempt_reads": 0,
                            "inconclusive_tags": 0, "check_s": 0.0},
        "history": {"operations": 1, "outcomes": recorder.counts()},
        "stale_reads": {"intervals": [], "seconds": 0.0},
        "memory": {"replica-1": {"pids": [1], "samples": 2, "first_mib": 80.0, "last_mib": 81.0, "peak_mib": 81.0,
                                 "growth_mib_per_10min": None, "series": [[0.0, 80.0], [2.0, 81.0]]}},
        "_history": (recorder, 0.0),
    }  # fmt: skip
    doc["checks"] = checks({**doc, "_records": records, "_faults": faults})
    written = availability_report.write(doc, tmp_path / "a.json")
    assert [p.name for p in written] == [
        "a.json",
        "a-history.jsonl",
        "a.md",
        "a-timeline.png",
        "a-memory.png",
    ]
    md = (tmp_path / "a.md").read_text()
    assert "etcd_quorum_loss" in md and "0 linearizability violations in 1 checked" in md
    assert "| replica-1 | 1 | 80.0 | 81.0 | 81.0 | - |" in md
    assert (tmp_path / "a-timeline.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (tmp_path / "a-history.jsonl").read_text().splitlines()]
    assert rows[0] == {"columns": ROW_COLUMNS} and rows[1][1:5] == ["tag_write", "r", "latest", "sha256:a"]
    assert "_history" not in json.loads((tmp_path / "a.json").read_text())
