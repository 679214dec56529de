"""Planted bugs: off by default, switched on only inside ``planting``, for
every task started there, and never for a task started elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from hareg.plants import DESCRIPTIONS, planted, planting


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
