"""The pull-through cache: repositories under a mirrored prefix are served
from an upstream registry and cached (docs/pull-through.md).

It wraps the ordinary services rather than changing them: a mirrored
manifest is stored through ``ManifestService.put`` (the normal metadata
path, so it is served like any manifest, behind the read barrier), a
mirrored blob through the blob store's upload calls and ``add_blob``.
Nothing the upstream sends is stored or served under a digest before its
bytes hash to that digest.

The rules:

* a tag is asked of the upstream at most once per ``ttl`` across the
  cluster: the time of the last check is kept in etcd beside the tag
  (``metadata/mirrors.py``) and claimed with a compare, so one replica asks;
* a digest, once fetched, is served from the cache forever (content addressed);
* past the ttl, an upstream that cannot be reached (down, slow, 5xx, 429)
  leaves the cached answer in place: served and marked stale;
* manifests are stored *sparse* (their blobs and children are fetched when
  pulled); only mirrored repositories hold sparse manifests, and every write
  there is refused, so invariant 2 holds for every pushed manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from hareg.clock import Clock
from hareg.ids import IdSource
from hareg.kv.base import KVError
from hareg.metadata.records import MirrorCheckRecord
from hareg.metadata.store import BlobCollected, MetadataStore
from hareg.plants import planted
from hareg.registry.digests import Digest, digest_bytes, new_hasher, parse_digest
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.hashing import Hashing, InlineHashing, feed
from hareg.registry.manifest_format import MAX_MANIFEST_BYTES, OCI_INDEX
from hareg.registry.manifests import ManifestService
from hareg.registry.names import check_name, is_tag, parse_reference
from hareg.registry.results import ManifestContent
from hareg.registry.stats import PullThroughStats
from hareg.registry.upstream import (
    Upstream,
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamRateLimited,
)
from hareg.storage.base import BlobStore

log = logging.getLogger("hareg.pull_through")

# Single-flight of blob fetches (docs/pull-through.md): the claim's lease (it
# expires this long after a fetcher dies), how long another pull waits for a
# claimed fetch before fetching itself, and how often it looks.
FETCH_LEASE_TTL = 60
FETCH_WAIT = 300.0
FETCH_POLL = 0.25

# Docker Hub's registry hosts, where a one-component name means library/<name>.
DOCKER_HUB_HOSTS = frozenset(
    {"registry-1.docker.io", "registry.hub.docker.com", "index.docker.io", "docker.io"}
)

# The largest referrers index passed through from an upstream (all the pages
# followed for one answer), and the most pages followed for one answer: past
# either, the answer links to the rest (docs/pull-through.md).
MAX_REFERRERS_BYTES = 4 * 1024 * 1024
MAX_REFERRERS_PAGES = 16
# An upstream page's query, as handed back by a client: URL characters only
# (no space, CR, LF or '#': it is put in a request line as it is).
_PAGE_QUERY = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]{1,2048}")

# Chunks read from the upstream but not yet sent to the client (the rest waits
# on the client, so a slow client slows the upstream read instead of filling memory).
QUEUED_CHUNKS = 4


@dataclass(frozen=True, slots=True)
class Mirror:
    prefix: str  # repositories <prefix>/<path> are served from the upstream's <path>
    upstream: Upstream
    ttl: float
    allow: tuple[str, ...] = ()  # fnmatch globs of the upstream paths that may be pulled; (): all
    expire_after: float = 0.0  # the pruner expires tags not pulled for this long (0: never)


@dataclass(frozen=True, slots=True)
class MirroredManifest:
    content: ManifestContent
    # Answered from the cache although the upstream was due to be asked and
    # could not be (stale-if-error): the HTTP layer says so in a header.
    stale: bool = False
    fetched: bool = False  # from the upstream by this pull (a cache miss)


@dataclass(frozen=True, slots=True)
class MirroredReferrers:
    index: dict[str, Any]  # the pages followed, as one image index
    next_page: str | None = None  # the upstream's query of the page after them (more to follow)


@dataclass(frozen=True, slots=True)
class MirroredBlob:
    """A blob streamed from the upstream while it is stored.  ``chunks`` ends
    cleanly only once every byte hashed to the digest and was committed; a
    short, broken or lying upstream makes it raise before its last chunk, so
    the client never receives a whole wrong body.  ``close`` releases the
    upstream response and any staged bytes (call it whatever happened)."""

    digest: str
    size: int | None  # from the upstream's Content-Length, when it sent one
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


def upstream_error(exc: UpstreamError, what: str) -> RegistryError:
    """An upstream failure as the client's error; the message names the upstream."""
    if isinstance(exc, UpstreamNotFound):
        code = ErrorCode.BLOB_UNKNOWN if what.startswith("blob") else ErrorCode.MANIFEST_UNKNOWN
        return RegistryError(code, f"{what} is not at the upstream ({exc})")
    if isinstance(exc, UpstreamRateLimited):
        retry = str(int(exc.retry_after)) if exc.retry_after is not None else "10"
        return RegistryError(
            ErrorCode.TOOMANYREQUESTS,
            f"{what} is not cached and the upstream rate-limits us ({exc}); retry later",
            headers={"Retry-After": retry},
        )
    if exc.unreachable and not isinstance(exc, UpstreamInvalid):
        return RegistryError(
            ErrorCode.UNAVAILABLE,
            f"{what} is not cached and the upstream cannot be reached ({exc})",
            headers={"Retry-After": "10"},
        )
    return RegistryError(
        ErrorCode.UNAVAILABLE, f"{what} is not cached and the upstream failed ({exc})", status=502
    )


