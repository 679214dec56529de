"""Where content digests are computed: on the event loop, or beside it.

Hashing a pushed blob costs about a millisecond per MiB.  On the event loop
that millisecond is stolen from every other request; hashlib releases the GIL
while it hashes more than 2 KiB, so in a thread it runs in parallel with the
loop (and with the filesystem driver's own writes).  The simulator forbids
threads, and small chunks are cheaper to hash than to hand over, so the
service layer takes the strategy as a constructor argument:

* ``InlineHashing`` updates the hasher where it is called (the default; the
  simulator and the tests use it);
* ``ThreadedHashing`` sends chunks of at least ``threshold`` bytes to an
  executor and updates smaller ones inline.

Either way a hasher sees its chunks in order, one update at a time: callers
wait for one update before they start the next (``Metered`` pipelines this
with the storage write of the same chunk).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from concurrent.futures import Executor
from typing import Protocol

DEFAULT_THRESHOLD = 256 * 1024


class Hashing(Protocol):
    def start(self, hasher: hashlib._Hash, data: bytes) -> Awaitable[None] | None:
        """Feed ``data`` to ``hasher``: None if done already, else an awaitable
        that completes when it is."""


class InlineHashing:
    def start(self, hasher: hashlib._Hash, data: bytes) -> Awaitable[None] | None:
        hasher.update(data)
        return None


class ThreadedHashing:
    def __init__(self, executor: Executor, *, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.executor = executor
        self.threshold = threshold

    def start(self, hasher: hashlib._Hash, data: bytes) -> Awaitable[None] | None:
        if len(data) < self.threshold:
            hasher.update(data)
            return None
        return asyncio.get_running_loop().run_in_executor(self.executor, hasher.update, data)


async def feed(hashing: Hashing, hasher: hashlib._Hash, data: bytes) -> None:
    """Feed one chunk and wait until it is hashed."""
    pending = hashing.start(hasher, data)
    if pending is not None:
        await pending
