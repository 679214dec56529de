"""Deterministic blob content: a blob is a (seed, size) pair, its bytes are made
chunk by chunk when they are sent, and never held whole.

Chunk ``k`` of blob ``seed`` is a 16-byte header (seed, k) followed by a slice
of one shared 1 MiB block of pseudo-random bytes, so making a chunk costs one
copy, every blob has its own digest, and the same seed always gives the same
bytes (a pull can be checked against the digest computed before the push).
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

MiB = 1024 * 1024
BLOCK_SIZE = MiB
_HEADER = struct.Struct(">QQ")
_BLOCK = random.Random(0x6861726567).randbytes(BLOCK_SIZE)


@dataclass(frozen=True)
class BlobSpec:
    """The recipe of one blob: its bytes are a function of ``seed`` and ``size``."""

    seed: int
    size: int

    def blocks(self) -> Iterator[bytes]:
        """The blob's bytes in blocks of at most ``BLOCK_SIZE``."""
        offset = 0
        index = 0
        while offset < self.size:
            n = min(BLOCK_SIZE, self.size - offset)
            head = _HEADER.pack(self.seed, index)
            yield head + _BLOCK[_HEADER.size : n] if n > _HEADER.size else head[:n]
            offset += n
            index += 1

    def range_blocks(self, start: int, stop: int) -> Iterator[bytes]:
        """The bytes ``[start, stop)`` of the blob, as blocks (for chunked uploads)."""
        first = start // BLOCK_SIZE
        offset = first * BLOCK_SIZE
        for index, block in enumerate(self.blocks()):
            if index < first:
                continue
            lo = max(start - offset, 0)
            hi = min(stop - offset, len(block))
            if lo < hi:
                yield block[lo:hi] if (lo, hi) != (0, len(block)) else block
            offset += len(block)
            if offset >= stop:
                return

    async def stream(self, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        """An async body for aiohttp: the bytes ``[start, stop)`` in blocks."""
        for block in self.range_blocks(start, self.size if stop is None else stop):
            yield block

    def digest(self) -> str:
        """``sha256:<hex>`` of the blob, computed block by block."""
        return _digest_cached(self.seed, self.size)


@functools.lru_cache(maxsize=4096)
def _digest_cached(seed: int, size: int) -> str:
    # Memoized: a benchmark asks for the same blob's digest for every target,
    # and hashing hundreds of MiB again would be wasted client CPU.
    h = hashlib.sha256()
    for block in BlobSpec(seed, size).blocks():
        h.update(block)
    return f"sha256:{h.hexdigest()}"


def small_blob(data: bytes) -> tuple[bytes, str]:
    """A small in-memory blob (a config JSON) and its digest."""
    return data, f"sha256:{hashlib.sha256(data).hexdigest()}"
