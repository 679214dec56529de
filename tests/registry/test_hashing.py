"""Hashing beside the event loop: same digests, chunks in order, one update at a time."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from hareg.registry.errors import RegistryError
from hareg.registry.hashing import InlineHashing, ThreadedHashing, feed
from hareg.registry.streams import Metered


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class SlowHasher:
    """Records its updates; fails the test if two ever overlap."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.active = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def update(self, data: bytes) -> None:
        with self._lock:
            self.active += 1
            self.overlaps += self.active > 1
        time.sleep(0.002)
        self.parts.append(data)
        with self._lock:
            self.active -= 1


async def chunks_of(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def random_parts(rng: random.Random, threshold: int) -> list[bytes]:
    sizes = [rng.choice([1, 100, threshold - 1, threshold, threshold + 1, 3 * threshold]) for _ in range(40)]
    return [rng.randbytes(n) for n in sizes]


async def test_threaded_and_inline_hashing_give_the_same_digest() -> None:
    rng = random.Random(7)
    parts = random_parts(rng, 4096)
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    with CountingPool() as pool:
        for hashing in (InlineHashing(), ThreadedHashing(pool, threshold=4096)):
            meter = Metered(hashlib.sha256(), hashing=hashing)
            seen = [chunk async for chunk in meter.wrap(chunks_of(parts))]
            assert seen == parts
            assert meter.hasher is not None and meter.hasher.hexdigest() == expected
            assert meter.count == sum(map(len, parts))
        # Only the chunks at or above the threshold went to the pool.
        assert pool.submitted == sum(len(p) >= 4096 for p in parts)


async def test_chunks_are_hashed_in_order_one_at_a_time_while_the_consumer_works() -> None:
    parts = [bytes([i]) * 10 for i in range(30)]
    hasher = SlowHasher()
    with ThreadPoolExecutor(max_workers=4) as pool:
        meter = Metered(hasher, hashing=ThreadedHashing(pool, threshold=1))  # type: ignore[arg-type]
        async for _chunk in meter.wrap(chunks_of(parts)):
            await asyncio.sleep(0.001)  # the storage write of this chunk
    assert hasher.parts == parts
    assert hasher.overlaps == 0


async def test_settled_waits_for_the_last_chunk_when_the_reader_stops_early() -> None:
    parts = [b"a" * 10, b"b" * 10]
    hasher = SlowHasher()
    with ThreadPoolExecutor(max_workers=2) as pool:
        meter = Metered(hasher, hashing=ThreadedHashing(pool, threshold=1))  # type: ignore[arg-type]
        stream = meter.wrap(chunks_of(parts))
        assert await anext(stream) == parts[0]  # a driver that read one chunk and stopped
        await meter.settled()
        assert hasher.parts == [parts[0]]
        await stream.aclose()


async def test_the_limit_is_enforced_before_a_chunk_is_hashed() -> None:
    hasher = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=1) as pool:
        meter = Metered(hasher, limit=15, hashing=ThreadedHashing(pool, threshold=1))
        with pytest.raises(RegistryError) as info:
            async for _chunk in meter.wrap(chunks_of([b"x" * 10, b"y" * 10])):
                pass
    assert info.value.code.name == "SIZE_INVALID"
    assert hasher.hexdigest() == hashlib.sha256(b"x" * 10).hexdigest()


async def test_feed_hashes_before_it_returns() -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        hasher = hashlib.sha256()
        await feed(ThreadedHashing(pool, threshold=1), hasher, b"abc")
        await feed(InlineHashing(), hasher, b"def")
    assert hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
