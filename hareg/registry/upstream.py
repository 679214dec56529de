"""What the pull-through cache needs of an upstream registry, and its errors.

The service layer knows no HTTP library: the client that speaks to a remote
registry (the token flow, TLS, the outbound proxy) is an adapter
(``hareg/upstream/client.py``) that ``hareg serve`` builds and passes in, as
it does a blob store driver.  Every error names the upstream (its URL, never
its credentials) so a client told "unavailable" knows which registry failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final, Protocol

# The manifest media types a pull asks for, most specific first (the Accept
# header of every manifest request): OCI and Docker images and indexes.
MANIFEST_ACCEPT: Final = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


class UpstreamError(Exception):
    """The upstream could not answer.  ``unreachable``: down, slow, 5xx, 429 or
    a broken transfer, the failures a stale cached answer may cover."""

    unreachable: bool = True

    def __init__(self, upstream: str, message: str, *, retry_after: float | None = None) -> None:
        self.upstream = upstream
        self.retry_after = retry_after
        super().__init__(f"upstream {upstream}: {message}")


class UpstreamNotFound(UpstreamError):
    """The upstream answered 404: it has no such manifest or blob."""

    unreachable = False


class UpstreamDenied(UpstreamError):
    """The upstream refused our credentials (401 after the token flow, or 403)."""

    unreachable = False


class UpstreamRateLimited(UpstreamError):
    """429 from the upstream; ``retry_after`` in seconds when it said."""


class UpstreamInvalid(UpstreamError):
    """The upstream answered something that cannot be right (a body that does
    not hash to the digest it was asked for, a manifest too large)."""


@dataclass(frozen=True, slots=True)
class UpstreamManifestHead:
    digest: str | None  # Docker-Content-Digest, when the upstream sent one
    media_type: str
    size: int | None


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: str | None  # Docker-Content-Digest, when the upstream sent one (not yet verified)
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class UpstreamReferrers:
    body: bytes  # one page of the referrers index, as sent
    # The query of the upstream's next page (from its ``Link: <...>; rel="next"``
    # on the same path), None on the last page.
    next_page: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamBlob:
    size: int | None  # Content-Length, when the upstream sent one
    chunks: AsyncIterator[bytes]  # raises UpstreamError on a broken or short transfer


class Upstream(Protocol):
    """One remote registry.  ``path`` is the repository path at the remote
    (the pulled name without the mirror's prefix); ``reference`` a tag or digest."""

    @property
    def name(self) -> str:
        """The remote's URL, for messages and logs (no credentials)."""
        ...

    async def head_manifest(self, path: str, reference: str) -> UpstreamManifestHead: ...

    async def get_manifest(self, path: str, reference: str, max_bytes: int) -> UpstreamManifest: ...

    async def head_blob(self, path: str, digest: str) -> int | None:
        """The blob's size (Content-Length) if the upstream has it; UpstreamNotFound if not."""
        ...

    async def get_referrers(
        self, path: str, digest: str, artifact_type: str | None, max_bytes: int, page: str | None = None
    ) -> UpstreamReferrers:
        """One page of the upstream's referrers index of ``digest``: the first,
        or the one whose query ``page`` is (an earlier page's ``next_page``)."""
        ...

    def get_blob(self, path: str, digest: str) -> AbstractAsyncContextManager[UpstreamBlob]:
        """The blob's bytes as they arrive; the response is released on exit."""
        ...

    async def close(self) -> None: ...
