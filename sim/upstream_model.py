"""A simulated upstream registry for the pull-through mirror (docs/pull-through.md).

One ``UpstreamModel`` per run holds what a remote registry would: images
(manifests, indexes with children, blobs) under a few repository paths, and
tags that move on a timeline drawn at the start (so ttl re-checks find new
digests).  Each replica reaches it through its own ``UpstreamView``, which
implements ``hareg.registry.upstream.Upstream`` (the interface the real HTTP
client implements), so ``PullThrough`` runs unchanged.

The seed's fault schedule (``upstream`` faults of ``sim/faults.py``) makes it,
inside a window and with the fault's probability per request:

* ``slow``: answers and blob chunks are delayed on the simulated clock;
* ``fail``: 503s, 429s with Retry-After, a connection cut mid-blob;
* ``lie``: a manifest or blob whose bytes do not hash to the digest asked
  for (another manifest's body, a flipped byte, a truncated or padded body).

Every lie is counted; every blob fetch is logged (which replica, when it
began and ended, the fetch claim in etcd it found then) for the
single-flight checker (``sim/mirror_check.py``).  A replica cut off from
the network, paused or crashed cannot reach the upstream, as a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from hareg.metadata.keys import Keys
from hareg.registry.manifest_format import OCI_INDEX, OCI_MANIFEST
from hareg.registry.pull_through import Mirror
from hareg.registry.upstream import (
    UpstreamBlob,
    UpstreamError,
    UpstreamManifest,
    UpstreamManifestHead,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamReferrers,
)
from sim.etcd_model import MVCCStore
from sim.faults import Fault
from sim.loop import SimLoop
from sim.network import Network

NODE = "upstream"  # its name on the simulated network
URL = "https://upstream.sim"
PREFIX = "mirror"  # pulls of mirror/<path> are served from the upstream's <path>
PATHS = ("lib/alpine", "lib/busybox")
TAGS = ("latest", "stable")
TTL = 3.0  # the mirror's ttl (seconds): short, so runs see many re-checks
CHUNK = 512  # bytes per blob chunk the upstream sends
MODES = ("slow", "fail", "lie")
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Image:
    """A manifest the upstream holds: an image (blobs) or an index (children)."""

    digest: str
    media_type: str
    body: bytes
    blobs: tuple[str, ...] = ()
    children: tuple[str, ...] = ()


@dataclass(slots=True)
class Fetch:
    """One blob fetch (GET) from the upstream."""

    replica: str
    repo: str
    digest: str
    start: float
    # The fetch claim in etcd as it began: the lease of the claim naming this
    # replica (0: none did), and whether another replica's claim stood instead.
    lease: int
    beside_claim: bool = False
    end: float | None = None
    held_throughout: bool = False  # the same claim still stood as it ended

    @property
    def claimed(self) -> bool:
        return self.lease != 0


@dataclass(slots=True)
class UpstreamLog:
    fetches: list[Fetch] = field(default_factory=list)
    lies: dict[str, int] = field(default_factory=dict)  # kind of lie -> how many told
    failures: dict[str, int] = field(default_factory=dict)
    requests: int = 0

    def count(self, table: dict[str, int], kind: str) -> None:
        table[kind] = table.get(kind, 0) + 1


class UpstreamModel:
    def __init__(self, loop: SimLoop, rng: random.Random, faults: Sequence[Fault], horizon: float) -> None:
        self.loop = loop
        self.rng = rng
        self.windows = [f for f in faults if f.kind == "upstream"]
        self.log = UpstreamLog()
        self.blobs: dict[str, bytes] = {}
        self.images: dict[tuple[str, str], Image] = {}  # (path, digest) -> manifest
        self.path_blobs: dict[str, set[str]] = {p: set() for p in PATHS}
        # (path, tag) -> [(from when, digest)], the tag's moves in time order.
        self.timeline: dict[tuple[str, str], list[tuple[float, str]]] = {}
        for path in PATHS:
            for tag in TAGS:
                moves, at = [], 0.0
                while at <= horizon:
                    moves.append((at, self._new_top(path)))
                    at += round(rng.uniform(3.0, 10.0), 3)
                self.timeline[(path, tag)] = moves

    # -- content -----------------------------------------------------------------------

    def _blob(self, path: str, data: bytes) -> dict[str, object]:
        digest = sha256(data)
        self.blobs[digest] = data
        self.path_blobs[path].add(digest)
        return {"mediaType": LAYER_TYPE, "digest": digest, "size": len(data)}

    def _new_image(self, path: str) -> Image:
        rng = self.rng
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": rng.getrandbits(32)}).encode()
        config_desc = {**self._blob(path, config), "mediaType": CONFIG_TYPE}
        layers = [self._blob(path, rng.randbytes(rng.randint(100, 3000))) for _ in range(rng.randint(1, 2))]
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": layers}
        body = json.dumps(doc, sort_keys=True).encode()
        blobs = (str(config_desc["digest"]), *(str(d["digest"]) for d in layers))
        image = Image(sha256(body), OCI_MANIFEST, body, blobs=blobs)
        self.images[(path, image.digest)] = image
        return image

    def _new_top(self, path: str) -> str:
        """A new image or (a third of the time) a two-platform index."""
        if self.rng.random() >= 1 / 3:
            return self._new_image(path).digest
        children = [self._new_image(path) for _ in range(2)]
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": c.media_type,
                    "digest": c.digest,
                    "size": len(c.body),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for c, arch in zip(children, ("amd64", "arm64"), strict=True)
            ],
        }
        body = json.dumps(doc, sort_keys=True).encode()
        index = Image(sha256(body), OCI_INDEX, body, children=tuple(c.digest for c in children))
        self.images[(path, index.digest)] = index
        return index.digest

    def current(self, path: str, tag: str, now: float) -> str:
        moves = self.timeline[(path, tag)]
        digest = moves[0][1]
        for at, moved in moves:
            if at > now:
                break
            digest = moved
        return digest

    def held(self, path: str, tag: str, until: float) -> set[str]:
        """Every digest the tag named at some point up to ``until``."""
        return {d for at, d in self.timeline[(path, tag)] if at <= until}

    # -- faults ------------------------------------------------------------------------

    def strength(self, mode: str) -> float:
        """The probability (per request) of ``mode`` now: the strongest window open."""
        now = self.loop.time()
        return max(
            (f.value for f in self.windows if f.target == mode and f.at <= now < f.at + f.duration),
            default=0.0,
        )

    def happens(self, mode: str) -> bool:
        p = self.strength(mode)
        return p > 0 and self.rng.random() < p

    def view(self, replica: str, net: Network, store: MVCCStore, keys: Keys) -> UpstreamView:
        return UpstreamView(self, replica, net, store, keys)

    def mirrors_for(self, net: Network, store: MVCCStore, keys: Keys) -> _Mirrors:
        return _Mirrors(self, net, store, keys)


class _Mirrors:
    """What a replica's configuration says (one pullThrough entry), per replica."""

    def __init__(self, model: UpstreamModel, net: Network, store: MVCCStore, keys: Keys) -> None:
        self.model, self.net, self.store, self.keys = model, net, store, keys

    def __call__(self, replica: str) -> tuple[Mirror, ...]:
        view = self.model.view(replica, self.net, self.store, self.keys)
        return (Mirror(PREFIX, view, TTL),)


