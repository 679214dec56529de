"""Tag lists, the catalog and the referrers API."""

from __future__ import annotations

from typing import Any

from hareg.metadata.store import MetadataStore
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.manifest_format import OCI_INDEX
from hareg.registry.names import check_name


class ListingService:
    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta

    async def tags(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """Up to ``n`` tags after ``last`` in byte order, and whether more follow."""
        check_name(repo)
        if n == 0:
            return [], False
        tags, more = await self.meta.list_tags(repo, last, n or 0)
        if not tags and last is None and not await self.meta.repo_exists(repo):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {repo} is not known to the registry")
        return tags, more

    async def catalog(self, n: int | None, last: str | None) -> tuple[list[str], bool]:
        if n == 0:
            return [], False
        return await self.meta.list_repos(last, n or 0)

    async def referrers(self, repo: str, digest_text: str, artifact_type: str | None) -> dict[str, Any]:
        """An image index of the manifests whose subject is ``digest`` (never a 404)."""
        check_name(repo)
        subject = str(parse_digest(digest_text))
        descriptors = []
        for digest, rec in await self.meta.list_referrers(repo, subject):
            if artifact_type is not None and rec.artifact_type != artifact_type:
                continue
            d: dict[str, Any] = {"mediaType": rec.media_type, "digest": digest, "size": rec.size}
            if rec.artifact_type:
                d["artifactType"] = rec.artifact_type
            if rec.annotations:
                d["annotations"] = rec.annotations
            descriptors.append(d)
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
