"""``python -m bench scale`` (bench/scale.py) at a tiny size: a real ``hareg
serve`` grown in steps, a fresh replica on its etcd, the report written."""

from __future__ import annotations

from pathlib import Path

from bench_support import require_hareg

from bench.scale import ScaleOptions, markdown, run, step_sizes, write


def test_step_sizes_start_at_a_twentieth_and_end_at_n() -> None:
    assert step_sizes(20_000, 6) == [1_000, 4_000, 8_000, 12_000, 16_000, 20_000]
    assert step_sizes(40, 3) == [2, 20, 40]
    assert step_sizes(1, 6) == [1]


def test_a_tiny_run_measures_every_step_and_a_fresh_replica(tmp_path: Path) -> None:
    require_hareg()
    options = ScaleOptions(manifests=40, repositories=2, reads=20, hot=10, steps=3, concurrency=4)
    doc = run(options, tmp_path / "work")
    steps = doc["steps"]
    assert [s["manifests"] for s in steps] == [2, 20, 40]
    for s in steps:
        assert s["replica_rss_bytes"] > 0 and s["etcd_db_bytes"] > 0
        assert s["cache_body_records"] <= s["manifests"]
    for s in (steps[0], steps[-1]):  # latencies at N/20 and at N
        assert s["latency"]["hot"]["requests"] == 20 and s["latency"]["all"]["pool"] == s["manifests"]
        assert 0 < s["latency"]["hot"]["p50_ms"] <= s["latency"]["hot"]["p99_ms"]
    assert steps[1]["latency"] == {}
    fresh = doc["fresh_replica"]
    assert fresh is not None and fresh["ready_s"] > 0 and fresh["manifests_listed"] == 40
    assert set(doc["get_tag_p99_growth"]) == {"hot", "all"}
    written = write(doc, tmp_path / "scale.json")
    assert [p.name for p in written] == ["scale.json", "scale.md"]
    assert "| 40 |" in markdown(doc) and "fresh replica" in markdown(doc)
