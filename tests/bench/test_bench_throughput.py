"""The throughput benchmark on a tiny workload: the CLI runs against real
``hareg serve`` and distribution and writes its JSON (with the ``ratios``
keys), Markdown and plots, and with ``--auth`` (every request authenticated,
the unauthenticated hareg beside, ``auth_ratios``); and a pull of corrupted bytes, through a proxy that
flips a bit, is counted as an error of the pull phase.  No speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from bench_support import PROJECT_ROOT, require_distribution, require_hareg
from yarl import URL

from bench.targets import RunningTarget, parse_target
from bench.throughput import CEILING_PHASES, COMPANION_PHASES, PHASES, Workload, add_ratios, run_target
from bench.workload import NoProgress, Progress

TINY = [
    "--blob-sizes", "200K:3,1MiB:1",
    "--chunk-size", "150K",
    "--concurrency", "2",
    "--request-concurrency", "4",
    "--manifests", "12",
    "--mounts", "5",
    "--duration", "0.5",
    "--pull-rounds", "1",
    "--wrk-duration", "1",
    "--no-progress",
]  # fmt: skip


def test_cli_runs_on_hareg_and_distribution(tmp_path: Path) -> None:
    require_hareg()
    require_distribution()
    out = tmp_path / "run" / "tp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "throughput", "--target", "hareg", "--target", "distribution",
         "--target", "ceiling", *TINY, "--json", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    for key in ("push_mb_s", "pull_mb_s", "manifest_get_tag_ops", "manifest_put_ops"):
        assert isinstance(doc["ratios"][key], float) and doc["ratios"][key] > 0, key
    assert doc["ratios_target"] == "hareg" and doc["baseline"] == "distribution"
    assert set(doc["targets"]) == {"hareg", "distribution", "ceiling"}
    # The ceiling runs the reads it serves; hareg is compared with it on those only.
    ceiling_phases = doc["targets"]["ceiling"]["phases"]
    assert set(ceiling_phases) <= set(CEILING_PHASES) and "pull" in ceiling_phases
    for phase, s in ceiling_phases.items():
        assert "error" in s or (s["errors"] == 0 and s["ops"] > 0), (phase, s)
    assert set(ceiling_phases["pull"]["server"]) == {"ceiling"}
    assert ceiling_phases["pull"]["bytes"] == 2 * (3 * 200 * 1024 + 1024 * 1024)
    assert doc["ceiling"] == "ceiling"
    for key in ("pull_mb_s", "manifest_get_tag_ops", "manifest_get_digest_ops", "head_blob_ops"):
        assert isinstance(doc["ratios_ceiling"][key], float) and doc["ratios_ceiling"][key] > 0, key
    assert not {"push_mb_s", "manifest_put_ops", "mount_ops", "tag_list_ops"} & set(doc["ratios_ceiling"])
    assert "ceiling" not in doc["ratios_by_target"]
    for name, roles in (("hareg", {"hareg", "etcd"}), ("distribution", {"registry"})):
        phases = doc["targets"][name]["phases"]
        measured = [p for p in PHASES if p != "wrk_manifest_get_tag"]
        assert set(measured) <= set(phases)
        for phase in measured:
            s = phases[phase]
            assert s["errors"] == 0, (name, phase, s.get("first_error"))
            assert s["ops"] > 0 and s["p50_ms"] is not None and s["p99_ms"] >= s["p50_ms"]
            assert set(s["server"]) == roles
        # One round over the blobs of both push phases.
        assert phases["pull"]["bytes"] == 2 * (3 * 200 * 1024 + 1024 * 1024)
        assert phases["mount"]["mounted"] == 5
    assert {c["check"] for c in doc["target_checks"]} >= {"replica peak RSS < 150 MB"}
    md = out.with_suffix(".md").read_text()
    assert "manifest GET by tag" in md and "| hareg |" in md and "Against the ceiling" in md
    for suffix in ("throughput", "latency", "resources"):
        png = tmp_path / "run" / f"tp-{suffix}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_auth_run_authenticates_every_request(tmp_path: Path) -> None:
    require_hareg()
    require_distribution()
    out = tmp_path / "auth" / "tp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "throughput", "--auth", "--bcrypt-cost", "4", *TINY, "--no-plots",
         "--json", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["auth"]["users"] == ["bench", "bench-viewer"] and doc["auth"]["bcrypt_cost"] == 4
    assert set(doc["targets"]) == {"hareg", "distribution"} and not doc["failed_targets"]
    hareg, distribution = doc["targets"]["hareg"], doc["targets"]["distribution"]
    # Each registry refused the client until it logged in, its own way.
    assert hareg["details"]["auth"] == "token" and hareg["details"]["anonymous_v2_status"] == 401
    assert (
        distribution["details"]["auth"] == "basic" and distribution["details"]["anonymous_v2_status"] == 401
    )
    assert hareg["details"]["auth_token_fetches"] >= 4
    for run in (hareg, distribution):
        for phase in PHASES:
            s = run["phases"].get(phase)
            if s is None and phase == "wrk_manifest_get_tag":
                continue  # wrk not installed
            assert s is not None and "error" not in s, (phase, s)
            assert s["errors"] == 0 and s["ops"] > 0, (phase, s.get("first_error"))
    assert doc["ratios"]["manifest_get_tag_ops"] > 0
    # The unauthenticated hareg ran every phase (the same data as the
    # authenticated one), and the ratios compare the two.
    plain = doc["unauthenticated_targets"]["hareg"]
    assert plain["details"]["auth"] == "none" and plain["details"]["anonymous_v2_status"] == 200
    for phase in COMPANION_PHASES:
        if phase in hareg["phases"]:
            assert plain["phases"][phase]["errors"] == 0 and plain["phases"][phase]["ops"] > 0
    assert set(plain["phases"]) <= set(COMPANION_PHASES)
    assert {"push", "pull", "mount"} <= set(plain["phases"]), sorted(plain["phases"])
    table = doc["auth_ratios"]["hareg"]
    assert isinstance(table["manifest_get_tag_ops"], float) and table["manifest_get_tag_ops"] > 0
    checks = {c["check"] for c in doc["target_checks"]}
    assert "authenticated manifest GET by tag (Python client) >= 0.8x unauthenticated" in checks
    md = out.with_suffix(".md").read_text()
    assert "## Authentication" in md and "| hareg (auth) | hareg (no auth) |" in md


def test_cli_auth_refuses_targets_it_cannot_start_with_users() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "throughput", "--auth", "--target", "hareg-cluster", "--no-progress"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--auth runs only hareg and distribution" in proc.stderr


SESSION = web.AppKey("session", aiohttp.ClientSession)


def _corrupting_proxy(upstream: str) -> web.Application:
    """Forwards everything to ``upstream``; flips one bit of every blob GET body."""

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app[SESSION]
        headers = {
            k: v for k, v in request.headers.items() if k in ("Accept", "Content-Type", "Content-Range")
        }
        body = await request.read()
        async with session.request(
            request.method, URL(upstream + request.raw_path, encoded=True), data=body or None,
            headers=headers, allow_redirects=False,
        ) as up:  # fmt: skip
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k in ("Location", "Docker-Content-Digest", "Link", "Range",
                                                                  "Content-Type")}  # fmt: skip
            if request.method == "GET" and "/blobs/sha256:" in request.path and up.status == 200 and data:
                data = bytes([data[0] ^ 0x80]) + data[1:]
            return web.Response(
                status=up.status, body=data if request.method != "HEAD" else None, headers=out
            )

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def test_pull_phase_counts_corrupted_blobs_as_errors(hareg_target: RunningTarget) -> None:
    server = TestServer(_corrupting_proxy(hareg_target.url), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/")).rstrip("/")
        target = RunningTarget(
            spec=parse_target(url), url=url, details={"kind": "url"}, _roles=dict, _stop=lambda: None
        )
        workload = Workload(
            blob_sizes=((100 * 1024, 3),), chunk_size=64 * 1024, concurrency=2, request_concurrency=2,
            manifests=3, mounts=2, duration=0.2, pull_rounds=1, wrk=False, seed=5,
        )  # fmt: skip

        def no_progress(desc: str, total: float, unit: str) -> Progress:
            return NoProgress()

        run = await run_target(target, workload, no_progress)
    finally:
        await server.close()
    pull = run.phases["pull"]
    assert pull["ops"] == 0 and pull["errors"] == 6
    assert "DigestMismatch" in pull["first_error"]
    assert run.phases["push"]["errors"] == 0 and run.phases["manifest_get_tag"]["errors"] == 0


@pytest.mark.parametrize("flag", ["--quick"])
def test_cli_help_names_the_targets(flag: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "throughput", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and flag in proc.stdout and "hareg-cluster" in proc.stdout


def test_cluster_ratios_compare_hareg_cluster_with_distribution_cluster() -> None:
    def target(kind: str, push: float, mount: float, replica_rss: float | None = None) -> dict[str, Any]:
        return {
            "details": {"kind": kind},
            "phases": {"push": {"ops_s": 1.0, "mb_s": push}, "mount": {"ops_s": mount}},
            "max_process_peak_rss_mb_by_role": {"replica": replica_rss} if replica_rss else {},
        }

    doc: dict[str, Any] = {
        "targets": {
            "distribution-cluster": target("distribution-cluster", 40.0, 200.0),
            "hareg-cluster": target("hareg-cluster", 60.0, 180.0, 130.0),
        },
        "storage_raw": {"put_mb_s": 80.0, "get_mb_s": 200.0},
    }
    add_ratios(doc)
    assert doc["cluster_baseline"] == "distribution-cluster"
    assert doc["ratios_cluster"]["push_mb_s"] == 1.5 and doc["ratios_cluster"]["mount_ops"] == 0.9
    assert doc["ratios"] == {}  # no single-node distribution in this run
    assert doc["cluster_replica_peak_rss_mb"] == 130.0
    checks = {c["figure"]: c["met"] for c in doc["target_checks"] if c["target"] == "hareg-cluster"}
    assert checks["push_mb_s"] is True and checks["mount_ops"] is False
    assert checks["pull_mb_s"] is None  # not measured: neither met nor missed
    assert checks["push_mb_s / storage_raw.put_mb_s"] is True  # 60 of 80 MB/s
