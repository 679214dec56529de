"""Blob reads, deletes and cross-repository mounts."""

from __future__ import annotations

from hareg.clock import Clock
from hareg.kv.base import KVError
from hareg.metadata.store import MetadataStore, ReferencedBy
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RegistryError, still_referenced, unavailable
from hareg.registry.names import check_name
from hareg.registry.results import BlobInfo
from hareg.storage.base import BlobStore


class BlobService:
    def __init__(
        self, meta: MetadataStore, store: BlobStore, clock: Clock, *, touch_after: float = 1800.0
    ) -> None:
        self.meta = meta
        self.store = store
        self.clock = clock
        # A link found by HEAD/GET is re-touched when older than this (half the
        # collector's grace), so "layer already exists" holds for a push that
        # follows; at most one etcd write per link per touch_after.
        self.touch_after = touch_after

    async def stat(self, repo: str, digest_text: str) -> BlobInfo:
        """The blob as the repository sees it; BLOB_UNKNOWN unless it is linked there."""
        check_name(repo)
        digest = str(parse_digest(digest_text))
        unknown = RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in repository {repo}")
        link = await self.meta.get_link(repo, digest)
        if link is None:
            raise unknown
        if self.clock.now() - link.touched > self.touch_after:
            try:
                if not await self.meta.touch_link(repo, digest, link):
                    raise unknown  # collected just now
            except KVError:
                if not self.meta.etcd_known_down():
                    # A lost reply or a timeout is not an outage: collection may go
                    # on, so "exists" without the grace guarantee could mislead a push.
                    raise unavailable("could not record the use of this blob; retry") from None
                # etcd has no quorum: serve the read (pulls must work); no
                # collection can run without etcd either.
        return BlobInfo(digest, link.size)

    async def delete(self, repo: str, digest_text: str) -> None:
        """Unlink a blob from a repository.  Refused while a manifest there
        references it, so no reachable manifest loses a blob (invariant 2 of docs/invariants.md).
        The bytes are reclaimed by garbage collection once no repository links them."""
        check_name(repo)
        digest = str(parse_digest(digest_text))
        try:
            removed = await self.meta.remove_link(repo, digest)
        except ReferencedBy as exc:
            raise still_referenced(f"blob {digest}", repo, exc.digests, "manifest(s)", "manifests") from None
        if not removed:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in repository {repo}")

    async def mount(self, repo: str, digest_text: str, from_repo: str) -> BlobInfo | None:
        """Link ``from_repo``'s blob into ``repo``; None when it cannot be mounted
        (the caller then starts an ordinary upload, as the spec says)."""
        check_name(repo)
        digest = str(parse_digest(digest_text))
        try:
            check_name(from_repo)
        except RegistryError:
            return None
        try:
            # Already linked here: answered like a HEAD, touching an old link so the
            # push that follows has the same grace guarantee (docs/gc.md, G2b).
            info = await self.stat(repo, digest)
        except RegistryError as exc:
            if exc.code is not ErrorCode.BLOB_UNKNOWN:
                raise
        else:
            # Still a write request: refused while the cluster is read-only, as any write.
            await self.meta.check_writes_allowed()
            return info
        size = await self.meta.mount_blob(repo, digest, from_repo)
        return BlobInfo(digest, size) if size is not None else None
