"""An async OCI Distribution client on aiohttp, for benchmarks and their tests.

Bodies are streamed: blob content comes from a :class:`~bench.blobs.BlobSpec`
block by block and a pulled blob is hashed while it streams in, so no blob is
ever held whole.  Every pull is checked against its digest
(:class:`DigestMismatch` otherwise); blob GETs follow redirects (a registry may
answer 307 with a presigned object-store URL) up to ``max_redirects`` hops.

With :mod:`bench.credentials` every request carries an ``Authorization``
header for the scopes it needs (``pull`` of the repository read, ``pull,push``
of the one written, and ``pull`` of a mount's source), sent only to the
registry's own origin, never to a host a redirect points to.

Push styles, as the distribution spec names them:

- :meth:`OCIClient.push_blob_single_post`: ``POST ?digest=`` with the body (a
  registry may decline with 202; the client then PUTs the body, as the spec says),
- :meth:`OCIClient.push_blob_post_put`: ``POST`` then ``PUT ?digest=`` with the body,
- :meth:`OCIClient.push_blob_chunked`: ``POST``, ``PATCH`` chunks with
  ``Content-Range``, then ``PUT ?digest=``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from bench.blobs import BlobSpec
from bench.credentials import Credentials, parse_challenge, pull_scope, push_scope

__all__ = [
    "MANIFEST_ACCEPT",
    "OCI_MANIFEST",
    "DigestMismatch",
    "Manifest",
    "OCIClient",
    "RegistryHTTPError",
    "image_manifest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
OCTET = "application/octet-stream"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
READ_CHUNK = 1 << 20


class RegistryHTTPError(Exception):
    """A registry answered with an unexpected status."""

    def __init__(self, method: str, url: str, status: int, body: str) -> None:
        # The signed upload state makes a URL long: left out, so the body fits in a record.
        shown = url.split("?_state=", 1)[0] + ("?_state=…" if "?_state=" in url else "")
        super().__init__(f"{method} {shown}: HTTP {status}: {body[:300]}")
        self.method = method
        self.url = url
        self.status = status
        self.body = body


class DigestMismatch(Exception):
    """The bytes a registry served do not hash to the digest asked for."""

    def __init__(self, what: str, expected: str, actual: str, size: int) -> None:
        super().__init__(f"{what}: expected {expected}, got {actual} ({size} bytes)")
        self.expected = expected
        self.actual = actual
        self.size = size


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def image_manifest(config: tuple[str, int], layers: list[tuple[str, int]], annotation: str = "") -> bytes:
    """An OCI image manifest body referencing ``config`` and ``layers`` (digest, size)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
    }
    if annotation:
        doc["annotations"] = {"bench": annotation}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _with_query(location: str, **params: str) -> URL:
    sep = "&" if "?" in location else "?"
    extra = "&".join(f"{k}={quote(v, safe=':')}" for k, v in params.items())
    return URL(location + sep + extra, encoded=True)


