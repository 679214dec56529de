"""Clients pulling through the pull-through mirror (``mirror/<path>``).

Each pulls a mirrored tag or digest through a random replica, then (for an
index) one of its children, then every blob of the image, the blobs
concurrently, each through its own random replica, and (30% of pulls) the
first blob twice at once: so first pulls of one blob race on several
replicas (the single-flight case), as do two clients pulling one new image.  The handlers do
what the HTTP layer does (``hareg/http/manifests.py`` and ``blobs.py``):
a manifest from ``PullThrough.manifest``; a blob from the cache when its
link exists, else streamed from the upstream as it is stored, a failure
mid-stream breaking the body off (the client sees a short body, never an
error status after a 200).  What each client got is logged, with the bytes,
for ``sim/mirror_check.py``.  Mirror pulls skip the auth middleware (the
access checker judges the ordinary repositories).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.service import Registry
from sim.history import Outcome
from sim.upstream_model import PATHS, PREFIX, TAGS, UpstreamModel
from sim.workload import Env, get_blob

MIRROR_CLIENTS = 2


@dataclass(frozen=True, slots=True)
class Got:
    """A blob as a client received it: its bytes, the length announced, and
    whether the body ended cleanly (a broken-off body is not a success)."""

    data: bytes
    size: int | None
    complete: bool
    fetched: bool  # streamed from the upstream by this request


@dataclass(frozen=True, slots=True)
class Pull:
    client: str
    what: str  # "manifest" | "blob"
    path: str  # at the upstream
    reference: str  # the tag or digest asked for
    start: float
    end: float
    ok: bool  # the client took it as a success
    digest: str = ""  # the digest the registry said it served (manifests)
    data: bytes = b""
    stale: bool = False
    error: str = ""


@dataclass(slots=True)
class MirrorLog:
    pulls: list[Pull] = field(default_factory=list)


async def get_manifest(reg: Registry, repo: str, reference: str) -> tuple[str, bytes, bool]:
    found = await reg.pull_through.manifest(repo, reference)
    return found.content.digest, found.content.body, found.stale


async def get_mirrored_blob(reg: Registry, repo: str, digest: str) -> Got:
    try:
        await reg.blobs.stat(repo, digest)
    except RegistryError as exc:
        if exc.code is not ErrorCode.BLOB_UNKNOWN:
            raise
        blob = await reg.pull_through.blob(repo, digest)
        if blob is not None:
            parts: list[bytes] = []
            try:
                async for chunk in blob.chunks:
                    parts.append(chunk)
            except Exception:  # the status went out: the body breaks off
                return Got(b"".join(parts), blob.size, complete=False, fetched=True)
            finally:
                await blob.close()
            return Got(b"".join(parts), blob.size, complete=True, fetched=True)
    data, size = await get_blob(reg, repo, digest)
    return Got(data, size, complete=True, fetched=False)


class MirrorClient:
    def __init__(
        self, name: str, env: Env, model: UpstreamModel, rng: random.Random, log: MirrorLog, *, think: float
    ) -> None:
        self.name = name
        self.env = env
        self.model = model
        self.rng = rng
        self.log = log
        self.think = think

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.rng.expovariate(1.0 / self.think))
            if stop.is_set():
                return
            path = self.rng.choice(PATHS)
            if self.rng.random() < 0.7:
                reference = self.rng.choice(TAGS)
            else:  # a digest the upstream has published (under a tag, or an index's child)
                now = self.env.loop.time()
                tops = sorted(set().union(*(self.model.held(path, t, now) for t in TAGS)))
                known = [*tops, *(c for d in tops for c in self.model.images[(path, d)].children)]
                reference = self.rng.choice(known)
            await self.pull(path, reference)

    async def _call(self, handler: Any) -> tuple[Outcome, Any, str, float]:
        start = self.env.loop.time()
        resp = await self.env.call(
            self.name, handler, start=self.rng.randrange(len(self.env.replicas)), http=None
        )
        return resp.outcome, resp.value, resp.error, start

    async def _manifest(self, path: str, reference: str) -> tuple[str, bytes] | None:
        repo = f"{PREFIX}/{path}"
        outcome, value, error, start = await self._call(lambda reg: get_manifest(reg, repo, reference))
        now = self.env.loop.time()
        if outcome is not Outcome.OK:
            self.log.pulls.append(
                Pull(self.name, "manifest", path, reference, start, now, False, error=error)
            )
            return None
        digest, body, stale = value
        self.log.pulls.append(
            Pull(
                self.name,
                "manifest",
                path,
                reference,
                start,
                now,
                True,
                digest=digest,
                data=body,
                stale=stale,
            )
        )
        return digest, body

    async def _blob(self, path: str, digest: str) -> None:
        repo = f"{PREFIX}/{path}"
        outcome, value, error, start = await self._call(lambda reg: get_mirrored_blob(reg, repo, digest))
        now = self.env.loop.time()
        ok = outcome is Outcome.OK
        data = b""
        if ok:
            got: Got = value
            data = got.data
            # A body shorter than its Content-Length, or broken off: the client's read fails.
            ok = got.complete and (got.size is None or got.size == len(got.data))
            error = "" if ok else "short body"
        self.log.pulls.append(Pull(self.name, "blob", path, digest, start, now, ok, data=data, error=error))

    async def pull(self, path: str, reference: str) -> None:
        got = await self._manifest(path, reference)
        if got is None:
            return
        try:
            doc = json.loads(got[1])
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        children = [m.get("digest") for m in doc.get("manifests", []) if isinstance(m, dict)]
        if children:
            child = self.rng.choice(children)
            if not isinstance(child, str) or (got := await self._manifest(path, child)) is None:
                return
            try:
                doc = json.loads(got[1])
            except ValueError:
                return
            if not isinstance(doc, dict):
                return
        descriptors = [doc.get("config"), *doc.get("layers", [])]
        digests = [
            d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str)
        ]
        if digests and self.rng.random() < 0.3:
            digests.append(digests[0])  # two nodes pulling one layer at once: the single-flight race
        await asyncio.gather(*(self._blob(path, d) for d in digests))
