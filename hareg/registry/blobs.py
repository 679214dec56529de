"""Blob reads, deletes and cross-repository mounts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from hareg.clock import Clock
from hareg.kv.base import KVError, KVNoSpace
from hareg.metadata.records import LinkRecord
from hareg.metadata.store import MetadataStore, ReferencedBy
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RegistryError, still_referenced, unavailable
from hareg.registry.names import check_name
from hareg.registry.results import BlobInfo
from hareg.storage.base import BlobNotFound, BlobStore

# How long a presigned blob URL stays valid unless the caller says otherwise.
DEFAULT_REDIRECT_EXPIRY = 20 * 60
# A mount whose link here is collected between its read and its touch reads again.
_MOUNT_TRIES = 2


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

    async def stat(self, repo: str, digest_text: str) -> BlobInfo:
        """The blob as the repository sees it (from the metadata alone, never
        the blob store); BLOB_UNKNOWN unless it is linked there."""
        check_name(repo)
        digest = str(parse_digest(digest_text))
        link = await self.meta.get_link(repo, digest)
        if link is None or not await self._in_use(repo, digest, link):
            raise _unknown(repo, digest)
        return BlobInfo(digest, link.size)

    async def _in_use(self, repo: str, digest: str, link: LinkRecord) -> bool:
        """Re-touch ``link`` if it is old, so a push that follows has the
        collector's grace (docs/gc.md, G2b); False if it was collected just now."""
        if self.clock.now() - link.touched <= self.touch_after:
            return True
        try:
            return await self.meta.touch_link(repo, digest, link)
        except KVError as exc:
            if not self.meta.etcd_known_down() and not isinstance(exc, KVNoSpace):
                # A lost reply or a timeout is not an outage: collection may go
                # on, so "exists" without the grace guarantee could mislead a push.
                raise unavailable("could not record the use of this blob; retry") from None
            # etcd has no quorum, or no space (NOSPACE: every push is refused
            # until it has, and a manifest's compares still check its blobs):
            # serve the read, pulls must work.
            return True

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
            raise _unknown(repo, digest)

    async def mount(self, repo: str, digest_text: str, from_repo: str) -> BlobInfo | None:
        """Link ``from_repo``'s blob into ``repo``; None when it cannot be mounted
        (the caller then starts an ordinary upload, as the spec says)."""
        check_name(repo)
        digest = str(parse_digest(digest_text))
        try:
            check_name(from_repo)
        except RegistryError:
            return None
        # One read decides (is it linked here already? in from_repo?), one
        # transaction links it: two etcd round trips.
        for _ in range(_MOUNT_TRIES):
            mounted = await self.meta.find_or_mount(repo, digest, from_repo)
            if mounted is None:
                return None
            if not mounted.existed:
                return BlobInfo(digest, mounted.link.size)
            # Already linked here: answered like a HEAD, touching an old link so the
            # push that follows has the same grace guarantee (docs/gc.md, G2b).
            if await self._in_use(repo, digest, mounted.link):
                # Still a write request: refused while the cluster is read-only, as any write.
                await self.meta.check_writes_allowed()
                return BlobInfo(digest, mounted.link.size)
            # Collected between the read and the touch: mount it anew.
        return None


def _unknown(repo: str, digest: str) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UNKNOWN, f"blob {digest} is not in repository {repo}")


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