def error_kind(exc: UpstreamError) -> str:
    """The ``kind`` label of hareg_pull_through_upstream_errors_total."""
    for cls, kind in (
        (UpstreamNotFound, "not_found"),
        (UpstreamDenied, "denied"),
        (UpstreamRateLimited, "rate_limited"),
        (UpstreamInvalid, "invalid"),
    ):
        if isinstance(exc, cls):
            return kind
    return "unreachable"


def mirrored_write_refusal(repo: str, prefix: str) -> RegistryError:
    return RegistryError(
        ErrorCode.DENIED,
        f"repository {repo} is a read-only mirror (pullThrough prefix {prefix}): pushes and deletes are refused",
        detail={"pullThrough": prefix},
    )


class PullThrough:
    def __init__(
        self,
        mirrors: Sequence[Mirror],
        meta: MetadataStore,
        manifests: ManifestService,
        store: BlobStore,
        clock: Clock,
        ids: IdSource,
        *,
        hashing: Hashing | None = None,
        max_blob_size: int = 0,  # limits.maxBlobSize (0: no cap)
    ) -> None:
        self.mirrors = tuple(mirrors)
        self.meta = meta
        self.manifests = manifests
        self.store = store
        self.clock = clock
        self.ids = ids
        self.hashing: Hashing = hashing or InlineHashing()
        self.max_blob_size = max_blob_size
        self.stats = PullThroughStats()  # exported as hareg_pull_through_* metrics
        self.referrer_pages = MAX_REFERRERS_PAGES  # upstream pages followed for one answer

    def mirror_of(self, repo: str) -> tuple[Mirror, str] | None:
        """The mirror serving ``repo`` and the repository's path at the upstream; None: not mirrored."""
        for mirror in self.mirrors:
            if repo.startswith(mirror.prefix + "/"):
                path = repo[len(mirror.prefix) + 1 :]
                if "/" not in path and urlsplit(mirror.upstream.name).hostname in DOCKER_HUB_HOSTS:
                    # Docker Hub's official images live under library/ (docker pull
                    # alpine is library/alpine): the same short names work here.
                    path = f"library/{path}"
                return mirror, path
        return None

    def served_from_cache(self, repo: str, what: str) -> None:
        """Count a pull of a mirrored repository answered by the ordinary path (a blob hit)."""
        if (found := self.mirror_of(repo)) is not None:
            self.stats.pulled(found[0].prefix, what, "hit")

    def check_write(self, repo: str) -> None:
        """Refuse (403 DENIED) a push or delete in a mirrored repository."""
        if (found := self.mirror_of(repo)) is not None:
            raise mirrored_write_refusal(repo, found[0].prefix)

    def _mirror(self, repo: str) -> tuple[Mirror, str]:
        check_name(repo)
        found = self.mirror_of(repo)
        if found is None:
            raise ValueError(f"{repo} is not mirrored")
        mirror, path = found
        if mirror.allow and not any(fnmatchcase(path, pattern) for pattern in mirror.allow):
            raise RegistryError(
                ErrorCode.DENIED,
                f"{path} may not be pulled through {mirror.prefix}: it matches none of its allow globs",
                detail={"pullThrough": mirror.prefix},
            )
        return mirror, path

    # ------------------------------------------------------------- manifests

    async def _cached(self, repo: str, reference: str) -> ManifestContent | None:
        try:
            return await self.manifests.get(repo, reference)
        except RegistryError as exc:
            if exc.code is ErrorCode.MANIFEST_UNKNOWN:
                return None
            raise

    def _failed(self, mirror: Mirror, exc: UpstreamError, what: str) -> RegistryError:
        self.stats.upstream_error(mirror.prefix, error_kind(exc))
        return upstream_error(exc, what)

    async def manifest(self, repo: str, reference: str) -> MirroredManifest:
        found = await self._manifest(repo, reference)
        prefix = self._mirror(repo)[0].prefix
        self.stats.pulled(prefix, "manifest", "stale" if found.stale else "miss" if found.fetched else "hit")
        return found

    async def _manifest(self, repo: str, reference: str) -> MirroredManifest:
        mirror, path = self._mirror(repo)
        if ":" not in reference and not is_tag(reference):
            return MirroredManifest(await self.manifests.get(repo, reference))  # its ordinary 404
        ref = parse_reference(reference)
        name = str(ref)
        cached = await self._cached(repo, name)
        if cached is not None:
            if isinstance(ref, Digest):
                return MirroredManifest(cached)  # content addressed: cached forever
            return await self._tagged(mirror, repo, path, ref)

        # A first pull: one fetch across the cluster, the others wait for it.
        async def now_cached() -> bool:
            return await self._cached(repo, name) is not None

        lease = await self._claim_or_wait(repo, name, now_cached)
        if lease is None:
            return MirroredManifest(await self.manifests.get(repo, name))
        try:
            return await self._first(mirror, repo, path, ref)
        finally:
            if lease:
                await self.meta.release_fetch(lease)

    async def _first(self, mirror: Mirror, repo: str, path: str, ref: Digest | str) -> MirroredManifest:
        if not isinstance(ref, Digest):
            return await self._tagged(mirror, repo, path, ref)
        try:
            fetched = await mirror.upstream.get_manifest(path, str(ref), MAX_MANIFEST_BYTES)
        except UpstreamError as exc:
            raise self._failed(mirror, exc, f"manifest {path}@{ref}") from None
        return MirroredManifest(
            await self._store(mirror, repo, path, str(ref), fetched.body, fetched.media_type, None),
            fetched=True,
        )

    async def _tagged(self, mirror: Mirror, repo: str, path: str, tag: str) -> MirroredManifest:
        cached = await self._cached(repo, tag)
        if cached is not None and self.meta.etcd_known_down():
            # The cache serves pulls through an etcd outage (docs/consistency.md);
            # whether the upstream moved the tag cannot be recorded: stale.
            return MirroredManifest(cached, stale=True)
        try:
            check = await self.meta.get_mirror_check(repo, tag)
        except KVError:
            if cached is None:
                raise
            return MirroredManifest(cached, stale=True)
        now = self.clock.now()
        if cached is not None and check is not None and now - check[0].checked < mirror.ttl:
            # Asked within the ttl (by any replica): the cache answers.  A check
            # that found nothing (the upstream failed) or is still running
            # leaves the cached answer unconfirmed: stale.
            return MirroredManifest(cached, stale=check[0].digest != cached.digest)
        if cached is not None:
            try:
                claimed = await self.meta.claim_mirror_check(
                    repo, tag, check[1] if check else 0, MirrorCheckRecord(checked=now)
                )
            except KVError:
                claimed = False
            if not claimed:
                # Another replica claimed this check just now (it asks the
                # upstream), or etcd cannot record one: the cache answers.
                return MirroredManifest(cached, stale=True)
        try:
            head = await mirror.upstream.head_manifest(path, tag)
            if cached is not None and head.digest == cached.digest:
                with contextlib.suppress(KVError):  # unrecorded, the next pull checks again
                    await self.meta.set_mirror_check(
                        repo, tag, MirrorCheckRecord(self.clock.now(), cached.digest)
                    )
                return MirroredManifest(cached)
            fetched = await mirror.upstream.get_manifest(path, head.digest or tag, MAX_MANIFEST_BYTES)
        except UpstreamError as exc:
            if cached is not None and exc.unreachable:
                self.stats.upstream_error(mirror.prefix, error_kind(exc))
                log.warning(
                    "upstream unreachable; serving the cached manifest (stale)",
                    extra={"fields": {"repo": repo, "tag": tag, "upstream": exc.upstream, "error": str(exc)}},
                )
                return MirroredManifest(cached, stale=True)
            raise self._failed(mirror, exc, f"manifest {path}:{tag}") from None
        # The digest the upstream named (HEAD or GET) is what the bytes must hash to.
        expected = head.digest or fetched.digest
        content = await self._store(mirror, repo, path, expected, fetched.body, fetched.media_type, tag)
        await self.meta.set_mirror_check(repo, tag, MirrorCheckRecord(self.clock.now(), content.digest))
        return MirroredManifest(content, fetched=True)

    async def _store(
        self,
        mirror: Mirror,
        repo: str,
        path: str,
        expected: str | None,
        body: bytes,
        media_type: str,
        tag: str | None,
    ) -> ManifestContent:
        """Verify an upstream manifest against its digest and store it (sparse)."""
        self.stats.fetched(mirror.prefix, len(body))
        if expected is not None:
            try:
                digest = parse_digest(expected)
            except RegistryError:
                raise self._failed(
                    mirror,
                    UpstreamInvalid(mirror.upstream.name, f"sent an invalid digest {expected[:100]!r}"),
                    f"manifest {path}",
                ) from None
            actual = digest_bytes(body, digest.algorithm)
            if actual != str(digest) and planted("mirror-skip-verify"):
                digest = parse_digest(actual)  # planted bug: stored as sent, under its own hash
            if actual != str(digest):
                log.error(
                    "upstream manifest does not hash to its digest; refused",
                    extra={"fields": {"repo": repo, "expected": str(digest), "actual": actual}},
                )
                raise self._failed(
                    mirror,
                    UpstreamInvalid(
                        mirror.upstream.name, f"sent a manifest that hashes to {actual}, not {digest}"
                    ),
                    f"manifest {path}",
                )
            name = str(digest)
        else:
            name = digest_bytes(body, "sha256")
        try:
            await self.manifests.put(repo, name, body, media_type or None, [tag] if tag else [], sparse=True)
        except RegistryError as exc:
            if exc.code in (ErrorCode.MANIFEST_INVALID, ErrorCode.DIGEST_INVALID):
                raise RegistryError(
                    ErrorCode.UNAVAILABLE,
                    f"the upstream {mirror.upstream.name} sent a manifest for {path} that hareg cannot store: "
                    f"{exc.message}",
                    status=502,
                ) from None
            raise
        stored = await self.manifests.get(repo, name)
        return stored

    # ------------------------------------------------------------- referrers

    async def referrers(
        self, repo: str, digest_text: str, artifact_type: str | None, page: str | None = None
    ) -> MirroredReferrers | None:
        """The upstream's referrers of ``digest`` (passed through, not cached,
        filtered by ``artifact_type`` here too): its pages, following its
        ``Link``s, up to ``referrer_pages`` pages and MAX_REFERRERS_BYTES, as
        one index, with the upstream's next page when more follow (``page``
        asks for that one).  None when the upstream has none to give (no
        referrers API, unreachable, malformed): the cache's own referrers
        answer instead."""
        mirror, path = self._mirror(repo)
        digest = str(parse_digest(digest_text))
        if page is not None and not _PAGE_QUERY.fullmatch(page):
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                "upstreamNext is not an upstream page's query (from this registry's Link header)",
                status=400,
            )
        manifests: list[dict[str, Any]] = []
        budget = MAX_REFERRERS_BYTES
        for number in range(self.referrer_pages):
            try:
                got = await mirror.upstream.get_referrers(path, digest, artifact_type, budget, page)
            except UpstreamError as exc:
                if not isinstance(exc, UpstreamNotFound):
                    self.stats.upstream_error(mirror.prefix, error_kind(exc))
                if number == 0:
                    return None
                break  # what was read is answered; the Link retries the page that failed
            entries = self._referrer_entries(mirror, got.body, artifact_type)
            if entries is None:
                if number == 0:
                    return None
                break
            manifests += entries
            budget -= len(got.body)
            page = got.next_page
            if page is None or budget <= 0:
                break
        return MirroredReferrers({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, page)

    def _referrer_entries(
        self, mirror: Mirror, body: bytes, artifact_type: str | None
    ) -> list[dict[str, Any]] | None:
        """The well-formed descriptors of one upstream referrers page (None: not an index)."""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        entries = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            self.stats.upstream_error(mirror.prefix, "invalid")
            return None
        manifests: list[dict[str, Any]] = []
        for entry in entries:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("mediaType"), str)
                and isinstance(entry.get("digest"), str)
                and isinstance(entry.get("size"), int)
            ):
                continue  # a malformed descriptor is left out, not passed on
            if artifact_type is not None and entry.get("artifactType") != artifact_type:
                continue
            kept = {
                k: entry[k]
                for k in ("mediaType", "digest", "size", "artifactType", "annotations")
                if k in entry
            }
            manifests.append(kept)
        return manifests

    # ----------------------------------------------------------------- blobs

    async def blob_size(self, repo: str, digest_text: str) -> int | None:
        """A HEAD of a blob not cached yet: asked of the upstream (nothing is
        fetched or stored; the GET that follows fetches it)."""
        mirror, path = self._mirror(repo)
        digest = str(parse_digest(digest_text))
        try:
            return await mirror.upstream.head_blob(path, digest)
        except UpstreamError as exc:
            raise self._failed(mirror, exc, f"blob {digest}") from None

    async def _claim_or_wait(self, repo: str, name: str, done: Callable[[], Awaitable[bool]]) -> int | None:
        """Single-flight across the cluster: the lease of this pull's claim on the
        fetch (0: fetch without one: etcd could not be asked, or the wait was too
        long), or None once another pull's fetch linked the blob (serve it from
        the cache).  While another replica's claim stands, wait for it to end."""
        deadline = self.clock.monotonic() + FETCH_WAIT
        while True:
            if await done():
                return None
            try:
                lease = await self.meta.claim_fetch(repo, name, FETCH_LEASE_TTL)
            except KVError:
                return 0
            if lease is not None:
                if await done():  # done just before the claim
                    await self.meta.release_fetch(lease)
                    return None
                return lease
            try:
                while await self.meta.fetch_claimed(repo, name):
                    if self.clock.monotonic() > deadline:
                        return 0
                    await self.clock.sleep(FETCH_POLL)
            except KVError:
                return 0
            # The other fetch ended: linked (served from the cache) or failed (claim it).

    async def blob(self, repo: str, digest_text: str) -> MirroredBlob | None:
        """Start streaming an uncached blob from the upstream (after ``BlobService.stat``
        said it is not linked in ``repo``); None: another pull fetched it meanwhile,
        serve it from the cache.  Upstream errors before the first byte are
        RegistryErrors naming the upstream."""
        mirror, path = self._mirror(repo)
        digest = parse_digest(digest_text)

        async def linked() -> bool:
            return await self.meta.get_link(repo, str(digest)) is not None

        lease = await self._claim_or_wait(repo, str(digest), linked)
        if lease is None:
            return None
        stack = contextlib.AsyncExitStack()
        if lease:
            stack.push_async_callback(self.meta.release_fetch, lease)
        try:
            blob = await stack.enter_async_context(mirror.upstream.get_blob(path, str(digest)))
        except UpstreamError as exc:
            await stack.aclose()
            raise self._failed(mirror, exc, f"blob {digest}") from None
        except BaseException:
            await stack.aclose()
            raise
        if self.max_blob_size and blob.size is not None and blob.size > self.max_blob_size:
            await stack.aclose()
            raise RegistryError(
                ErrorCode.SIZE_INVALID,
                f"blob {digest} is {blob.size} bytes at the upstream; limits.maxBlobSize is {self.max_blob_size}",
                status=413,
            )
        self.stats.pulled(mirror.prefix, "blob", "miss")
        chunks = self._tee(mirror, repo, digest, blob.size, blob.chunks, stack, lease)

        async def close() -> None:
            await chunks.aclose()  # a generator that never started runs no finally: the stack closes here too
            await stack.aclose()

        return MirroredBlob(str(digest), blob.size, chunks, close)

    async def _tee(
        self,
        mirror: Mirror,
        repo: str,
        digest: Digest,
        declared: int | None,
        upstream: AsyncIterator[bytes],
        stack: contextlib.AsyncExitStack,
        lease: int,
    ) -> AsyncGenerator[bytes, None]:
        """The upstream's chunks to the client, each also written to the blob
        store and hashed; the last chunk is held back until the whole is
        verified and committed."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUED_CHUNKS)
        hasher = new_hasher(digest.algorithm)
        upload_id = self.ids.new_id()
        cap = self.max_blob_size

        def invalid(message: str) -> UpstreamInvalid:
            return UpstreamInvalid(mirror.upstream.name, f"blob {digest}: {message}")

        async def source() -> AsyncIterator[bytes]:
            total = 0
            refreshed = self.clock.monotonic()
            async for chunk in upstream:
                if lease and self.clock.monotonic() - refreshed > FETCH_LEASE_TTL / 6:
                    # The claim lives while bytes flow; lost, another pull may fetch too (no harm).
                    refreshed = self.clock.monotonic()
                    with contextlib.suppress(KVError):
                        await self.meta.refresh_fetch(lease)
                total += len(chunk)
                if declared is not None and total > declared:
                    raise invalid(f"sent more than the {declared} bytes it declared")
                if cap and total > cap:
                    raise invalid(f"is larger than limits.maxBlobSize ({cap} bytes)")
                self.stats.fetched(mirror.prefix, len(chunk))
                await feed(self.hashing, hasher, chunk)
                await queue.put(chunk)
                yield chunk

        async def fill() -> int:
            size = await self.store.upload_write(upload_id, 0, source())
            if declared is not None and size != declared:
                raise invalid(f"sent {size} bytes of the {declared} it declared")
            if f"{hasher.name}:{hasher.hexdigest()}" != str(digest) and not planted("mirror-skip-verify"):
                raise invalid(f"the bytes hash to {hasher.name}:{hasher.hexdigest()}")
            return size

        committed = False
        await self.store.upload_start(upload_id)
        task = asyncio.get_running_loop().create_task(fill(), name=f"pull-through {digest}")
        try:
            held: bytes | None = None
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    if queue.empty():
                        break
                    chunk = queue.get_nowait()
                else:
                    chunk = getter.result()
                if held is not None:
                    yield held
                held = chunk
            try:
                size = task.result()
            except UpstreamError as exc:
                self.stats.upstream_error(mirror.prefix, error_kind(exc))
                log.error(
                    "upstream blob transfer failed; nothing stored",
                    extra={"fields": {"repo": repo, "digest": str(digest), "error": str(exc)}},
                )
                raise
            await self.store.upload_commit(upload_id, str(digest), size)
            committed = True

            async def bytes_present() -> bool:
                return await self.store.stat(str(digest)) is not None

            try:
                await self.meta.add_blob(repo, str(digest), size, None, bytes_present=bytes_present)
            except BlobCollected:
                # Verified bytes: the client still gets them; the next pull links again.
                log.warning(
                    "pulled blob was being collected; not linked", extra={"fields": {"digest": str(digest)}}
                )
            if held is not None:
                yield held
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if not committed:
                with contextlib.suppress(Exception):
                    await self.store.upload_abort(upload_id)
            await stack.aclose()
