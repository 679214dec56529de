"""Loops for tests: a background loop (a reflector, a lease role) run for the
length of a block, and a coroutine run on a private event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def background(
    loop: Coroutine[Any, Any, None], ready: Callable[[], bool], *, limit: float = 30.0
) -> AsyncIterator[None]:
    """Start ``loop`` as a task, enter once ``ready()`` holds (within ``limit``
    seconds, generous for a busy machine), cancel the task on leaving."""
    task = asyncio.create_task(loop)
    try:
        async with asyncio.timeout(limit):
            while not ready():
                await asyncio.sleep(0.01)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_in_private_loop(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` to the end on a loop of its own: for session fixtures, which
    must not touch the loop pytest-asyncio gives each test (the child
    processes they start are not bound to a loop)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()
