"""The metadata layer's own refusals (KV errors pass through unchanged)."""

from __future__ import annotations


class MetadataError(Exception):
    """Base of the metadata layer's own refusals (KV errors pass through)."""


class MissingReferences(MetadataError):
    def __init__(self, blobs: list[str], manifests: list[str]) -> None:
        super().__init__(f"missing blobs {blobs}, missing manifests {manifests}")
        self.blobs = blobs
        self.manifests = manifests


class ReferencedBy(MetadataError):
    def __init__(self, digests: list[str]) -> None:
        super().__init__(f"still referenced by {digests}")
        self.digests = digests


class ImmutableTag(MetadataError):
    """The tag matches one of the repository's immutability patterns: it may
    not move to another digest nor be deleted."""

    def __init__(self, repo: str, tag: str, pattern: str) -> None:
        super().__init__(f"tag {tag} in {repo} is immutable (pattern {pattern!r})")
        self.repo = repo
        self.tag = tag
        self.pattern = pattern


class BlobCollected(MetadataError):
    """The blob is being (or was just) garbage collected: upload it again."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} is being garbage collected")
        self.digest = digest


class Contended(MetadataError):
    """Gave up after too many concurrent changes to the same keys."""
