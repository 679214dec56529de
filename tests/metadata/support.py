"""Helpers the metadata tests share: digests and manifest records."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from hareg.kv.base import KV, Put, TxnOp
from hareg.metadata.keys import Keys
from hareg.metadata.records import ManifestRecord
from hareg.metadata.store import MetadataStore

REPLICA = "replica-a"  # the ``meta`` fixture's replica name
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
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


def old_map(**fields: Any) -> bytes:
    """A record as versions before the compact encoding wrote it: a map of field names."""
    return msgpack.packb(fields, use_bin_type=True)


async def old_registry(kv: KV, keys: Keys) -> dict[str, str]:
    """What an earlier version left in etcd: two blobs, an image, an index
    over it and a signature (a referrer), all as maps and without index entries."""
    d = {n: digest(n) for n in ("config", "layer", "image", "index", "signature")}
    ops: list[TxnOp] = [Put(keys.repo("old"), old_map(created=1.0))]
    for blob in ("config", "layer"):
        ops += [
            Put(keys.blob(d[blob]), old_map(size=1, created=1.0, state="live")),
            Put(keys.link("old", d[blob]), old_map(size=1, created=1.0, touched=1.0)),
        ]

    def manifest(media_type: str, blobs: list[str], children: list[str], subject: str | None) -> bytes:
        return old_map(
            media_type=media_type,
            size=2,
            created=1.0,
            blobs=blobs,
            manifests=children,
            subject=subject,
            artifact_type=None,
            annotations={"note": "old"},
            body=b"{}",
        )

    ops += [
        Put(keys.manifest("old", d["image"]), manifest(OCI_MANIFEST, [d["config"], d["layer"]], [], None)),
        Put(keys.manifest("old", d["index"]), manifest(OCI_INDEX, [], [d["image"]], None)),
        Put(keys.manifest("old", d["signature"]), manifest(OCI_MANIFEST, [d["config"]], [], d["image"])),
        Put(
            keys.referrer("old", d["image"], d["signature"]),
            old_map(media_type=OCI_MANIFEST, size=2, artifact_type=None, annotations={"note": "old"}),
        ),
        Put(
            keys.tag("old", "v1"),
            old_map(digest=d["index"], seq=1, updated=1.0, replica="old", write_id="w"),
        ),
    ]
    await kv.txn([], ops)
    return d
