"""An upstream registry over HTTP (aiohttp): manifests and blobs, the Docker
token flow as a client, TLS and the outbound proxy as configured.

The token flow (the Docker Registry v2 auth spec): a request answered 401
with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` is
repeated with a token fetched from the realm (with Basic credentials when a
username is configured, anonymously otherwise, as public registries allow);
``Basic`` challenges get the credentials directly.  Tokens are kept per
scope until they expire.  Credentials never appear in a message or a log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from hareg.clock import Clock
from hareg.config.model import ProxyConfig
from hareg.registry.upstream import (
    MANIFEST_ACCEPT,
    UpstreamBlob,
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamManifest,
    UpstreamManifestHead,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamReferrers,
)
from hareg.upstream.outbound import proxy_for

log = logging.getLogger("hareg.upstream")

# Bounds of one upstream exchange (docs/pull-through.md): connecting, and the
# longest silence while reading a response.
CONNECT_TIMEOUT: Final = 10.0
READ_TIMEOUT: Final = 30.0
# A token without expires_in lives 60 s (the auth spec's default); renewed a little early.
DEFAULT_TOKEN_LIFETIME: Final = 60.0
TOKEN_MARGIN: Final = 5.0
MAX_TOKEN_RESPONSE: Final = 64 * 1024
CHUNK: Final = 1 << 16

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_NEXT_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.IGNORECASE)


def next_page(response: aiohttp.ClientResponse) -> str | None:
    """The query of the page a ``Link: <...>; rel="next"`` names, if it is the
    same path on the same remote (relative, or absolute and same origin):
    anything else is not followed (it would take our credentials elsewhere)."""
    found = _NEXT_LINK.search(response.headers.get("Link", ""))
    if found is None:
        return None
    try:
        target = response.url.join(URL(found.group(1)))
    except ValueError:
        return None
    here = response.url
    if (target.scheme, target.host, target.port, target.path) != (
        here.scheme,
        here.host,
        here.port,
        here.path,
    ):
        log.warning(
            "upstream referrers Link leads elsewhere; not followed",
            extra={"fields": {"upstream": str(here.origin()), "link": found.group(1)[:200]}},
        )
        return None
    return target.raw_query_string or None


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def tls_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """The remote's TLS: verified against the system CAs, or ``ca_file``; not at all if ``insecure``."""
    if insecure:
        return False
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    return True


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


