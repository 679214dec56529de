"""The upload buffer pool: a shared byte budget, first come first served."""

from __future__ import annotations

import asyncio

import pytest

from hareg.storage.buffers import BufferPool


async def test_reservations_wait_in_line_and_are_granted_as_bytes_come_back() -> None:
    pool = BufferPool(10)
    assert await pool.acquire(6) == 6
    big = asyncio.create_task(pool.acquire(8))
    small = asyncio.create_task(pool.acquire(1))
    await asyncio.sleep(0)
    # 4 bytes are free, but the small one does not overtake the head of the line.
    assert not big.done() and not small.done()
    pool.release(6)
    assert await big == 8
    assert await small == 1
    assert pool.reserved == 9 and pool.peak == 9
    pool.release(8)
    pool.release(1)
    assert pool.free == 10


async def test_a_reservation_larger_than_the_pool_waits_for_all_of_it() -> None:
    pool = BufferPool(10)
    await pool.acquire(3)
    task = asyncio.create_task(pool.acquire(25))
    await asyncio.sleep(0)
    assert not task.done()
    pool.release(3)
    assert await task == 10
    pool.release(10)


async def test_a_cancelled_wait_gives_its_turn_away() -> None:
    pool = BufferPool(4)
    await pool.acquire(4)
    first = asyncio.create_task(pool.acquire(4))
    second = asyncio.create_task(pool.acquire(2))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    pool.release(4)
    assert await second == 2
    assert pool.reserved == 2


async def test_reserved_for_gives_back_on_error() -> None:
    pool = BufferPool(4)
    with pytest.raises(RuntimeError):
        async with pool.reserved_for(3):
            assert pool.free == 1
            raise RuntimeError
    assert pool.free == 4


def test_a_pool_needs_a_positive_capacity() -> None:
    with pytest.raises(ValueError, match="positive capacity"):
        BufferPool(0)
