"""Helpers for byte streams that pass through the service layer."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator

from hareg.registry.errors import ErrorCode, RegistryError


class Metered:
    """Counts (and optionally hashes and bounds) bytes as they stream through,
    so a body is verified without ever being held whole in memory."""

    def __init__(self, hasher: hashlib._Hash | None = None, limit: int | None = None) -> None:
        self.hasher = hasher
        self.limit = limit
        self.count = 0

    async def wrap(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.count += len(chunk)
            if self.limit is not None and self.count > self.limit:
                raise RegistryError(
                    ErrorCode.SIZE_INVALID, f"body is longer than the declared {self.limit} bytes"
                )
            if self.hasher is not None:
                self.hasher.update(chunk)
            yield chunk


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
