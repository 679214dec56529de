"""Helpers shared by the HTTP tests: content builders, pushes, error checks,
raw requests and a snapshot of everything the registry stores."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from hareg.clock import SystemClock
from hareg.http.app import init_app
from hareg.ids import RandomIds
from hareg.kv.base import prefix_end
from hareg.kv.etcd import EtcdKV
from hareg.processes.ports import free_port
from hareg.registry.access import AccessControl
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

Client = TestClient[web.Request, web.Application]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

# The error codes the distribution spec allows in an error body.
SPEC_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def descriptor(media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(content), "size": len(content), **extra}


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode()


def config_blob(name: str = "test") -> bytes:
    return dumps({"architecture": "amd64", "os": "linux", "author": name, "rootfs": {"type": "layers"}})


def image_manifest(
    config: bytes,
    layers: list[bytes],
    *,
    media_type: str | None = OCI_MANIFEST,
    config_type: str = OCI_CONFIG,
    layer_type: str = OCI_LAYER,
    artifact_type: str | None = None,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2}
    if media_type is not None:
        doc["mediaType"] = media_type
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    doc["config"] = descriptor(config_type, config)
    doc["layers"] = [descriptor(layer_type, layer) for layer in layers]
    if subject is not None:
        doc["subject"] = subject
    if annotations is not None:
        doc["annotations"] = annotations
    return dumps(doc)


def index_manifest(
    children: list[tuple[str, bytes]],
    *,
    media_type: str = OCI_INDEX,
    artifact_type: str | None = None,
    subject: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """An index of ``(media type, manifest body)`` children."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    doc["manifests"] = [
        descriptor(mt, body, platform={"architecture": "amd64", "os": "linux"}) for mt, body in children
    ]
    if subject is not None:
        doc["subject"] = subject
    if annotations is not None:
        doc["annotations"] = annotations
    return dumps(doc)


async def error_code(resp: ClientResponse, status: int) -> str:
    """Assert a spec JSON error with ``status``; return its code."""
    body = await resp.read()
    assert resp.status == status, (resp.status, body[:500])
    assert resp.content_type == "application/json", resp.content_type
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"], doc
    for entry in doc["errors"]:
        assert entry["code"] in SPEC_CODES, entry
        assert isinstance(entry.get("message", ""), str)
    code: str = doc["errors"][0]["code"]
    return code


async def expect_error(resp: ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert a spec JSON error with ``status`` and ``code``; return the first error entry."""
    got = await error_code(resp, status)
    assert got == code, (got, code)
    entry: dict[str, Any] = json.loads(await resp.read())["errors"][0]
    return entry


async def push_blob(client: Client, repo: str, data: bytes) -> str:
    """Single-POST monolithic upload."""
    digest = sha256(data)
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data)
    assert r.status == 201, (r.status, await r.text())
    return digest


async def start_upload(client: Client, repo: str, **params: str) -> str:
    """POST a new upload session; its Location."""
    r = await client.post(f"/v2/{repo}/blobs/uploads/", params=params)
    assert r.status == 202, (r.status, await r.text())
    location = r.headers["Location"]
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    return location


async def put_manifest(
    client: Client,
    repo: str,
    reference: str,
    body: bytes,
    media_type: str | None = OCI_MANIFEST,
    params: list[tuple[str, str]] | None = None,
) -> ClientResponse:
    headers = {"Content-Type": media_type} if media_type else {}
    return await client.put(f"/v2/{repo}/manifests/{reference}", data=body, headers=headers, params=params)


@dataclass
class Image:
    repo: str
    config: bytes
    layers: list[bytes]
    body: bytes
    digest: str
    media_type: str = OCI_MANIFEST
    blobs: list[str] = field(default_factory=list)


async def push_image(
    client: Client,
    repo: str,
    reference: str | None = None,
    *,
    seed: str = "x",
    layer_count: int = 2,
    media_type: str = OCI_MANIFEST,
    config_type: str | None = None,
    config: bytes | None = None,
    **manifest_args: Any,
) -> Image:
    """Push a config and layers, then a manifest referencing them (by
    ``reference``, or by its digest when None)."""
    docker = media_type == DOCKER_MANIFEST
    config = config if config is not None else config_blob(f"{repo}-{seed}")
    layers = [f"layer {i} of {repo} {seed}".encode() * 50 for i in range(layer_count)]
    blobs = [await push_blob(client, repo, b) for b in [config, *layers]]
    body = image_manifest(
        config,
        layers,
        media_type=media_type,
        config_type=config_type or (DOCKER_CONFIG if docker else OCI_CONFIG),
        layer_type=DOCKER_LAYER if docker else OCI_LAYER,
        **manifest_args,
    )
    digest = sha256(body)
    r = await put_manifest(client, repo, reference or digest, body, media_type)
    assert r.status == 201, (r.status, await r.text())
    assert r.headers["Docker-Content-Digest"] == digest
    return Image(repo, config, layers, body, digest, media_type, blobs)


# ------------------------------------------------------------------ raw HTTP


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def raw_request(
    client: Client,
    method: str,
    target: bytes,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    wait: float = 30.0,
    split_at: int | None = None,
) -> RawResponse:
    """Send exactly ``target`` as the request target (no client-side
    normalisation of dot segments or percent-encoding) and read the answer;
    with ``split_at``, the body's bytes from there come in a later TCP segment."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        head = [f"{method} ".encode() + target + b" HTTP/1.1", b"Host: registry.test", b"Connection: close"]
        all_headers = dict(headers or {})
        if body or method in ("PUT", "POST", "PATCH"):
            all_headers.setdefault("Content-Length", str(len(body)))
        head += [f"{k}: {v}".encode() for k, v in all_headers.items()]
        first, later = (body, b"") if split_at is None else (body[:split_at], body[split_at:])
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + first)
        await writer.drain()
        if later:
            await asyncio.sleep(0.2)  # pacing: the rest comes in a later segment
            writer.write(later)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()
    header_blob, _, rest = data.partition(b"\r\n\r\n")
    lines = header_blob.split(b"\r\n")
    assert data.startswith(b"HTTP/"), f"no HTTP response to {method} {target[:200]!r}: {data[:200]!r}"
    status = int(lines[0].split()[1])
    parsed: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        parsed.add(name.strip(), value.strip())
    if "Content-Length" in parsed:
        rest = rest[: int(parsed["Content-Length"])]
    return RawResponse(status, parsed, rest)


