"""Fixtures for the benchmark code's own tests: real targets (``hareg serve``,
distribution) started by :mod:`bench.targets` itself, once per module, with
and without the ``--auth`` users."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bench_support import require_distribution, require_hareg

from bench.targets import RunningTarget, parse_target, started
from bench.users import BenchUsers, write_users


@pytest.fixture(scope="module")
def hareg_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTarget]:
    require_hareg()
    with started(
        parse_target("hareg"), base_dir=tmp_path_factory.mktemp("bench-hareg"), timeout=60
    ) as target:
        yield target


@pytest.fixture(scope="module")
def distribution_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTarget]:
    require_distribution()
    with started(
        parse_target("distribution"), base_dir=tmp_path_factory.mktemp("bench-distribution"), timeout=60
    ) as target:
        yield target


@pytest.fixture(scope="module")
def bench_users(tmp_path_factory: pytest.TempPathFactory) -> BenchUsers:
    # bcrypt's cheapest cost: the tests check the flow, not the hashing.
    return write_users(tmp_path_factory.mktemp("bench-users"), bcrypt_cost=4)


@pytest.fixture(scope="module")
def hareg_auth_target(
    tmp_path_factory: pytest.TempPathFactory, bench_users: BenchUsers
) -> Iterator[RunningTarget]:
    require_hareg()
    with started(
        parse_target("hareg"),
        base_dir=tmp_path_factory.mktemp("bench-hareg-auth"),
        timeout=60,
        users=bench_users,
    ) as target:
        yield target


@pytest.fixture(scope="module")
def distribution_auth_target(
    tmp_path_factory: pytest.TempPathFactory, bench_users: BenchUsers
) -> Iterator[RunningTarget]:
    require_distribution()
    with started(
        parse_target("distribution"),
        base_dir=tmp_path_factory.mktemp("bench-distribution-auth"),
        timeout=60,
        users=bench_users,
    ) as target:
        yield target
