"""A background loop (a reflector, a lease role) run for the length of a block."""

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
