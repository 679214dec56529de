"""Helpers of the benchmark tests: ``bench`` importable from the checkout, and
skips for missing components."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from bench.targets import distribution_available  # noqa: E402
from hareg.processes.etcd import EtcdNotFound, find_etcd  # noqa: E402


def require_hareg() -> None:
    try:
        find_etcd()
    except EtcdNotFound as exc:
        pytest.skip(str(exc))


def require_distribution() -> None:
    if not distribution_available():
        pytest.skip("docker-registry (CNCF distribution) is not installed")
