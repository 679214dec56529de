"""Pushing and pulling a small OCI image with a plain HTTP client."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any
from urllib.parse import urljoin

import aiohttp

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(session: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    """POST then PUT (the spec's two-step monolithic upload)."""
    digest = sha256(data)
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        location = urljoin(base + "/", resp.headers["Location"])
    sep = "&" if "?" in location else "?"
    async with session.put(
        f"{location}{sep}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def push_image(session: aiohttp.ClientSession, base: str, repo: str, tag: str) -> dict[str, Any]:
    layer = os.urandom(256 * 1024)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    blobs = {sha256(layer): layer, sha256(config): config}
    for data in blobs.values():
        await push_blob(session, base, repo, data)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
        }
    ).encode()
    async with session.put(
        f"{base}/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    ) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == sha256(manifest)
    return {"manifest": manifest, "blobs": blobs}


async def pull_image(
    session: aiohttp.ClientSession, base: str, repo: str, tag: str, image: dict[str, Any]
) -> None:
    async with session.get(f"{base}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}) as resp:
        assert resp.status == 200, f"{base}: {resp.status} {await resp.text()}"
        assert await resp.read() == image["manifest"]
    for digest, data in image["blobs"].items():
        # A 307 to the object store is followed (presigned URL) unless the replica streams.
        async with session.get(f"{base}/v2/{repo}/blobs/{digest}") as resp:
            assert resp.status == 200, f"{base}: {resp.status} {await resp.text()}"
            body = await resp.read()
        assert sha256(body) == digest and body == data
