"""Blob reads, deletes and cross-repository mounts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from hareg.clock import Clock
from hareg.kv.base import KVError, KVNoSpace
from hareg.metadata.store import MetadataStore, ReferencedBy
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RegistryError, still_referenced, unavailable
from hareg.registry.names import check_name
from hareg.registry.results import BlobInfo
from hareg.storage.base import BlobNotFound, BlobStore

# How long a presigned blob URL stays valid unless the caller says otherwise.
DEFAULT_REDIRECT_EXPIRY = 20 * 60


# How a blob GET is served (BlobService.open): one of these three.
@dataclass(frozen=True, slots=True)
class BlobRedirect:
    """Redirect the client to ``url`` (a presigned URL of the object store),
    which serves the bytes and the client's Range itself."""

    url: str


@dataclass(frozen=True, slots=True, kw_only=True)  # three ints: named at every call
class BlobStream:
    """Send ``length`` bytes of the blob from ``offset``, read from the store."""

    chunks: AsyncIterator[bytes]
    offset: int
    length: int
    size: int  # of the whole blob


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobFile:
    """Send the local file ``path`` (sendfile)."""

    path: str
    size: int


BlobSource = BlobRedirect | BlobStream | BlobFile


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

    async def stat(self, repo: str, digest_text: str, *, fresh: bool = False) -> BlobInfo:
        """The blob as the repository sees it; BLOB_UNKNOWN unless it is linked
        there.  ``fresh``: read from etcd, never a stale cache (for a mount)."""
        check_name(repo)
        digest = str(parse_digest(digest_text))
        unknown = RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in repository {repo}")
        link = await self.meta.get_link(repo, digest, fresh=fresh)
        if link is None:
            raise unknown
        if self.clock.now() - link.touched > self.touch_after:
            try:
                if not await self.meta.touch_link(repo, digest, link):
                    raise unknown  # collected just now
            except KVError as exc:
                if not self.meta.etcd_known_down() and not isinstance(exc, KVNoSpace):
                    # A lost reply or a timeout is not an outage: collection may go
                    # on, so "exists" without the grace guarantee could mislead a push.
                    raise unavailable("could not record the use of this blob; retry") from None
                # etcd has no quorum, or no space (NOSPACE: every push is refused
                # until it has, and a manifest's compares still check its blobs):
                # serve the read, pulls must work.
        return BlobInfo(digest, link.size)

    async def open(
        self,
        info: BlobInfo,
        *,
        byte_range: tuple[int, int] | None = None,
        disable_redirect: bool = False,
        redirect_expiry: int = DEFAULT_REDIRECT_EXPIRY,
    ) -> BlobSource:
        """How to serve a GET of the blob ``stat`` returned: a redirect to a
        presigned URL (unless ``disable_redirect``, or the store cannot sign
        one), else the local file (sendfile), else a stream of the bytes.

        ``byte_range`` is the (offset, length) the caller chose from the
        client's Range (the stream reads only those bytes; the file and the
        redirect serve the range themselves).  A HEAD needs none of this: it
        is answered from ``stat`` (never redirected: a presigned URL is
        signed for GET).  Bytes the metadata links but the store no longer
        has are BLOB_UNKNOWN, told before any of the response is sent."""
        if not disable_redirect:
            url = await self.store.presign(info.digest, redirect_expiry)
            if url is not None:
                return BlobRedirect(url)
        path = self.store.local_path(info.digest)
        if path is not None:
            return BlobFile(path=path, size=info.size)
        offset, length = byte_range if byte_range else (0, info.size)
        chunks = self.store.read(info.digest, offset, length)
        try:
            first = await anext(chunks, b"")
        except BlobNotFound:
            raise RegistryError(
                ErrorCode.BLOB_UNKNOWN, f"blob {info.digest} is missing from storage"
            ) from None
        return BlobStream(chunks=_prepend(first, chunks), offset=offset, length=length, size=info.size)

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
            # Read from etcd: a write acknowledged as "linked" must be linked, and
            # a cache served stale while etcd is down may still hold a link that
            # was deleted (docs/simulation.md finding 18).
            info = await self.stat(repo, digest, fresh=True)
        except RegistryError as exc:
            if exc.code is not ErrorCode.BLOB_UNKNOWN:
                raise
        else:
            # Still a write request: refused while the cluster is read-only, as any write.
            await self.meta.check_writes_allowed()
            return info
        size = await self.meta.mount_blob(repo, digest, from_repo)
        return BlobInfo(digest, size) if size is not None else None


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
