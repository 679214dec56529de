"""Manifest pushes, pulls and deletes, by tag or by digest."""

from __future__ import annotations

from collections.abc import Sequence

from hareg.clock import Clock
from hareg.ids import IdSource
from hareg.metadata.records import ManifestRecord
from hareg.metadata.store import BlobCollected, ImmutableTag, MetadataStore, MissingReferences, ReferencedBy
from hareg.registry.digests import DEFAULT_ALGORITHM, Digest, digest_bytes
from hareg.registry.errors import ErrorCode, RegistryError, unavailable
from hareg.registry.manifest_format import MAX_MANIFEST_BYTES, NO_URLS, UrlPolicy, parse_manifest
from hareg.registry.names import check_name, check_tag, is_tag, parse_reference
from hareg.registry.results import ManifestContent, ManifestPushed
from hareg.registry.streams import one_chunk, read_all
from hareg.registry.tags import immutable_error
from hareg.storage.base import BlobStore


def _unknown(repo: str, reference: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference} is not in repository {repo}")


class ManifestService:
    def __init__(
        self,
        meta: MetadataStore,
        store: BlobStore,
        clock: Clock,
        ids: IdSource,
        *,
        urls: UrlPolicy = NO_URLS,
    ) -> None:
        self.meta = meta
        self.urls = urls  # which descriptor ``urls`` a pushed manifest may carry
        self.store = store
        self.clock = clock
        self.ids = ids

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
            body = await read_all(self.store.read(digest), MAX_MANIFEST_BYTES)
        return ManifestContent(digest, record.media_type, body)

    async def put(
        self,
        repo: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        extra_tags: Sequence[str] = (),
    ) -> ManifestPushed:
        check_name(repo)
        ref = parse_reference(reference)
        parsed = parse_manifest(body, content_type, self.urls)
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
                await self.meta.check_references(repo, record)
                await self.meta.check_tag_moves(repo, digest, tags)
                # Large manifests are blobs in the store, written before any metadata points at them.
                upload_id = self.ids.new_id()
                await self.store.upload_start(upload_id)
                try:
                    await self.store.upload_write(upload_id, 0, one_chunk(body))
                    await self.store.upload_commit(upload_id, digest)
                except BaseException:
                    await self.store.upload_abort(upload_id)
                    raise
            await self.meta.put_manifest(repo, digest, record, tags, body_present=body_present)
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
            raise RegistryError(
                ErrorCode.DENIED,
                f"manifest {ref} is referenced by index(es) in {repo}: {', '.join(exc.digests[:5])}; delete those first",
                detail={"indexes": exc.digests[:100]},
                status=409,
            ) from None
        if not deleted:
            raise _unknown(repo, reference)
