"""Real upstream registries for the pull-through tests: CNCF distribution 2.8
(Debian's ``docker-registry``) started on a free port, with or without
htpasswd auth, and a counting proxy in front of one that can be told to lie
(corrupt or truncate what it forwards)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import bcrypt
from aiohttp import web
from aiohttp.test_utils import TestServer

from hareg.processes.ports import free_port

DISTRIBUTION = "docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
START_TIMEOUT = 60.0

_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: {no_access_log}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Distribution:
    url: str
    proc: subprocess.Popen[bytes]
    auth: dict[str, str]  # the Authorization header that may push (empty: none needed)
    log: Path | None = None  # its log (with access_log: one line per request)

    def served(self, request: str, status: int = 200) -> int:
        """How many requests like ``GET /v2/<name>/blobs/<digest>`` it answered
        with ``status``, by its access log (``access_log=True``)."""
        assert self.log is not None
        return self.log.read_text(errors="replace").count(f'"{request} HTTP/1.1" {status} ')

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def distribution(
    workdir: Path, user: tuple[str, str] | None = None, *, access_log: bool = False
) -> Iterator[Distribution]:
    """A running distribution on 127.0.0.1 (htpasswd auth for ``user`` if given;
    ``access_log``: every request logged, for ``Distribution.served``)."""
    binary = shutil.which(DISTRIBUTION)
    assert binary is not None, "docker-registry (CNCF distribution) is not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    text = _CONFIG.format(root=workdir / "storage", port=port, no_access_log=str(not access_log).lower())
    if user is not None:
        # Cost 4: the test is about the protocol, not the hash's strength.
        entry = bcrypt.hashpw(user[1].encode(), bcrypt.gensalt(4)).decode()
        (workdir / "htpasswd").write_text(f"{user[0]}:{entry}\n")
        text += f"auth:\n  htpasswd:\n    realm: upstream\n    path: {workdir / 'htpasswd'}\n"
    (workdir / "config.yml").write_text(text)
    with open(workdir / "distribution.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(workdir / "config.yml")], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    running = Distribution(
        url,
        proc,
        {"Authorization": aiohttp.encode_basic_auth(*user)} if user else {},
        workdir / "distribution.log",
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, (workdir / "distribution.log").read_text()
            try:
                urllib.request.urlopen(f"{url}/v2/", timeout=5).close()
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    break
                raise
            except OSError:
                assert time.monotonic() < deadline, "distribution did not start"
                time.sleep(0.2)
        yield running
    finally:
        running.kill()


@dataclass(frozen=True)
class Image:
    name: str
    tag: str
    digest: str
    manifest: bytes
    blobs: dict[str, bytes]  # config and layers by digest


def _tar_gz(name: str, data: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


async def push_image(
    base: str,
    name: str,
    tag: str,
    note: str,
    auth: aiohttp.BasicAuth | None = None,
    layer_size: int = 300_000,
) -> Image:
    """An OCI image of one config and two layers pushed to ``base`` (the OCI API)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "note": note}).encode()
    # Compressed tar layers, as real images have (skopeo copies them as they
    # are; podman unpacks them), each one file of incompressible bytes.
    layers = [
        _tar_gz(
            f"data/{note.replace(' ', '-')}-{i}",
            b"".join(hashlib.sha256(f"{note}/{i}/{j}".encode()).digest() for j in range(layer_size // 32)),
        )
        for i in range(2)
    ]

    def desc(media_type: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer) for layer in layers],
        }
    ).encode()
    async with aiohttp.ClientSession(headers=auth or {}) as http:
        for blob in (config, *layers):
            async with http.post(f"{base}/v2/{name}/blobs/uploads/") as started:
                assert started.status == 202, await started.text()
                location = started.headers["Location"]
            if location.startswith("/"):
                location = base + location
            joiner = "&" if "?" in location else "?"
            async with http.put(f"{location}{joiner}digest={sha256(blob)}", data=blob) as done:
                assert done.status == 201, await done.text()
        async with http.put(
            f"{base}/v2/{name}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}
        ) as put:
            assert put.status == 201, await put.text()
    return Image(name, tag, sha256(manifest), manifest, {sha256(b): b for b in (config, *layers)})


@dataclass
class CountingProxy:
    """Forwards every request to ``target`` and counts it; ``lie`` makes it
    corrupt ("corrupt": one byte flipped, same length) or cut ("truncate":
    half the bytes, then the connection closed) blob bodies, or corrupt
    manifest bodies ("corrupt-manifest")."""

    target: str
    requests: list[str] = field(default_factory=list)
    lie: str | None = None
    fail: int | None = None  # answer every request with this status (Retry-After: 7)
    blob_delay: float = 0.0  # seconds to hold a blob GET before answering
    manifest_delay: float = 0.0  # seconds to hold a manifest request before answering
    session: aiohttp.ClientSession | None = None

    def count(self, kind: str = "") -> int:
        return sum(1 for r in self.requests if kind in r)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        assert self.session is not None
        if self.fail is not None:
            return web.Response(status=self.fail, headers={"Retry-After": "7"}, text="failing on purpose")
        if self.blob_delay and "/blobs/" in request.path:
            await asyncio.sleep(self.blob_delay)
        if self.manifest_delay and "/manifests/" in request.path:
            await asyncio.sleep(self.manifest_delay)
        headers = {k: v for k, v in request.headers.items() if k in ("Accept", "Authorization")}
        async with self.session.request(
            request.method, self.target + request.path_qs, headers=headers, allow_redirects=False
        ) as upstream:
            body = await upstream.read()
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k in ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Location")
            }
        is_blob = "/blobs/" in request.path and request.method == "GET" and upstream.status == 200
        is_manifest = "/manifests/" in request.path and request.method == "GET" and upstream.status == 200
        if is_blob and self.lie == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        if is_manifest and self.lie == "corrupt-manifest":
            body += b" "  # still JSON, another digest
        if is_blob and self.lie == "truncate":
            response = web.StreamResponse(status=200, headers=out)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()  # the rest never comes
            return response
        return web.Response(
            status=upstream.status, body=body if request.method != "HEAD" else None, headers=out
        )


@asynccontextmanager
async def counting_proxy(target: str) -> AsyncIterator[tuple[CountingProxy, str]]:
    proxy = CountingProxy(target)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        TestServer(app, host="127.0.0.1") as server,
    ):
        proxy.session = session
        yield proxy, str(server.make_url("")).rstrip("/")


OCI_INDEX = "application/vnd.oci.image.index.v1+json"


async def push_index(base: str, name: str, tag: str, children: list[Image]) -> tuple[str, bytes]:
    """An OCI index of ``children`` (already pushed to ``name``) tagged ``tag``: its digest and body."""
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": child.digest,
                    "size": len(child.manifest),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for child, arch in zip(children, ("amd64", "arm64"), strict=False)
            ],
        }
    ).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{base}/v2/{name}/manifests/{tag}", data=body, headers={"Content-Type": OCI_INDEX}) as put,
    ):
        assert put.status == 201, await put.text()
    return sha256(body), body
