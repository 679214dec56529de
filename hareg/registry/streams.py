"""Helpers for byte streams that pass through the service layer."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable

from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.hashing import Hashing, InlineHashing


class Metered:
    """Counts (and optionally hashes and bounds) bytes as they stream through,
    so a body is verified without ever being held whole in memory.

    With a threaded ``Hashing`` a chunk's hash runs while the chunk is being
    written: each chunk is passed on as soon as its hash has started, after
    the previous chunk's hash has finished.  ``settled()`` waits for the last
    one; read ``hasher`` only after it."""

    def __init__(
        self,
        hasher: hashlib._Hash | None = None,
        limit: int | None = None,
        *,
        hashing: Hashing | None = None,
        cap: int | None = None,
        over_cap: RegistryError | None = None,
    ) -> None:
        self.hasher = hasher
        self.limit = limit
        # A configured bound (a maximum blob size) beyond the declared length:
        # passing it raises ``over_cap`` at once, before the bytes are stored.
        self.cap = cap
        self.over_cap = over_cap
        self.hashing: Hashing = hashing or InlineHashing()
        self.count = 0
        self._pending: Awaitable[None] | None = None

    async def settled(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def wrap(self, chunks: AsyncIterable[bytes]) -> AsyncGenerator[bytes, None]:
        async for chunk in chunks:
            self.count += len(chunk)
            if self.limit is not None and self.count > self.limit:
                raise RegistryError(
                    ErrorCode.SIZE_INVALID, f"body is longer than the declared {self.limit} bytes"
                )
            if self.cap is not None and self.count > self.cap:
                raise self.over_cap or RegistryError(ErrorCode.SIZE_INVALID, f"body is over {self.cap} bytes")
            if self.hasher is not None:
                await self.settled()
                self._pending = self.hashing.start(self.hasher, chunk)
            yield chunk
        await self.settled()


async def read_all(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """Collect a small stream (a manifest), refusing more than ``limit`` bytes."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise RegistryError(ErrorCode.MANIFEST_INVALID, f"body exceeds {limit} bytes", status=413)
        parts.append(chunk)
    return b"".join(parts)


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data
