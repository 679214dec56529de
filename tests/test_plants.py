"""Planted bugs: off by default, switched on only inside ``planting``, for
every task started there, and never for a task started elsewhere."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hareg.cluster.replica import replica_env
from hareg.plants import DESCRIPTIONS, from_environment, planted, planting


def test_no_plant_is_on_by_default() -> None:
    assert not any(planted(name) for name in DESCRIPTIONS)


def test_planting_switches_on_the_named_plants_for_the_block_only() -> None:
    with planting(["gc-no-grace"]) as active:
        assert active == {"gc-no-grace"}
        assert planted("gc-no-grace")
        assert not planted("ambiguous-ack")
        with planting([]):
            assert not planted("gc-no-grace")
        assert planted("gc-no-grace")
    assert not planted("gc-no-grace")


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no-such-plant"), planting(["no-such-plant"]):
        pass
    assert not planted("gc-no-grace")
    with pytest.raises(ValueError, match="misspelt"):
        planted("misspelt")


def test_tasks_of_a_run_inherit_its_plants_and_no_other_run_sees_them() -> None:
    async def in_child() -> bool:
        return planted("tag-no-compare")

    async def seen() -> bool:
        # The run's first task, and a task it starts.
        child = asyncio.get_running_loop().create_task(in_child())
        return planted("tag-no-compare") and await child

    with planting(["tag-no-compare"]):
        assert asyncio.run(seen())
    assert not asyncio.run(seen())


async def test_a_task_keeps_the_plants_it_started_with() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def worker() -> bool:
        started.set()
        await release.wait()
        return planted("upload-no-digest")

    with planting(["upload-no-digest"]):
        task = asyncio.create_task(worker())
    await started.wait()
    assert not planted("upload-no-digest")  # the block is over here
    release.set()
    assert await task


def test_a_real_process_takes_plants_only_with_the_tests_only_prefix() -> None:
    assert from_environment({}) == frozenset()
    assert from_environment({"HAREG_TEST_PLANTS": ""}) == frozenset()
    assert from_environment({"HAREG_TEST_PLANTS": "tests-only:gc-no-grace, tag-no-compare"}) == {
        "gc-no-grace",
        "tag-no-compare",
    }
    with pytest.raises(
        ValueError, match=r"HAREG_TEST_PLANTS: 'gc-no-grace' is not allowed; expected tests-only:"
    ):
        from_environment({"HAREG_TEST_PLANTS": "gc-no-grace"})
    with pytest.raises(ValueError, match=r"unknown plant\(s\) \['nope'\]"):
        from_environment({"HAREG_TEST_PLANTS": "tests-only:nope"})


def test_the_cluster_passes_the_plants_on_to_its_replicas_and_no_other_override() -> None:
    env = replica_env({"HAREG_TEST_PLANTS": "tests-only:gc-no-grace", "HAREG_LISTEN": "x", "PATH": "/bin"})
    assert env["HAREG_TEST_PLANTS"] == "tests-only:gc-no-grace" and "HAREG_LISTEN" not in env
    assert env["MALLOC_ARENA_MAX"] == "2"  # bounded arenas (docs/storage.md, "Memory")
    assert replica_env({"MALLOC_ARENA_MAX": "8"})["MALLOC_ARENA_MAX"] == "8"


def test_hareg_serve_refuses_a_plant_without_the_prefix(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HAREG_TEST_PLANTS="cache-keeps-moved-tag", PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-m", "hareg", "serve", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "HAREG_TEST_PLANTS: 'cache-keeps-moved-tag' is not allowed" in done.stderr
