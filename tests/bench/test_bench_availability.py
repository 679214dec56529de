"""The availability benchmark's bookkeeping on synthetic records (the run
itself needs the local cluster and minutes: ``python -m bench availability``):
the fault schedule fits the duration, operations land in the window where
their outcome was seen, and the report and timeline are written."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from bench_support import PROJECT_ROOT  # noqa: F401  (puts the checkout on sys.path)

from bench import availability_report
from bench.availability import OPS, OpRecord, checks, summarize
from bench.faults import FAULT_ORDER, LEASE_TTL_S, Fault, minimum_duration, schedule
from bench.throughput import machine


@pytest.mark.parametrize("duration", [45.0, 150.0, 600.0])
def test_schedule_fits_the_duration(duration: float) -> None:
    faults = schedule(duration)
    assert [f.name for f in faults] == list(FAULT_ORDER)
    assert faults[0].at > 0
    for a, b in itertools.pairwise(faults):
        assert a.at + a.hold < b.at, (a, b)
    assert faults[-1].at + faults[-1].hold < duration
    pause = next(f for f in faults if f.name == "etcd_leader_pause")
    assert pause.hold > LEASE_TTL_S
    assert minimum_duration() <= 45.0


def _faults() -> list[Fault]:
    out = []
    for i, name in enumerate(FAULT_ORDER):
        f = Fault(name=name, at=10.0 * (i + 1), hold=2.0)
        f.injected_at, f.healed_at = f.at, f.at + f.hold
        out.append(f)
    return out


def _records() -> list[OpRecord]:
    records = []
    for second in range(60):
        for kind in OPS:
            records.append(OpRecord(kind, second + 0.1, second + 0.3, True))
    # A push that started before the replica kill and failed after it.
    records.append(OpRecord("push", 9.5, 10.5, False, "ServerDisconnectedError: Server disconnected"))
    # Pulls failing during the quorum loss only.
    records.append(OpRecord("pull", 50.2, 51.0, False, "HTTP 503: etcd unavailable"))
    return records


def test_summary_windows_and_checks() -> None:
    faults = _faults()
    records = _records()
    summary = summarize(records, faults, 60.0)
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
    assert by_check["pushes >= 99% during replica_kill"]["met"] is False


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
    doc["checks"] = checks({**doc, "_records": records, "_faults": faults})
    written = availability_report.write(doc, tmp_path / "a.json")
    assert [p.name for p in written] == ["a.json", "a.md", "a-timeline.png"]
    assert "etcd_quorum_loss" in (tmp_path / "a.md").read_text()
    assert (tmp_path / "a-timeline.png").read_bytes()[:4] == b"\x89PNG"
