"""Image manifests for service-layer tests (no HTTP)."""

from __future__ import annotations

import hashlib
import json

OCI = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(config: bytes, layers: list[bytes], note: str = "") -> bytes:
    """An OCI image manifest of ``config`` and ``layers``, made unique by ``note``."""

    def desc(mt: str, b: bytes) -> dict[str, object]:
        return {"mediaType": mt, "digest": digest(b), "size": len(b)}

    doc = {
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar", b) for b in layers],
        "annotations": {"note": note},
    }
    return json.dumps(doc).encode()
