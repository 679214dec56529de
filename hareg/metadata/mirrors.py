"""Pull-through bookkeeping (docs/pull-through.md): when the upstream was
last asked about a mirrored tag (one key per tag, beside the tag; a replica
claims a check with a compare on the key's revision, so only one replica
per ttl asks the upstream), and what is being fetched (one key per
blob or manifest under the fetching replica's lease, so the others wait for it and a
dead fetcher's claim expires with its lease)."""

from __future__ import annotations

import contextlib

from hareg.kv.base import Compare, KVError, KVUnknownOutcome, Put
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

    async def claim_fetch(self, repo: str, name: str, ttl: int) -> int | None:
        """Claim the upstream fetch of ``repo``'s blob or manifest ``name`` (a
        digest, or a tag not cached yet): the lease id
        that holds the claim (refresh it while fetching, revoke it when done),
        or None when another fetch holds it."""
        lease = await self.kv.grant_lease(ttl)
        key = self.keys.mirror_fetch(repo, name)
        try:
            result = await self.kv.txn([Compare.missing(key)], [Put(key, self.replica.encode(), lease=lease)])
        except KVUnknownOutcome:
            # Maybe ours, maybe not: revoking the lease removes it if it was.
            await self.release_fetch(lease)
            return None
        if not result.succeeded:
            await self.release_fetch(lease)
            return None
        return lease

    async def fetch_claimed(self, repo: str, name: str) -> bool:
        """Is a fetch of ``repo``'s ``name`` in progress somewhere?"""
        return await self._get(self.keys.mirror_fetch(repo, name)) is not None

    async def refresh_fetch(self, lease: int) -> bool:
        """Keep a claim alive; False if its lease has expired."""
        return await self.kv.refresh_lease(lease) > 0

    async def release_fetch(self, lease: int) -> None:
        with contextlib.suppress(KVError):  # it expires on its own
            await self.kv.revoke_lease(lease)
