"""bench/etcd_bytes.py: one small run against a real etcd lists every key one
image push writes, and the inline-limit table says what docs/architecture.md
says of it."""

from __future__ import annotations

from pathlib import Path

from bench_support import PROJECT_ROOT, require_hareg  # noqa: F401  (puts the checkout on sys.path)

from bench.etcd_bytes import crossover, markdown, measure
from hareg.metadata.writes import DEFAULT_INLINE_LIMIT


async def test_a_small_run_lists_every_key_of_one_push(tmp_path: Path) -> None:
    require_hareg()  # etcd installed
    result = await measure(images=3, repos=1, workdir=tmp_path)
    rows = result["last_push"]
    assert isinstance(rows, list)
    puts = [r["kind"] for r in rows if r["op"] == "put"]
    # Two uploads (config and top layer: record opened, written twice), their
    # blob records and links, the manifest, its tag, sequence and history, and
    # one reverse-index entry per reference (config + 4 layers).
    assert sorted(puts) == sorted(["u"] * 6 + ["b", "l"] * 2 + ["m", "t", "s", "h"] + ["x"] * 5)
    assert [r["kind"] for r in rows if r["op"] == "delete"] == ["u", "u"]
    manifest = next(r for r in rows if r["kind"] == "m")
    assert isinstance(result["manifest_bytes"], float)
    assert manifest["value_bytes"] < result["manifest_bytes"] / 2  # the body deflated, nothing twice
    after = result["db_bytes_per_image_after_compaction"]
    before = result["db_bytes_per_image_before_compaction"]
    assert isinstance(after, float) and isinstance(before, float) and 0 < after <= before
    assert "| **total** |" in markdown(result)


def test_inline_costs_etcd_less_for_small_bodies_and_more_for_large_ones() -> None:
    rows = crossover()
    small = [r for r in rows if isinstance(r["body_bytes"], int) and r["body_bytes"] < 1200]
    large = [r for r in rows if isinstance(r["body_bytes"], int) and r["body_bytes"] > DEFAULT_INLINE_LIMIT]
    assert small and large
    assert all(r["inline"] < r["blob_store"] for r in small)
    assert all(r["inline"] > r["blob_store"] for r in large)
    # Up to the limit, inline costs at most about 130 bytes more.
    under = [r for r in rows if isinstance(r["body_bytes"], int) and r["body_bytes"] <= DEFAULT_INLINE_LIMIT]
    assert all(r["inline"] - r["blob_store"] <= 130 for r in under)
