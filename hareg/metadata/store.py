"""MetadataStore: the registry's metadata operations, one KV transaction each,
guarded by compares.

One facade over the modules that hold the operations by resource, so that
callers hold one object:

* ``blobs.py``: blob records and their links into repositories;
* ``manifests.py``: manifest pushes (with their tags) and deletions;
* ``tags.py``: tag deletion, moves (rollback), history, immutability;
* ``uploads.py``: upload session records;
* ``access.py``: runtime role grants and robot accounts;
* ``mirrors.py``: when the pull-through cache last asked an upstream about a tag;
* ``writes.py``: what they share: the guarded transaction, the verification
  of an unknown outcome (invariant 7 of docs/invariants.md) and the retry loop.

Here: repositories and cluster-wide settings.  Garbage collection's own
snapshot and fenced deletions are ``collection.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hareg.kv.base import Compare, KVUnknownOutcome, Put
from hareg.metadata.access import AccessMetadata
from hareg.metadata.blobs import BlobMetadata
from hareg.metadata.errors import (
    BlobCollected,
    Contended,
    ImmutableTag,
    MetadataError,
    MissingReferences,
    ReferencedBy,
)
from hareg.metadata.manifests import ManifestMetadata, TagWrite
from hareg.metadata.mirrors import MirrorMetadata
from hareg.metadata.tags import TagMetadata, immutable_pattern
from hareg.metadata.uploads import UploadMetadata
from hareg.metadata.writes import DEFAULT_INLINE_LIMIT, DEFAULT_MAX_RETRIES

# What callers import from here (the errors and limits of every resource).
__all__ = [
    "DEFAULT_INLINE_LIMIT",
    "DEFAULT_MAX_RETRIES",
    "BlobCollected",
    "Contended",
    "ImmutableTag",
    "MetadataError",
    "MetadataStore",
    "MissingReferences",
    "ReferencedBy",
    "TagWrite",
    "immutable_pattern",
]


class MetadataStore(
    AccessMetadata, BlobMetadata, ManifestMetadata, MirrorMetadata, TagMetadata, UploadMetadata
):
    # ---------------------------------------------------------------- settings

    async def shared_setting(self, name: str, make: Callable[[], bytes]) -> bytes:
        """A cluster-wide value: the first replica to ask creates it (``make``),
        every replica then reads the same one."""
        key = self.keys.setting(name)
        for _ in range(self.max_retries):
            existing = await self._get(key)
            if existing is not None:
                return existing.value
            # Whichever replica's value won (even after an unknown outcome) is read back.
            with contextlib.suppress(KVUnknownOutcome):
                await self.kv.txn([Compare.missing(key)], [Put(key, make())])
        raise Contended(f"setting {name}")

    # ------------------------------------------------------------ repositories

    async def repo_exists(self, repo: str) -> bool:
        return await self._get(self.keys.repo(repo)) is not None

    async def list_repos(self, last: str | None, limit: int) -> tuple[list[str], bool]:
        start, end = self.keys.repos()
        if last is not None:
            start = self.keys.repo(last) + b"\x00"
        result = await self.kv.range(start, end, limit=limit, keys_only=True)
        return [self.keys.strip("r", kv.key) for kv in result.kvs], result.more
