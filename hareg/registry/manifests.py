"""Manifest pushes, pulls and deletes, by tag or by digest."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hareg.clock import Clock
from hareg.ids import IdSource
from hareg.metadata.records import ManifestRecord
from hareg.metadata.store import BlobCollected, ImmutableTag, MetadataStore, MissingReferences, ReferencedBy
from hareg.registry.digests import DEFAULT_ALGORITHM, Digest, digest_bytes, new_hasher
from hareg.registry.errors import ErrorCode, RegistryError, still_referenced, unavailable
from hareg.registry.hashing import Hashing, InlineHashing, feed
from hareg.registry.manifest_format import (
    MAX_MANIFEST_BYTES,
    NO_URLS,
    ParsedManifest,
    UrlPolicy,
    parse_manifest,
)
from hareg.registry.names import check_name, check_tag, is_tag, parse_reference
from hareg.registry.results import ManifestContent, ManifestPushed
from hareg.registry.streams import one_chunk
from hareg.registry.tag_lifecycle import immutable_error
from hareg.storage.base import BlobNotFound, BlobStore

log = logging.getLogger("hareg.manifests")


def _unknown(repo: str, reference: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in repository {repo}")


@dataclass(frozen=True, slots=True)
class ManifestLimits:
    """limits.maxManifestReferences and limits.maxManifestAnnotationBytes (0: unlimited)."""

    max_references: int = 0
    max_annotation_bytes: int = 0


def check_manifest_limits(parsed: ParsedManifest, limits: ManifestLimits) -> None:
    """Refuse (400 MANIFEST_INVALID, naming the field) a manifest whose metadata
    would make its etcd transaction larger than etcd accepts: each reference is
    one compare in it, and the annotations are stored in it (twice with a
    subject).  Descriptors' own annotations live only in the body, which
    MAX_MANIFEST_BYTES bounds."""
    references = len(parsed.blobs) + len(parsed.manifests)
    if limits.max_references and references > limits.max_references:
        raise RegistryError(
            ErrorCode.MANIFEST_INVALID,
            f"manifest references {references} blobs and manifests; limits.maxManifestReferences "
            f"is {limits.max_references}",
            detail={"limit": "limits.maxManifestReferences", "references": references},
        )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in parsed.annotations.items())
    if limits.max_annotation_bytes and size > limits.max_annotation_bytes:
        raise RegistryError(
            ErrorCode.MANIFEST_INVALID,
            f"manifest annotations total {size} bytes; limits.maxManifestAnnotationBytes "
            f"is {limits.max_annotation_bytes}",
            detail={"limit": "limits.maxManifestAnnotationBytes", "annotationBytes": size},
        )


class ManifestService:
    def __init__(
        self,
        meta: MetadataStore,
        store: BlobStore,
        clock: Clock,
        ids: IdSource,
        limits: ManifestLimits | None = None,
        *,
        hashing: Hashing | None = None,  # where stored bodies are re-hashed on pull
        urls: UrlPolicy = NO_URLS,
    ) -> None:
        self.meta = meta
        self.urls = urls  # which descriptor ``urls`` a pushed manifest may carry
        self.store = store
        self.clock = clock
        self.ids = ids
        self.hashing: Hashing = hashing or InlineHashing()
        self.limits = limits or ManifestLimits()

    async def resolve(self, repo: str, reference: str) -> tuple[str, ManifestRecord]:
        """The digest and record a tag or digest names in a repository."""
        check_name(repo)
        if ":" not in reference and not is_tag(reference):
            # No tag of that name can exist: a pull of it is a plain 404, as the
            # conformance suite expects for ".INVALID_MANIFEST_NAME".
            raise _unknown(repo, reference[:150])
        ref = parse_reference(reference)
        if isinstance(ref, Digest):
            digest = str(ref)
            record = await self.meta.get_manifest(repo, digest)
        else:
            found = await self.meta.get_tagged_manifest(repo, ref)
            if found is None:
                raise _unknown(repo, reference)
            digest, record = found
        if record is None:
            raise _unknown(repo, reference)
        return digest, record

    async def get(self, repo: str, reference: str) -> ManifestContent:
        digest, record = await self.resolve(repo, reference)
        body = record.body
        if body is None:
            body = await self._stored_body(repo, digest)
        return ManifestContent(digest, record.media_type, body)

    async def _stored_body(self, repo: str, digest: str) -> bytes:
        """A large manifest's body from the blob store, verified against its
        digest: damaged bytes are never served (invariant 3 of docs/invariants.md).  Missing or
        damaged, the manifest is unknown until it is pushed again (a push
        stores the body anew once ``hareg fsck --repair`` removed the damaged one)."""
        hasher = new_hasher(digest.split(":", 1)[0])
        parts: list[bytes] = []
        total = 0
        try:
            async for chunk in self.store.read(digest):
                total += len(chunk)
                if total > MAX_MANIFEST_BYTES:
                    break  # no manifest is larger: damaged, and not worth reading on
                await feed(self.hashing, hasher, chunk)
                parts.append(chunk)
        except BlobNotFound:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN,
                f"the stored body of manifest {digest} is not in the blob store (removed as damaged by "
                "hareg fsck --repair, or lost); push the manifest again",
            ) from None
        if total <= MAX_MANIFEST_BYTES and f"{hasher.name}:{hasher.hexdigest()}" == digest:
            return b"".join(parts)
        log.error(
            "stored manifest body does not match its digest; refused",
            extra={"fields": {"repo": repo, "digest": digest, "size": total}},
        )
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            f"the stored body of manifest {digest} is damaged (its bytes do not hash to its digest) and is "
            "not served; run hareg fsck --repair, then push the manifest again",
        )

    async def put(
        self,
        repo: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: Sequence[str] = (),
        *,
        sparse: bool = False,  # the pull-through cache's (metadata put_manifest)
    ) -> ManifestPushed:
        check_name(repo)
        ref = parse_reference(reference)
        parsed = parse_manifest(body, content_type, self.urls)
        check_manifest_limits(parsed, self.limits)
        tags: list[str] = []
        if isinstance(ref, Digest):
            digest = digest_bytes(body, ref.algorithm)
            if digest != str(ref):
                raise RegistryError(
                    ErrorCode.DIGEST_INVALID,
                    f"manifest body has digest {digest}, not {ref}",
                    detail={"expected": str(ref), "actual": digest},
                )
        else:
            digest = digest_bytes(body, DEFAULT_ALGORITHM)
            tags.append(ref)
        for extra in extra_tags:
            # ``?tag=a&tag=a`` names one tag: duplicates are dropped, first order kept.
            if check_tag(extra) not in tags:
                tags.append(extra)
        inline = len(body) <= self.meta.inline_limit
        record = ManifestRecord(
            media_type=parsed.media_type,
            size=len(body),
            created=self.clock.now(),
            blobs=parsed.blobs,
            manifests=parsed.manifests,
            subject=parsed.subject.digest if parsed.subject else None,
            artifact_type=parsed.artifact_type,
            annotations=parsed.annotations,
            body=body if inline else None,
        )

        async def body_present() -> bool:
            return await self.store.stat(digest) is not None

        try:
            if not inline:
                # Refuse a push with missing references before its bytes reach the store.
                if not sparse:
                    await self.meta.check_references(repo, record)
                await self.meta.check_tag_moves(repo, digest, tags)
                # Large manifests are blobs in the store, written before any metadata points at them.
                upload_id = self.ids.new_id()
                await self.store.upload_start(upload_id)
                try:
                    await self.store.upload_write(upload_id, 0, one_chunk(body))
                    await self.store.upload_commit(upload_id, digest, len(body))
                except BaseException:
                    await self.store.upload_abort(upload_id)
                    raise
            await self.meta.put_manifest(repo, digest, record, tags, body_present=body_present, sparse=sparse)
        except BlobCollected:
            raise unavailable(
                f"the stored body of manifest {digest} was being garbage collected; push it again"
            ) from None
        except MissingReferences as exc:
            missing = exc.blobs + exc.manifests
            raise RegistryError(
                ErrorCode.MANIFEST_BLOB_UNKNOWN,
                f"manifest references {len(missing)} blob(s) or manifest(s) not in repository {repo}: "
                + ", ".join(missing[:5]),
                detail={"blobs": exc.blobs[:100], "manifests": exc.manifests[:100]},
            ) from None
        except ImmutableTag as exc:
            raise immutable_error(exc) from None
        return ManifestPushed(digest, tuple(tags), record.subject)

    async def delete(self, repo: str, reference: str) -> None:
        check_name(repo)
        ref = parse_reference(reference)
        try:
            if not isinstance(ref, Digest):
                if not await self.meta.delete_tag(repo, ref):
                    raise _unknown(repo, reference)
                return
            deleted = await self.meta.delete_manifest(repo, str(ref))
        except ImmutableTag as exc:
            raise immutable_error(exc) from None
        except ReferencedBy as exc:
            raise still_referenced(f"manifest {ref}", repo, exc.digests, "index(es)", "indexes") from None
        if not deleted:
            raise _unknown(repo, reference)
