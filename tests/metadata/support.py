"""Helpers the metadata tests share: digests and manifest records."""

from __future__ import annotations

import hashlib

from hareg.metadata.records import ManifestRecord
from hareg.metadata.store import MetadataStore

REPLICA = "replica-a"  # the ``meta`` fixture's replica name
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "sha256:" + hashlib.sha256(b"config").hexdigest()


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def record() -> ManifestRecord:
    return ManifestRecord(media_type=OCI_MANIFEST, size=100, created=0.0, blobs=(CONFIG,), body=b"{}")


async def manifests(meta: MetadataStore, repo: str, *names: str) -> list[str]:
    """Push untagged manifests ``names`` (and their config blob) into ``repo``."""
    await meta.add_blob(repo, CONFIG, 1)
    out = [digest(n) for n in names]
    for d in out:
        await meta.put_manifest(repo, d, record())
    return out