class RegistryClient:
    """One remote registry (``hareg.registry.upstream.Upstream``)."""

    def __init__(
        self,
        remote: str,
        clock: Clock,
        *,
        credentials: Credentials | None = None,
        proxy: ProxyConfig | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
    ) -> None:
        self._remote = remote.rstrip("/")
        self._clock = clock
        self._credentials = credentials
        self._proxy = proxy or ProxyConfig()
        self._ssl = tls_context(ca_file, insecure)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (Authorization, expiry)

    @property
    def name(self) -> str:
        return self._remote

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # The proxy comes from the configuration only (outbound.py).
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _fail(
        self, message: str, status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> UpstreamError:
        if status == 404:
            return UpstreamNotFound(self._remote, message)
        if status in (401, 403):
            return UpstreamDenied(self._remote, message)
        if status == 429:
            return UpstreamRateLimited(self._remote, message, retry_after=_retry_after(headers or {}))
        return UpstreamError(self._remote, message)

    async def _token(self, challenge: str, scope: str) -> str:
        """The Authorization for ``scope`` after a 401's challenge."""
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self._credentials is None:
                raise UpstreamDenied(self._remote, "asks for a user name and password; none are configured")
            return self._credentials.basic()
        if scheme.lower() != "bearer":
            raise UpstreamDenied(
                self._remote, f"asks for {scheme or 'an unknown'} authentication, which hareg does not speak"
            )
        params = dict(_CHALLENGE_PARAM.findall(rest))
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise UpstreamDenied(self._remote, "sent a Bearer challenge without a usable realm")
        query = {"scope": params.get("scope") or scope}
        if "service" in params:
            query["service"] = params["service"]
        headers = {"Authorization": self._credentials.basic()} if self._credentials else {}
        try:
            async with self._http().get(
                realm, params=query, headers=headers, proxy=proxy_for(realm, self._proxy)
            ) as response:
                if response.status != 200:
                    raise self._fail(
                        f"its token endpoint {realm} answered {response.status}",
                        response.status,
                        response.headers,
                    )
                data = await response.content.read(MAX_TOKEN_RESPONSE)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UpstreamError(
                self._remote, f"its token endpoint {realm} is unreachable ({type(exc).__name__})"
            ) from None
        try:
            doc = json.loads(data)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise UpstreamInvalid(
                self._remote, f"its token endpoint {realm} answered no JSON token"
            ) from None
        if not isinstance(token, str) or not token:
            raise UpstreamInvalid(self._remote, f"its token endpoint {realm} answered no token")
        authorization = f"Bearer {token}"
        self._tokens[scope] = (authorization, self._clock.monotonic() + max(lifetime - TOKEN_MARGIN, 1.0))
        return authorization

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, url_tail: str, accept: str | None = None, query: str | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request to ``/v2/<path>/<url_tail>`` (``?query``, as encoded) with
        the token flow; yields a 2xx response."""
        url: str | URL = f"{self._remote}/v2/{path}/{url_tail}"
        if query is not None:
            url = URL(f"{self._remote}/v2/{path}/{url_tail}?{query}", encoded=True)
        scope = f"repository:{path}:pull"
        headers = {"Accept": accept} if accept else {}
        for attempt in range(2):
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] > self._clock.monotonic():
                headers["Authorization"] = cached[0]
            try:
                response = await self._http().request(
                    method, url, headers=headers, proxy=proxy_for(str(url), self._proxy)
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamError(self._remote, f"unreachable ({type(exc).__name__}: {exc})") from None
            try:
                if response.status == 401 and attempt == 0:
                    challenge = response.headers.get("WWW-Authenticate", "")
                    response.release()
                    self._tokens.pop(scope, None)
                    headers["Authorization"] = await self._token(challenge, scope)
                    continue
                if response.status >= 300:
                    reason = f"{method} {path}/{url_tail} answered {response.status}"
                    if response.status == 401:
                        reason += " (the configured credentials were refused)"
                    raise self._fail(reason, response.status, response.headers)
                yield response
                return
            finally:
                response.release()
        raise AssertionError("unreachable")

    async def head_manifest(self, path: str, reference: str) -> UpstreamManifestHead:
        async with self._request("HEAD", path, f"manifests/{reference}", ", ".join(MANIFEST_ACCEPT)) as r:
            return UpstreamManifestHead(
                digest=r.headers.get("Docker-Content-Digest"),
                media_type=r.headers.get("Content-Type", "").split(";")[0].strip(),
                size=r.content_length,
            )

    async def head_blob(self, path: str, digest: str) -> int | None:
        async with self._request("HEAD", path, f"blobs/{digest}") as r:
            return r.content_length

    async def get_referrers(
        self, path: str, digest: str, artifact_type: str | None, max_bytes: int, page: str | None = None
    ) -> UpstreamReferrers:
        query = page
        if query is None and artifact_type is not None:
            query = "artifactType=" + quote(artifact_type, safe="")
        async with self._request("GET", path, f"referrers/{digest}", MANIFEST_ACCEPT[0], query) as r:
            try:
                body = await r.content.read(max_bytes + 1)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamError(
                    self._remote, f"referrers of {digest} transfer broke ({type(exc).__name__})"
                ) from None
            if len(body) > max_bytes or not r.content.at_eof():
                raise UpstreamInvalid(self._remote, f"the referrers of {digest} are over {max_bytes} bytes")
            return UpstreamReferrers(body, next_page(r))

    async def get_manifest(self, path: str, reference: str, max_bytes: int) -> UpstreamManifest:
        async with self._request("GET", path, f"manifests/{reference}", ", ".join(MANIFEST_ACCEPT)) as r:
            if r.content_length is not None and r.content_length > max_bytes:
                raise UpstreamInvalid(
                    self._remote,
                    f"manifest {path}:{reference} is {r.content_length} bytes; at most {max_bytes} are accepted",
                )
            try:
                body = await r.content.read(max_bytes + 1)
                if len(body) > max_bytes:
                    raise UpstreamInvalid(
                        self._remote, f"manifest {path}:{reference} is over {max_bytes} bytes"
                    )
                # read(n) may return less than the whole body: read the rest, still bounded.
                while not r.content.at_eof():
                    more = await r.content.read(max_bytes + 1 - len(body))
                    if not more:
                        break
                    body += more
                    if len(body) > max_bytes:
                        raise UpstreamInvalid(
                            self._remote, f"manifest {path}:{reference} is over {max_bytes} bytes"
                        )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamError(
                    self._remote, f"manifest {path}:{reference} transfer broke ({type(exc).__name__})"
                ) from None
            return UpstreamManifest(
                digest=r.headers.get("Docker-Content-Digest"),
                media_type=r.headers.get("Content-Type", "").split(";")[0].strip(),
                body=body,
            )

    @asynccontextmanager
    async def get_blob(self, path: str, digest: str) -> AsyncIterator[UpstreamBlob]:
        async with self._request("GET", path, f"blobs/{digest}") as r:

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in r.content.iter_chunked(CHUNK):
                        yield chunk
                except (aiohttp.ClientError, TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                    raise UpstreamError(
                        self._remote, f"blob {digest} transfer broke ({type(exc).__name__})"
                    ) from None

            yield UpstreamBlob(size=r.content_length, chunks=chunks())