class UpstreamView:
    """The upstream as one replica's client reaches it (``Upstream``)."""

    def __init__(
        self, model: UpstreamModel, replica: str, net: Network, store: MVCCStore, keys: Keys
    ) -> None:
        self.model = model
        self.replica = replica
        self.net = net
        self.store = store
        self.keys = keys

    @property
    def name(self) -> str:
        return URL

    async def _request(self, what: str) -> None:
        """The round trip's delays and failures, before the answer."""
        model = self.model
        model.log.requests += 1
        if self.net.is_paused(self.replica):
            await self.net.wait_running(self.replica)
        if not self.net.connected(self.replica, NODE):
            model.log.count(model.log.failures, "unreachable")
            raise UpstreamError(URL, f"{what}: connection refused")
        delay = model.rng.uniform(0.005, 0.05)
        if model.happens("slow"):
            delay += model.rng.uniform(0.0, 10.0 * model.strength("slow"))
        await asyncio.sleep(delay)
        if model.happens("fail"):
            if model.rng.random() < 0.3:
                model.log.count(model.log.failures, "429")
                raise UpstreamRateLimited(URL, f"{what}: 429 Too Many Requests", retry_after=1.0)
            model.log.count(model.log.failures, "503")
            raise UpstreamError(URL, f"{what}: 503 Service Unavailable")

    def _image(self, path: str, reference: str) -> Image:
        model = self.model
        if path not in model.path_blobs:
            raise UpstreamNotFound(URL, f"no repository {path}")
        digest = model.current(path, reference, model.loop.time()) if ":" not in reference else reference
        image = model.images.get((path, digest))
        if image is None:
            raise UpstreamNotFound(URL, f"manifest {path}:{reference} unknown")
        return image

    async def head_manifest(self, path: str, reference: str) -> UpstreamManifestHead:
        await self._request(f"HEAD manifest {path}:{reference}")
        image = self._image(path, reference)
        return UpstreamManifestHead(image.digest, image.media_type, len(image.body))

    async def get_manifest(self, path: str, reference: str, max_bytes: int) -> UpstreamManifest:
        await self._request(f"GET manifest {path}:{reference}")
        model = self.model
        image = self._image(path, reference)  # resolved now: a tag may have moved since the HEAD
        body, media_type = image.body, image.media_type
        if model.happens("lie"):
            # Another of its manifests, one no tag has named yet (so a cache that
            # stored it under a tag would name a digest the upstream never tagged).
            now = model.loop.time()
            tagged = set().union(*(model.held(path, t, now) for t in TAGS))
            others = sorted(d for (p, d) in model.images if p == path and d not in tagged | {image.digest})
            if others and model.rng.random() < 0.5:
                model.log.count(model.log.lies, "manifest-other")
                other = model.images[(path, model.rng.choice(others))]
                body, media_type = other.body, other.media_type
            else:
                model.log.count(model.log.lies, "manifest-truncated")
                body = body[: model.rng.randrange(len(body))]
        return UpstreamManifest(image.digest, media_type, body)

    async def head_blob(self, path: str, digest: str) -> int | None:
        await self._request(f"HEAD blob {digest}")
        if digest not in self.model.path_blobs.get(path, ()):
            raise UpstreamNotFound(URL, f"blob {digest} unknown")
        return len(self.model.blobs[digest])

    async def get_referrers(
        self, path: str, digest: str, artifact_type: str | None, max_bytes: int, page: str | None = None
    ) -> UpstreamReferrers:
        await self._request(f"GET referrers {digest}")
        raise UpstreamNotFound(URL, "no referrers API")

    @contextlib.asynccontextmanager
    async def get_blob(self, path: str, digest: str) -> AsyncIterator[UpstreamBlob]:
        model = self.model
        repo = f"{PREFIX}/{path}"
        key = self.keys.mirror_fetch(repo, digest)
        held = self.store.get(key)
        mine = held is not None and held.value == self.replica.encode()
        fetch = Fetch(
            self.replica,
            repo,
            digest,
            model.loop.time(),
            lease=held.lease if held is not None and mine else 0,
            beside_claim=held is not None and not mine,
        )
        model.log.fetches.append(fetch)
        try:
            await self._request(f"GET blob {digest}")
            if digest not in model.path_blobs.get(path, ()):
                raise UpstreamNotFound(URL, f"blob {digest} unknown")
            data = model.blobs[digest]
            size: int | None = len(data)
            cut: int | None = None  # the connection breaks after this many bytes
            if model.happens("lie"):
                kind = model.rng.choice(("flipped", "truncated", "short-unsized", "padded"))
                model.log.count(model.log.lies, f"blob-{kind}")
                if kind == "flipped":
                    at = model.rng.randrange(len(data))
                    data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
                elif kind == "truncated":  # fewer bytes than Content-Length, then a clean end
                    data = data[: model.rng.randrange(len(data))]
                elif kind == "short-unsized":
                    data, size = data[: model.rng.randrange(len(data))], None
                else:
                    data, size = data + model.rng.randbytes(model.rng.randint(1, 64)), None
            elif model.happens("fail"):
                model.log.count(model.log.failures, "cut mid-blob")
                cut = model.rng.randrange(len(data))
            yield UpstreamBlob(size, self._chunks(data, cut))
        finally:
            fetch.end = model.loop.time()
            still = self.store.get(key)
            fetch.held_throughout = fetch.claimed and still is not None and still.lease == fetch.lease

    async def _chunks(self, data: bytes, cut: int | None) -> AsyncIterator[bytes]:
        model = self.model
        for start in range(0, len(data), CHUNK):
            if cut is not None and start >= cut:
                raise UpstreamError(URL, "connection reset mid-blob")
            if self.net.is_paused(self.replica):
                await self.net.wait_running(self.replica)
            if model.happens("slow"):
                await asyncio.sleep(model.rng.uniform(0.0, 2.0 * model.strength("slow")))
            yield data[start : start + CHUNK]
        if cut is not None:
            raise UpstreamError(URL, "connection reset mid-blob")

    async def close(self) -> None:
        return None
