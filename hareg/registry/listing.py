"""Tag lists, the catalog and the referrers API, each answered a page at a time.

A listing never returns more than ``max_page_size`` entries (a client's ``n``
above it is clamped, an absent ``n`` means the maximum), so no request makes a
replica build an answer proportional to the whole registry; the HTTP layer
adds the ``Link`` header that leads to the next page.  The referrers index is
bounded by the size of its JSON instead (descriptors carry annotations of
varying size): a page holds descriptors up to ``REFERRERS_PAGE_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from hareg.metadata.store import MetadataStore
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.manifest_format import MAX_MANIFEST_BYTES, OCI_INDEX
from hareg.registry.names import check_name

DEFAULT_MAX_PAGE_SIZE: Final = 1000
# A referrers page is an image index; keep it within the size of a manifest the
# registry itself accepts (4 MiB), so any client that can pull a manifest can read it.
REFERRERS_PAGE_BYTES: Final = MAX_MANIFEST_BYTES

_MAX_FILTERED_READS: Final = 16


@dataclass(frozen=True, slots=True)
class ReferrersPage:
    index: dict[str, Any]  # the image index of this page's descriptors
    next_last: str | None  # the last digest of this page when more follow


class ListingService:
    def __init__(
        self,
        meta: MetadataStore,
        *,
        max_page_size: int = DEFAULT_MAX_PAGE_SIZE,
        referrers_page_bytes: int = REFERRERS_PAGE_BYTES,
    ) -> None:
        if max_page_size < 1:
            raise ValueError(f"max_page_size must be at least 1, not {max_page_size}")
        self.meta = meta
        self.max_page_size = max_page_size
        self.referrers_page_bytes = referrers_page_bytes

    def page_size(self, n: int | None) -> int:
        """The number of entries a page holds when the client asks for ``n``."""
        return self.max_page_size if n is None else min(n, self.max_page_size)

    async def tags(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Up to ``page_size(n)`` tags after ``last`` in byte order, and whether
        more follow.  NAME_UNKNOWN for a repository that does not exist, whatever
        ``n`` and ``last`` say."""
        check_name(repo)
        limit = self.page_size(n)
        tags, more = await self.meta.list_tags(repo, last, limit) if limit else ([], False)
        if not tags and not await self.meta.repo_exists(repo):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {repo} is not known to the registry")
        return tags, more

    async def catalog(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        limit = self.page_size(n)
        if limit == 0:
            return [], False
        return await self.meta.list_repos(last, limit)

    async def visible_catalog(
        self, n: int | None, last: str | None, visible: Callable[[str], bool]
    ) -> tuple[list[str], str | None]:
        """A page of the repository names ``visible`` admits (the caller's
        pullable repositories) after ``last``, and where the next page starts
        (None: no more).  The page is filled from further reads, so hidden
        names leave no gaps; a caller who may see few repositories of many
        reads at most ``_MAX_FILTERED_READS`` pages a request, then is linked
        on (a short, even empty, page with a ``Link`` is allowed)."""
        limit = self.page_size(n)
        if limit == 0:
            return [], None
        out: list[str] = []
        for _ in range(_MAX_FILTERED_READS):
            names, more = await self.meta.list_repos(last, limit)
            for index, name in enumerate(names):
                if visible(name):
                    out.append(name)
                    if len(out) == limit:
                        return out, name if (more or index < len(names) - 1) else None
            if not more or not names:
                return out, None
            last = names[-1]
        return out, last

    async def referrers(
        self, repo: str, digest_text: str, artifact_type: str | None, last: str | None = None
    ) -> ReferrersPage:
        """An image index of the manifests whose subject is ``digest`` (never a
        404), the ones whose digest sorts after ``last``, up to the page bound."""
        check_name(repo)
        subject = str(parse_digest(digest_text))
        descriptors: list[dict[str, Any]] = []
        # The index's own fields and the list brackets: well under 200 bytes.
        size = 200
        for digest, rec in await self.meta.list_referrers(repo, subject):
            if last is not None and digest <= last:
                continue
            if artifact_type is not None and rec.artifact_type != artifact_type:
                continue
            d: dict[str, Any] = {"mediaType": rec.media_type, "digest": digest, "size": rec.size}
            if rec.artifact_type:
                d["artifactType"] = rec.artifact_type
            if rec.annotations:
                d["annotations"] = rec.annotations
            size += len(json.dumps(d)) + 2  # ", " between descriptors
            if descriptors and size > self.referrers_page_bytes:
                index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
                return ReferrersPage(index, descriptors[-1]["digest"])
            descriptors.append(d)
        return ReferrersPage({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}, None)
