"""Pull-through bookkeeping: when the upstream was last asked about a
mirrored tag (docs/pull-through.md).  One key per tag, beside the tag; a
replica claims a check with a compare on the key's revision, so only one
replica per ttl asks the upstream."""

from __future__ import annotations

from hareg.kv.base import Compare, KVUnknownOutcome, Put
from hareg.metadata.records import MirrorCheckRecord, decode, encode
from hareg.metadata.writes import StoreBase


class MirrorMetadata(StoreBase):
    async def get_mirror_check(self, repo: str, tag: str) -> tuple[MirrorCheckRecord, int] | None:
        """The last check of ``repo:tag`` and the key's mod revision (for ``claim_mirror_check``)."""
        kv = await self._get(self.keys.mirror_check(repo, tag))
        return (decode(MirrorCheckRecord, kv.value), kv.mod_revision) if kv is not None else None

    async def claim_mirror_check(self, repo: str, tag: str, revision: int, record: MirrorCheckRecord) -> bool:
        """Record a check of ``repo:tag`` if nobody did since ``revision`` (0: never).
        False: another replica claimed it first (or the outcome is unknown: the
        caller then answers from the cache, the safe side)."""
        key = self.keys.mirror_check(repo, tag)
        try:
            result = await self.kv.txn([Compare.mod_revision_is(key, revision)], [Put(key, encode(record))])
        except KVUnknownOutcome:
            return False
        return result.succeeded

    async def set_mirror_check(self, repo: str, tag: str, record: MirrorCheckRecord) -> None:
        await self.kv.txn([], [Put(self.keys.mirror_check(repo, tag), encode(record))])