class OCIClient:
    """One registry at ``base_url`` (``http://host:port``), over a shared session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        max_redirects: int = 5,
        credentials: Credentials | None = None,
    ) -> None:
        self.session = session
        self.base = URL(base_url.rstrip("/"))
        self.max_redirects = max_redirects
        self.credentials = credentials
        # The status of the ping without credentials (401 where auth is on).
        self.anonymous_ping_status: int | None = None

    # -- plumbing ---------------------------------------------------------

    def url(self, path: str) -> URL:
        return self.base.join(URL(path, encoded=True))

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryHTTPError(resp.method, str(resp.url), resp.status, "no Location header")
        return str(resp.url.join(URL(location, encoded=True)))

    @staticmethod
    async def _expect(resp: aiohttp.ClientResponse, *statuses: int) -> None:
        if resp.status not in statuses:
            body = await resp.text(errors="replace")
            raise RegistryHTTPError(resp.method, str(resp.url), resp.status, body)

    async def headers(
        self, url: URL | str, scopes: tuple[str, ...], extra: dict[str, str] | None = None
    ) -> dict[str, str]:
        """``extra`` plus the ``Authorization`` for ``scopes``, if ``url`` is the registry's."""
        out = dict(extra or {})
        target = url if isinstance(url, URL) else URL(url, encoded=True)
        if self.credentials is not None and target.origin() == self.base.origin():
            out["Authorization"] = await self.credentials.header(self.session, scopes)
        return out

    async def ping(self) -> None:
        """``GET /v2/``; with credentials, first without them (the 401's challenge
        says where to log in), then with them."""
        async with self.session.get(self.url("/v2/")) as resp:
            self.anonymous_ping_status = resp.status
            await resp.read()
            if self.credentials is None or resp.status != 401:
                await self._expect(resp, 200)
                return
            self.credentials.challenged(parse_challenge(resp.headers.get("WWW-Authenticate", "")))
        async with self.session.get(self.url("/v2/"), headers=await self.headers(self.base, ())) as resp:
            await self._expect(resp, 200)
            await resp.read()

    # -- blob pushes ------------------------------------------------------

    async def start_upload(self, repo: str) -> str:
        """POST an upload session; its (absolute) Location."""
        url = self.url(f"/v2/{repo}/blobs/uploads/")
        async with self.session.post(url, headers=await self.headers(url, (push_scope(repo),))) as resp:
            await self._expect(resp, 202)
            return self._location(resp)

    async def _put_body(self, repo: str, location: str, blob: BlobSpec, digest: str) -> str:
        url = _with_query(location, digest=digest)
        headers = await self.headers(
            url, (push_scope(repo),), {"Content-Type": OCTET, "Content-Length": str(blob.size)}
        )
        async with self.session.put(url, data=blob.stream(), headers=headers) as resp:
            await self._expect(resp, 201)
            return resp.headers.get("Docker-Content-Digest", digest)

    async def push_blob_single_post(self, repo: str, blob: BlobSpec) -> str:
        """``POST /v2/<repo>/blobs/uploads/?digest=`` with the whole body; its digest."""
        digest = blob.digest()
        url = _with_query(str(self.url(f"/v2/{repo}/blobs/uploads/")), digest=digest)
        headers = await self.headers(
            url, (push_scope(repo),), {"Content-Type": OCTET, "Content-Length": str(blob.size)}
        )
        async with self.session.post(url, data=blob.stream(), headers=headers) as resp:
            if resp.status == 201:
                return resp.headers.get("Docker-Content-Digest", digest)
            await self._expect(resp, 202)
            location = self._location(resp)
        # The registry opened a session instead (the spec allows it): PUT the body there.
        return await self._put_body(repo, location, blob, digest)

    async def push_blob_post_put(self, repo: str, blob: BlobSpec) -> str:
        """``POST`` an upload, then ``PUT ?digest=`` with the whole body; its digest."""
        return await self._put_body(repo, await self.start_upload(repo), blob, blob.digest())

    async def push_blob_chunked(self, repo: str, blob: BlobSpec, chunk_size: int) -> str:
        """``POST``, one ``PATCH`` per ``chunk_size`` bytes with ``Content-Range``,
        then ``PUT ?digest=`` with no body; its digest."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        digest = blob.digest()
        location = await self.start_upload(repo)
        start = 0
        while start < blob.size:
            stop = min(start + chunk_size, blob.size)
            url = URL(location, encoded=True)
            headers = {
                "Content-Type": OCTET,
                "Content-Length": str(stop - start),
                "Content-Range": f"{start}-{stop - 1}",
            }
            headers = await self.headers(url, (push_scope(repo),), headers)
            async with self.session.patch(url, data=blob.stream(start, stop), headers=headers) as resp:
                await self._expect(resp, 202)
                location = self._location(resp)
            start = stop
        url = _with_query(location, digest=digest)
        headers = await self.headers(url, (push_scope(repo),), {"Content-Length": "0"})
        async with self.session.put(url, headers=headers) as resp:
            await self._expect(resp, 201)
            return resp.headers.get("Docker-Content-Digest", digest)

    async def push_small_blob(self, repo: str, data: bytes) -> str:
        """POST+PUT of a small in-memory blob (a config); its digest."""
        digest = sha256_digest(data)
        location = await self.start_upload(repo)
        url = _with_query(location, digest=digest)
        headers = await self.headers(url, (push_scope(repo),), {"Content-Type": OCTET})
        async with self.session.put(url, data=data, headers=headers) as resp:
            await self._expect(resp, 201)
        return digest

    async def mount_blob(self, repo: str, from_repo: str, digest: str) -> bool:
        """Cross-repository mount; True if mounted (201).  A registry that declines
        (202) opened an upload session instead, which is cancelled here."""
        url = _with_query(str(self.url(f"/v2/{repo}/blobs/uploads/")), mount=digest, **{"from": from_repo})
        scopes = (push_scope(repo), pull_scope(from_repo))
        async with self.session.post(url, headers=await self.headers(url, scopes)) as resp:
            if resp.status == 201:
                return True
            await self._expect(resp, 202)
            location = self._location(resp)
        url = URL(location, encoded=True)
        async with self.session.delete(url, headers=await self.headers(url, scopes)) as resp:
            await resp.read()
        return False

    # -- blob reads -------------------------------------------------------

    async def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size, or None if the registry does not have it (404).
        Redirects are followed, as container clients do (distribution on S3
        answers a HEAD with a presigned HEAD URL)."""
        url = self.url(f"/v2/{repo}/blobs/{digest}")
        for _hop in range(self.max_redirects + 1):
            headers = await self.headers(url, (pull_scope(repo),))
            async with self.session.head(url, allow_redirects=False, headers=headers) as resp:
                if resp.status in REDIRECTS:
                    url = URL(self._location(resp), encoded=True)
                    continue
                if resp.status == 404:
                    return None
                await self._expect(resp, 200)
                length = resp.headers.get("Content-Length")
                return int(length) if length is not None else -1
        raise RegistryHTTPError("HEAD", str(url), 0, f"more than {self.max_redirects} redirects")

    async def pull_blob(self, repo: str, digest: str, expected_size: int | None = None) -> int:
        """GET the blob (following redirects), hashing it as it streams in; the
        number of bytes.  Raises :class:`DigestMismatch` if the bytes are wrong."""
        algorithm, _, _ = digest.partition(":")
        if algorithm not in ("sha256", "sha512"):
            raise ValueError(f"unsupported digest {digest!r}")
        url = self.url(f"/v2/{repo}/blobs/{digest}")
        for _hop in range(self.max_redirects + 1):
            headers = await self.headers(url, (pull_scope(repo),))
            async with self.session.get(url, allow_redirects=False, headers=headers) as resp:
                if resp.status in REDIRECTS:
                    url = URL(self._location(resp), encoded=True)
                    await resp.read()
                    continue
                await self._expect(resp, 200)
                h = hashlib.new(algorithm)
                size = 0
                async for chunk in resp.content.iter_chunked(READ_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                actual = f"{algorithm}:{h.hexdigest()}"
                if actual != digest or (expected_size is not None and size != expected_size):
                    raise DigestMismatch(f"GET {url}", digest, actual, size)
                return size
        raise RegistryHTTPError("GET", str(url), 0, f"more than {self.max_redirects} redirects")

    # -- manifests and tags -----------------------------------------------

    async def put_manifest(
        self, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        """PUT a manifest by tag or digest; its digest."""
        url = self.url(f"/v2/{repo}/manifests/{reference}")
        headers = await self.headers(url, (push_scope(repo),), {"Content-Type": media_type})
        async with self.session.put(url, data=body, headers=headers) as resp:
            await self._expect(resp, 201)
            return resp.headers.get("Docker-Content-Digest") or sha256_digest(body)

    async def get_manifest(self, repo: str, reference: str, accept: str = MANIFEST_ACCEPT) -> Manifest:
        """GET a manifest by tag or digest.  The body must hash to the digest asked
        for, and to the ``Docker-Content-Digest`` header when there is one."""
        url = self.url(f"/v2/{repo}/manifests/{reference}")
        headers = await self.headers(url, (pull_scope(repo),), {"Accept": accept})
        async with self.session.get(url, headers=headers) as resp:
            await self._expect(resp, 200)
            body = await resp.read()
            header = resp.headers.get("Docker-Content-Digest")
            media_type = resp.headers.get("Content-Type", "")
        actual = sha256_digest(body)
        expected = reference if ":" in reference else header
        if expected is not None and expected.startswith("sha256:") and expected != actual:
            raise DigestMismatch(f"GET {url}", expected, actual, len(body))
        return Manifest(body=body, media_type=media_type, digest=actual)

    async def list_tags(self, repo: str, n: int | None = None, max_pages: int = 10_000) -> list[str]:
        """All tags of ``repo``, following ``Link`` pages when ``n`` is given."""
        first = self.url(f"/v2/{repo}/tags/list")
        url: URL | None = first.with_query(n=str(n)) if n is not None else first
        tags: list[str] = []
        for _page in range(max_pages):
            if url is None:
                return tags
            async with self.session.get(url, headers=await self.headers(url, (pull_scope(repo),))) as resp:
                await self._expect(resp, 200)
                doc = await resp.json(content_type=None)
                tags.extend(doc.get("tags") or [])
                url = self._next_link(resp)
        raise RegistryHTTPError("GET", str(url), 0, f"more than {max_pages} pages of tags")

    def _next_link(self, resp: aiohttp.ClientResponse) -> URL | None:
        link = resp.headers.get("Link")
        if not link or "<" not in link:
            return None
        target = link[link.index("<") + 1 : link.index(">")]
        return resp.url.join(URL(target, encoded=True))