# ------------------------------------------------------------------ snapshots


@dataclass(frozen=True)
class Snapshot:
    keys: dict[bytes, tuple[bytes, int]]  # key -> (value, mod_revision)
    files: dict[str, int]  # path under the store root -> size (-1 for directories)


async def snapshot(registry: Registry) -> Snapshot:
    """Every etcd key under the registry's prefix and every file of its blob store,
    less the liveness keys a replica keeps on its own (pruner leadership, membership)."""
    keys_ = registry.meta.keys
    root = keys_.root + b"/"
    volatile = (keys_.setting("pruner-leader"), keys_.kind_prefix("n"))
    result = await registry.kv.range(root, prefix_end(root))
    keys = {kv.key: (kv.value, kv.mod_revision) for kv in result.kvs if not kv.key.startswith(volatile)}
    store = registry.store
    assert isinstance(store, FilesystemBlobStore)
    return Snapshot(keys, list_files(store.root))


def list_files(base: Path) -> dict[str, int]:
    """Every path under ``base``: its size, or -1 for a directory."""
    return {
        str(path.relative_to(base)): path.stat().st_size if path.is_file() else -1
        for path in sorted(base.rglob("*"))
    }


def blob_files(registry: Registry) -> set[str]:
    """Names of the committed blobs in the filesystem store."""
    store = registry.store
    assert isinstance(store, FilesystemBlobStore)
    return {p.name for p in (store.root / "blobs").rglob("*") if p.is_file()}


async def start_replicas(
    stack: AsyncExitStack, etcd_url: str, blobs: Path, prefix: str, count: int
) -> list[tuple[Registry, Client]]:
    """``count`` replicas in this process, each with its own etcd connection and
    cache, sharing one key prefix and one blob directory; stopped by ``stack``."""
    out = []
    for i in range(count):
        kv = await EtcdKV.connect([etcd_url])
        stack.push_async_callback(kv.close)
        store = FilesystemBlobStore(blobs)
        stack.push_async_callback(store.close)
        reg = Registry(kv, store, SystemClock(), RandomIds(), prefix=prefix, replica=f"r{i}")
        await reg.start()
        stack.push_async_callback(reg.stop)
        client: Client = TestClient(TestServer(init_app(reg)))
        await client.start_server()
        stack.push_async_callback(client.close)
        out.append((reg, client))
    return out


async def start_led_replicas(
    stack: AsyncExitStack,
    etcd_url: str,
    blobs: Path,
    prefix: str,
    *,
    access: AccessControl | None = None,
    headers: dict[str, str] | None = None,
    before_start: Callable[[Registry], None] | None = None,
) -> list[tuple[Registry, Client]]:
    """Two replicas that know their URLs (so they register in membership,
    which is how a request finds the pruner leader), once one leads and both
    are members: the leader first.  ``headers`` go with every request of the
    clients; everything is stopped by ``stack``."""
    replicas: list[tuple[Registry, Client]] = []
    for i in range(2):
        kv = await EtcdKV.connect([etcd_url])
        stack.push_async_callback(kv.close)
        store = FilesystemBlobStore(blobs)
        stack.push_async_callback(store.close)
        port = free_port()
        reg = Registry(
            kv,
            store,
            SystemClock(),
            RandomIds(),
            prefix=prefix,
            replica=f"r{i}",
            url=f"http://127.0.0.1:{port}",
        )
        if before_start is not None:
            before_start(reg)
        await reg.start()
        stack.push_async_callback(reg.stop)
        app = init_app(reg, access=access)
        client: Client = TestClient(TestServer(app, host="127.0.0.1", port=port), headers=headers or {})
        await client.start_server()
        stack.push_async_callback(client.close)
        replicas.append((reg, client))
    async with asyncio.timeout(30):
        while not any(reg.leadership.is_leader for reg, _ in replicas):
            await asyncio.sleep(0.05)
        while len(await replicas[0][0].membership.members()) < 2:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
    return sorted(replicas, key=lambda rc: not rc[0].leadership.is_leader)


NEXT_LINK_RE = re.compile(r'^<(?P<url>/v2/[^>]+)>; rel="next"$')


async def follow_links(client: Client, url: str, key: str) -> tuple[list[str], list[int], list[str]]:
    """Follow the ``Link: <...>; rel="next"`` headers of a paged listing from
    ``url``: every entry under ``key`` in order, the size of each page, and
    each next-page URL the registry gave."""
    collected: list[str] = []
    sizes: list[int] = []
    links: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        assert len(sizes) < 10_000, "pagination does not end"
        r = await client.get(next_url)
        assert r.status == 200, await r.text()
        page = (await r.json())[key]
        collected += page
        sizes.append(len(page))
        link = r.headers.get("Link")
        m = NEXT_LINK_RE.match(link) if link else None
        assert link is None or m, link
        next_url = m["url"] if m else None
        if next_url:
            links.append(next_url)
    return collected, sizes, links
