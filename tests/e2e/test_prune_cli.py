"""``hareg prune`` against a real ``hareg serve``."""

from __future__ import annotations

import json
import subprocess
import sys

from .hareg_process import HaregServer


def _hareg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hareg", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_prune_dry_run_and_run(hareg_server: HaregServer) -> None:
    dry = _hareg("prune", "--dry-run", "--json", "--registry", hareg_server.url)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dryRun"] is True and set(report["counts"]) >= {"manifests", "blobs", "bytes", "uploads"}
    real = _hareg("prune", "--registry", hareg_server.url)
    assert real.returncode == 0, real.stderr
    assert real.stdout.startswith("pruner deleted") and "blobs" in real.stdout


def test_prune_with_no_registry_is_a_clear_error() -> None:
    result = _hareg("prune", "--registry", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the registry" in result.stderr and "Traceback" not in result.stderr


def test_prune_of_one_repository(hareg_server: HaregServer) -> None:
    run = _hareg("prune", "--repository", "team/app", "--registry", hareg_server.url)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("pruner deleted in team/app")
    bad = _hareg("prune", "--repository", "Not A Name", "--registry", hareg_server.url)
    assert bad.returncode == 1 and "NAME_INVALID" in bad.stderr
