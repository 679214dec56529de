"""A byte budget shared by a driver's uploads, so a replica's upload buffers
stay bounded however many pushes arrive at once.

An upload reserves the bytes it is about to buffer before it reads them from
the request body, and gives them back once they are sent to the store.  When
the budget is spent, a reservation waits (first come, first served): the
upload stops reading its body, so TCP's flow control slows the client down
instead of the replica's memory growing (back-pressure).

Deadlock-free as the drivers use it: a reservation is taken only by an upload
that holds no *unsent* reserved buffer; what it may still hold are buffers in
flight to the store, which come back whatever the pool does.  A reservation
larger than the whole budget is cut to the budget (it then waits for the pool
to be empty), so every reservation can be granted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class BufferPool:
    """``capacity`` bytes shared by every upload of one driver."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"a buffer pool needs a positive capacity, not {capacity}")
        self.capacity = capacity
        self.free = capacity
        self.peak = 0  # the most bytes ever reserved at once (for tests and benchmarks)
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def reserved(self) -> int:
        return self.capacity - self.free

    def fit(self, nbytes: int) -> int:
        """What a reservation of ``nbytes`` actually takes."""
        return max(0, min(nbytes, self.capacity))

    async def acquire(self, nbytes: int) -> int:
        """Reserve ``nbytes`` (cut to the capacity), waiting in line while the
        budget is spent; returns what was reserved, for ``release``."""
        n = self.fit(nbytes)
        if not self._waiting and n <= self.free:
            self._take(n)
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiting.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
                self._wake()
            raise
        return n

    def release(self, nbytes: int) -> None:
        self.free += nbytes
        if self.free > self.capacity:  # pragma: no cover - a caller's bug
            raise AssertionError("buffer pool released more than was reserved")
        self._wake()

    @contextlib.asynccontextmanager
    async def reserved_for(self, nbytes: int) -> AsyncIterator[int]:
        n = await self.acquire(nbytes)
        try:
            yield n
        finally:
            self.release(n)

    def _take(self, n: int) -> None:
        self.free -= n
        self.peak = max(self.peak, self.capacity - self.free)

    def _wake(self) -> None:
        while self._waiting:
            n, fut = self._waiting[0]
            if fut.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if n > self.free:
                return  # first come, first served: nobody overtakes the head
            self._waiting.popleft()
            self._take(n)
            fut.set_result(None)
