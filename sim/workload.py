"""Simulated clients: what they push and pull, and what they were told.

Each client loops over weighted random operations through a load balancer
that picks a replica and fails over only when a connection is refused (as
haproxy does).  Operations call the same service-layer methods the HTTP
handlers call, with the same inputs (async generators of body bytes):

* pushes of new images, of images that share layers with earlier ones (HEAD
  "layer exists", then the manifest PUT), and of multi-arch indexes; blobs
  go up monolithically or in chunks spread over replicas (POST on one,
  PATCH on another, PUT on a third);
* pulls by tag and by digest, checking the body against what was pushed and
  reading what it references (every blob's bytes are hashed);
* tag moves (sometimes two or three at once on one tag), tag deletes,
  manifest deletes, blob deletes, mounts, tag lists;
* uploads with a wrong digest, which must be refused;
* upload janitor sweeps (the registry's garbage collection of staging).

Every request is recorded in the ``History`` with its outcome as the client
saw it; ``Universe`` is the ground truth of every byte the clients produced.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hareg.kv.base import KVError
from hareg.metadata.barrier import Freshness
from hareg.metadata.store import DEFAULT_INLINE_LIMIT
from hareg.registry import authz, policy
from hareg.registry.access import AccessControl
from hareg.registry.blobs import BlobStream
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.manifest_format import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from hareg.registry.pruner import NotLeader
from hareg.registry.service import Registry
from sim import history as h
from sim.history import History, Operation, Outcome
from sim.loop import SimLoop
from sim.network import Network, Pending
from sim.replica import CRASHED, DONE, Replica, ReplicaDown, Reply
from sim.trace import Trace

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
NONDISTRIBUTABLE_TYPE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
PLATFORMS = (("amd64", "linux"), ("arm64", "linux"), ("s390x", "linux"), ("ppc64le", "linux"))

Handler = Callable[[Registry], Awaitable[Any]]
# What a push relied on: digest -> (when the request that confirmed it began, "upload" | "head" | "manifest").
Confirmed = dict[str, tuple[float, str]]
Http = tuple[str, str]  # the request's method and path (and query), as the HTTP layer would see them
REALM = "http://registry.sim/auth/token"  # where a refused client would fetch a token


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@dataclass(frozen=True, slots=True)
class Manifest:
    """Ground truth of a manifest a client produced."""

    repo: str
    digest: str
    body: bytes
    media_type: str
    blobs: tuple[str, ...] = ()
    children: tuple[str, ...] = ()


@dataclass(slots=True)
class Universe:
    """Everything the clients produced (shared knowledge, as if they talked)."""

    repos: tuple[str, ...]
    tags: tuple[str, ...]
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    layers: dict[str, list[str]] = field(default_factory=dict)  # repo -> layers pushed there
    images: dict[str, list[str]] = field(default_factory=dict)  # repo -> manifests pushed there
    acked: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, digest) -> op id of the ack

    def __post_init__(self) -> None:
        for repo in self.repos:
            self.layers.setdefault(repo, [])
            self.images.setdefault(repo, [])


@dataclass(frozen=True, slots=True)
class Response:
    outcome: Outcome
    value: Any = None
    error: str = ""
    code: str = ""  # the spec error code of a 4xx
    detail: Any = None
    replica: str = ""


@dataclass(slots=True)
class Anomaly:
    """Something a client saw that no correct registry may show it."""

    invariant: str
    time: float
    op: int
    message: str


class Env:
    """What clients share: the replicas behind the load balancer, the network,
    the history and the ground truth."""

    def __init__(
        self,
        loop: SimLoop,
        net: Network,
        replicas: list[Replica],
        history: History,
        universe: Universe,
        trace: Trace,
        *,
        request_timeout: float = 10.0,
    ) -> None:
        self.loop = loop
        self.net = net
        self.replicas = replicas
        self.history = history
        self.universe = universe
        self.trace = trace
        self.request_timeout = request_timeout
        self.anomalies: list[Anomaly] = []
        self.unexpected: list[str] = []  # exceptions no handler maps (HTTP 500s)
        self.requests = 0
        # Authentication (sim/identities.py): each client's Authorization header
        # (absent: no credentials) and subject; with ``authz`` off no replica
        # checks access and every request is served, as without an auth section.
        self.authz = any(r.access_config is not None for r in replicas)
        self.credentials: dict[str, str] = {}
        self.subjects: dict[str, str] = {}
        self._by_name = {r.name: r for r in replicas}

    def access_of(self, reg: Registry) -> AccessControl:
        """The access control of the replica process running ``reg``."""
        access = self._by_name[reg.replica].access
        assert access is not None, "the replica runs without an auth section"
        return access

    def with_access(self, apply: Callable[[AccessControl], Awaitable[Any]]) -> Handler:
        """A handler that works on the serving replica's access control (``hareg access``)."""

        async def handler(reg: Registry) -> Any:
            return await apply(self.access_of(reg))

        return handler

    def anomaly(self, invariant: str, op: Operation, message: str) -> None:
        self.anomalies.append(Anomaly(invariant, self.loop.time(), op.id, message))
        self.trace.event("anomaly", inv=invariant, op=op.id, msg=message[:120])

    def guarded(self, handler: Handler, http: Http | None, op: Operation | None, client: str = "") -> Handler:
        """What the HTTP layer runs around the handler: the auth middleware
        (``hareg/http/auth.py``: identify the caller, read the runtime grants
        through the read barrier, authorize the request's needs, the barrier's
        sync lent to the handler's first read), then the read-only middleware's
        admission (``hareg.registry.policy.admit``, the registry's own rule and
        refusal).  The caller's subject and what the request needed are noted
        on the operation for the access checker (``sim/access_check.py``); the
        replica's view of the switch as the request enters for the read-only
        checker: ``<settings revision>:<read-only 0/1>:<history point>``."""
        if http is None:
            return handler  # not an HTTP request (a background task's work)
        method, target = http
        path, _, query_text = target.partition("?")
        write = policy.is_write(method, target)
        history = self.history
        needs: list[authz.Need] = []
        if self.authz:
            query = dict(part.partition("=")[::2] for part in query_text.split("&") if part)
            needs = [n for n in authz.request_needs(method, path, query) if not n.open]
        authorization = self.credentials.get(client)
        if op is not None and needs:
            op.detail["subject"] = self.subjects.get(client, authz.ANONYMOUS)
            noted = set(filter(None, op.detail.get("needs", "").split(" ")))
            noted.update(_need_text(n) for n in needs)
            op.detail["needs"] = " ".join(sorted(noted))

        async def admitted(reg: Registry) -> Any:
            if op is not None and write:
                op.detail["ro"] = f"{reg.settings.revision}:{int(reg.read_only)}:{history.seq}"
            policy.admit(method, target, read_only=reg.read_only)
            return await handler(reg)

        if not needs:
            return admitted

        async def run(reg: Registry) -> Any:
            access = self.access_of(reg)
            with access.request_scope():
                before = _stale_reads(reg)
                try:
                    caller = await access.identify(authorization, client, REALM)
                    if op is not None and _stale(reg, before):
                        # The grants were read from the cache while etcd was unreachable.
                        op.detail["access_stale"] = "1"
                    access.authorize(caller, needs, REALM, write=method not in policy.READ_METHODS)
                except RegistryError:
                    if op is not None:
                        op.detail["refused"] = "access"
                    raise
                return await admitted(reg)

        return run

    async def call(
        self,
        client: str,
        handler: Handler,
        *,
        start: int,
        http: Http | None,
        op: Operation | None = None,
        failover: bool = True,
        give_up_after: float | None = None,
    ) -> Response:
        """One HTTP request through the load balancer, as the client sees it."""
        handler = self.guarded(handler, http, op, client)
        n = len(self.replicas)
        order = [self.replicas[(start + i) % n] for i in range(n if failover else 1)]
        for replica in order:
            if not replica.up or self.net.is_cut(client, replica.name):
                continue  # connection refused: the balancer tries the next one
            return await self._send(client, replica, handler, give_up_after or self.request_timeout)
        return Response(Outcome.FAIL, error="connection refused by every replica", replica=order[0].name)

    async def _send(self, client: str, replica: Replica, handler: Handler, give_up_after: float) -> Response:
        self.requests += 1
        name = replica.name
        pending = Pending(self.loop, self.loop.time() + give_up_after)

        def respond(reply: Reply) -> None:
            if not self.net.send(
                name, client, functools.partial(pending.resolve, reply), on_drop=pending.lost
            ):
                pending.lost()

        def arrive() -> None:
            try:
                replica.serve(handler, respond)
            except ReplicaDown:
                respond(Reply(REFUSED, None))

        if not self.net.send(client, name, arrive, on_drop=pending.lost):
            return Response(Outcome.FAIL, error="connection refused", replica=name)
        reply = await pending.fut
        if not isinstance(reply, Reply):
            return Response(Outcome.UNKNOWN, error="client timeout", replica=name)
        if reply.status == REFUSED:
            return Response(Outcome.FAIL, error="connection refused", replica=name)
        if reply.status == CRASHED:
            return Response(Outcome.UNKNOWN, error="connection reset (replica died)", replica=name)
        if reply.status == DONE:
            return Response(Outcome.OK, value=reply.value, replica=name)
        exc = reply.value
        # What the HTTP error middleware answers: the registry's error, or the
        # one the policy maps a dependency failure to, or a 500.
        err = exc if isinstance(exc, RegistryError) else policy.dependency_error(exc)
        if err is not None and err.status >= 500 and err is not exc:
            # The failure's own name, for the checkers (a storage answer passed on as a 503).
            return Response(Outcome.UNKNOWN, error=f"5xx {type(exc).__name__}", replica=name)
        if err is not None:
            outcome = Outcome.FAIL if err.status < 500 else Outcome.UNKNOWN
            return Response(
                outcome,
                error=f"{err.status} {err.code.name}",
                code=err.code.name,
                detail=err.detail,
                replica=name,
            )
        self.unexpected.append(f"{type(exc).__name__}: {exc}")
        self.trace.event("unexpected", r=name, exc=type(exc).__name__, msg=str(exc)[:100])
        return Response(Outcome.UNKNOWN, error=f"500 {type(exc).__name__}", replica=name)


REFUSED = "refused"


def _need_text(need: authz.Need) -> str:
    """A need as the history notes it: ``action:repository`` (``cluster``,
    ``login`` and ``browse`` alone)."""
    if need.login:
        return "login"
    if need.browse:
        return "browse"
    return f"{need.action}:{need.repo}" if need.repo is not None else authz.CLUSTER


async def get_blob(reg: Registry, repo: str, digest: str) -> tuple[bytes, int]:
    """What ``GET /v2/<repo>/blobs/<digest>`` does: the link, then the bytes as
    the service says to serve them (the simulated store has neither presigned
    URLs nor local files, so they are streamed); the bytes and the link's size."""
    info = await reg.blobs.stat(repo, digest)
    source = await reg.blobs.open(info)
    if not isinstance(source, BlobStream):
        raise AssertionError(f"the simulated store cannot serve a blob as {type(source).__name__}")
    return b"".join([chunk async for chunk in source.chunks]), info.size


def _found(resp: Response, missing: ErrorCode) -> bool | None:
    if resp.outcome is Outcome.OK:
        return True
    return False if resp.code == missing.name else None


def _stale_reads(reg: Registry) -> int:
    """How many reads this replica's barrier has let the cache serve stale so far."""
    return reg.barrier.results[Freshness.STALE] if reg.barrier is not None else 0


def _stale(reg: Registry, before: int | None = None) -> bool:
    """Whether this request may have been served from the cache because etcd was
    unreachable: reads are served stale now, or (``before``: ``_stale_reads`` as
    the request began) some read was since.  A request that awaits more after its
    barrier (a repository check, a stored body) may end after etcd is back."""
    if reg.barrier is not None and not reg.barrier.store_available:
        return True
    return before is not None and _stale_reads(reg) > before


class Client:
    """One simulated client (a CI job pushing, a node pulling)."""

    WEIGHTS: tuple[tuple[str, float], ...] = (
        ("push_image", 18),
        ("push_shared", 12),
        ("push_index", 4),
        ("pull_tag", 30),
        ("pull_digest", 10),
        ("tag_move", 8),
        ("tag_race", 3),
        ("tag_delete", 5),
        ("manifest_delete", 3),
        ("blob_delete", 2),
        ("bad_upload", 3),
        ("mount", 2),
        ("janitor", 1),
        ("list_tags", 2),
        ("rollback", 4),
        ("prune", 4),
        ("push_large", 1),
        ("immutability", 1),
        ("read_only", 0.5),
        ("repush_delete_race", 2),
        ("push_repeated_tag", 1),
        ("media_type_flip", 1),
        ("push_with_urls", 0.5),
        ("push_referrer", 2),
    )

    def __init__(self, name: str, env: Env, rng: random.Random, *, think: float = 0.3) -> None:
        self.name = name
        self.env = env
        self.rng = rng
        self.think = think
        self._ops = [op for op, _ in self.WEIGHTS]
        self._weights = [w for _, w in self.WEIGHTS]
        self.u = env.universe
        self.history = env.history

    # -- plumbing --------------------------------------------------------------------

    def _replica(self) -> int:
        return self.rng.randrange(len(self.env.replicas))

    async def _request(
        self,
        kind: str,
        repo: str,
        handler: Handler,
        *,
        tag: str | None = None,
        digest: str | None = None,
        replica: int | None = None,
        final: bool = False,
        http: Http | None,
    ) -> tuple[Operation, Response]:
        start = self._replica() if replica is None else replica
        op = self.history.invoke(
            self.name, kind, repo, self.env.replicas[start].name, tag=tag, digest=digest, final=final
        )
        resp = await self.env.call(
            self.name, handler, start=start, http=http, op=op, failover=replica is None
        )
        op.replica = resp.replica or op.replica
        return op, resp

    def _complete(self, op: Operation, resp: Response, **fields: Any) -> None:
        if resp.code:
            op.detail["code"] = resp.code
            if isinstance(resp.detail, dict):
                if "pattern" in resp.detail:  # an immutable tag refused the request
                    op.detail["pattern"] = str(resp.detail["pattern"])
                    op.detail["denied_tag"] = str(resp.detail.get("tag", ""))
                if resp.detail.get("readOnly"):
                    op.detail["read_only"] = "refused"
        self.history.complete(op, resp.outcome, error=resp.error, **fields)

    def _random_bytes(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def _repo(self) -> str:
        return self.u.repos[self.rng.randrange(len(self.u.repos))]

    def _tag(self) -> str:
        return self.u.tags[self.rng.randrange(len(self.u.tags))]

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.rng.expovariate(1.0 / self.think))
            if stop.is_set():
                return
            kind = self.rng.choices(self._ops, self._weights)[0]
            await getattr(self, kind)()

    # -- blobs -----------------------------------------------------------------------------

    def _new_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.u.blobs[digest] = data
        return digest

    async def _upload(
        self, repo: str, digest: str, data: bytes, *, kind: str = h.BLOB_UPLOAD, chunked: float = 0.6
    ) -> tuple[Operation, Response]:
        """Upload a blob, monolithically or in chunks over several replicas."""
        if self.rng.random() >= chunked:
            op, resp = await self._request(
                kind,
                repo,
                lambda reg: reg.uploads.monolithic(repo, digest, chunks_of(data), length=len(data)),
                digest=digest,
                http=("POST", f"/v2/{repo}/blobs/uploads/"),
            )
            self._complete(op, resp)
            return op, resp
        return await self._chunked(repo, digest, data, kind)

    async def _chunked(self, repo: str, digest: str, data: bytes, kind: str) -> tuple[Operation, Response]:
        """POST on one replica, PATCHes on others, PUT on another: one operation."""
        op = self.history.invoke(self.name, kind, repo, "", digest=digest)
        cuts = sorted(self.rng.sample(range(1, len(data)), k=min(len(data) - 1, self.rng.randint(0, 2))))
        parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        path: list[str] = []
        resp = await self.env.call(
            self.name,
            lambda reg: reg.uploads.start(repo),
            start=self._replica(),
            http=("POST", f"/v2/{repo}/blobs/uploads/"),
            op=op,
        )
        path.append(resp.replica)
        if resp.outcome is Outcome.OK:
            upload_id = resp.value.upload_id
            offset = 0
            last = parts.pop() if parts and self.rng.random() < 0.5 else None
            for part in parts:
                resp = await self.env.call(
                    self.name,
                    lambda reg, p=part, o=offset: reg.uploads.write(  # type: ignore[misc]
                        repo, upload_id, chunks_of(p), start=o, length=len(p)
                    ),
                    start=self._replica(),
                    http=("PATCH", f"/v2/{repo}/blobs/uploads/{upload_id}"),
                    op=op,
                )
                path.append(resp.replica)
                if resp.outcome is not Outcome.OK:
                    break
                offset += len(part)
            if resp.outcome is Outcome.OK:
                final_chunks = chunks_of(last) if last is not None else None
                length = len(last) if last is not None else None
                resp = await self.env.call(
                    self.name,
                    lambda reg: reg.uploads.finish(
                        repo,
                        upload_id,
                        digest,
                        final_chunks,
                        start=offset if last is not None else None,
                        length=length,
                    ),
                    start=self._replica(),
                    http=("PUT", f"/v2/{repo}/blobs/uploads/{upload_id}"),
                    op=op,
                )
                path.append(resp.replica)
        op.replica = ">".join(path)
        self._complete(op, resp)
        return op, resp

    async def _ensure_blob(self, repo: str, digest: str) -> tuple[bool, str]:
        """HEAD, then upload if missing: (available, how the registry confirmed it:
        "head", "upload", or "" when not by a linearizable read).

        A HEAD answered from the cache while etcd is unreachable may be stale
        (documented in docs/consistency.md): the push relies on it, but the
        garbage-collection check does not count it as a confirmation."""

        async def head(reg: Registry) -> bool:
            before = _stale_reads(reg)
            await reg.blobs.stat(repo, digest)
            return _stale(reg, before)

        op, resp = await self._request(
            h.BLOB_HEAD, repo, head, digest=digest, http=("HEAD", f"/v2/{repo}/blobs/{digest}")
        )
        exists = resp.outcome is Outcome.OK
        stale = exists and bool(resp.value)
        self._complete(op, resp, found=_found(resp, ErrorCode.BLOB_UNKNOWN), stale=stale)
        if exists:
            return True, "" if stale else "head"
        _, up = await self._upload(repo, digest, self.u.blobs[digest])
        ok = up.outcome is Outcome.OK
        return ok, "upload" if ok else ""

    # -- manifests ---------------------------------------------------------------------------

    def _image_body(
        self, config: str, layers: list[str], platform: tuple[str, str] | None, pad: int = 0
    ) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": len(self.u.blobs[config])},
            "layers": [{"mediaType": LAYER_TYPE, "digest": d, "size": len(self.u.blobs[d])} for d in layers],
        }
        annotations: dict[str, str] = {}
        if platform is not None:
            annotations["org.example.platform"] = "/".join(platform)
        if pad:
            annotations["org.example.padding"] = "x" * pad  # a body above the inline limit
        if annotations:
            doc["annotations"] = annotations
        return json.dumps(doc, sort_keys=True).encode()

    async def _build_image(
        self, repo: str, *, share: bool, platform: tuple[str, str] | None = None, pad: int = 0
    ) -> tuple[Manifest, Confirmed] | None:
        """Upload an image's blobs; returns its manifest (not pushed yet) and when
        the registry confirmed each blob (uploaded, or "exists" to a HEAD); None on failure."""
        pool = self.u.layers[repo]
        shared = self.rng.sample(pool, k=min(len(pool), self.rng.randint(1, 2))) if share and pool else []
        fresh = [
            self._new_blob(self._random_bytes(16, 1536))
            for _ in range(self.rng.randint(0 if shared else 1, 2))
        ]
        arch, os_name = platform or PLATFORMS[self.rng.randrange(len(PLATFORMS))]
        config = self._new_blob(
            json.dumps({"architecture": arch, "os": os_name, "nonce": self.rng.getrandbits(64)}).encode()
        )
        layers = shared + fresh
        confirmed: Confirmed = {}
        for digest in [config, *layers]:
            # The registry's guard starts during the confirming request, which may be
            # answered much later (a paused replica): count from when it began.
            began = self.env.loop.time()
            if digest in shared:
                ok, how = await self._ensure_blob(repo, digest)
            else:
                ok = (await self._upload(repo, digest, self.u.blobs[digest]))[1].outcome is Outcome.OK
                how = "upload" if ok else ""
            if not ok:
                return None
            if how:
                confirmed[digest] = (began, how)
        for d in fresh:
            pool.append(d)
        body = self._image_body(config, layers, platform, pad)
        m = Manifest(repo, sha256(body), body, OCI_MANIFEST, blobs=tuple(dict.fromkeys([config, *layers])))
        self.u.manifests[(repo, m.digest)] = m
        self.u.images[repo].append(m.digest)
        return m, confirmed

    def _note_missing(self, op: Operation, resp: Response, confirmed: Confirmed) -> None:
        """Keep what the push relied on, for the check of invariant 6 (docs/invariants.md)."""
        if resp.code == ErrorCode.MANIFEST_BLOB_UNKNOWN.name and isinstance(resp.detail, dict):
            missing = [*resp.detail.get("blobs", []), *resp.detail.get("manifests", [])]
            op.detail["missing"] = ",".join(missing)
            # What the registry confirmed, and when: uploaded blobs (the GC grace window),
            # blobs found by a HEAD (half of it: docs/gc.md, G2b) and manifests (keepYoungerThan).
            for name, kind in (
                ("confirmed", "upload"),
                ("confirmed_head", "head"),
                ("confirmed_manifests", "manifest"),
            ):
                op.detail[name] = ",".join(f"{d}={t!r}" for d, (t, how) in confirmed.items() if how == kind)

    async def _put_tag(self, m: Manifest, tag: str, confirmed: Confirmed) -> None:
        op, resp = await self._request(
            h.TAG_WRITE,
            m.repo,
            lambda reg: reg.manifests.put(m.repo, tag, m.body, m.media_type),
            tag=tag,
            digest=m.digest,
            http=("PUT", f"/v2/{m.repo}/manifests/{tag}"),
        )
        self._note_missing(op, resp, confirmed)
        self._complete(op, resp)
        if resp.outcome is Outcome.OK:
            self.u.acked.setdefault((m.repo, m.digest), op.id)

    async def _put_digest(self, m: Manifest, confirmed: Confirmed) -> bool:
        op, resp = await self._request(
            h.MANIFEST_PUT,
            m.repo,
            lambda reg: reg.manifests.put(m.repo, m.digest, m.body, m.media_type),
            digest=m.digest,
            http=("PUT", f"/v2/{m.repo}/manifests/{m.digest}"),
        )
        self._note_missing(op, resp, confirmed)
        self._complete(op, resp)
        if resp.outcome is Outcome.OK:
            self.u.acked.setdefault((m.repo, m.digest), op.id)
            return True
        return False

    # -- operations -----------------------------------------------------------------------------

    async def push_image(self, *, share: bool = False) -> None:
        built = await self._build_image(self._repo(), share=share)
        if built is not None:
            await self._put_tag(built[0], self._tag(), built[1])

    async def push_shared(self) -> None:
        await self.push_image(share=True)

    async def push_large(self) -> None:
        """An image whose manifest is above the registry's inline limit: its body
        is stored in the object store, not in etcd (``ManifestService.put``)."""
        pad = DEFAULT_INLINE_LIMIT + self.rng.randint(1, 64 * 1024)
        built = await self._build_image(self._repo(), share=self.rng.random() < 0.5, pad=pad)
        if built is not None:
            await self._put_tag(built[0], self._tag(), built[1])

    async def immutability(self) -> None:
        """Set (or clear) a repository's immutable tag patterns, as
        ``PUT /hareg/v1/repositories/<name>/immutability`` does."""
        repo = self._repo()
        roll = self.rng.random()
        if roll < 0.5:
            patterns: list[str] = []
        elif roll < 0.8:
            patterns = [self._tag()]
        elif roll < 0.95:
            patterns = ["v*"]
        else:
            patterns = ["*"]
        op, resp = await self._request(
            h.IMMUTABILITY,
            repo,
            lambda reg: reg.tag_lifecycle.set_immutability(repo, patterns),
            http=("PUT", f"/hareg/v1/repositories/{repo}/immutability"),
        )
        op.detail["patterns"] = ",".join(patterns)
        self._complete(op, resp)

    async def read_only(self) -> None:
        """An operator puts the cluster in read-only mode for a few seconds
        (``PUT /hareg/v1/read-only``), then makes it writable again."""

        async def switch(on: bool) -> Response:
            op, resp = await self._request(
                h.READ_ONLY,
                "",
                lambda reg: reg.settings.set_read_only(on),
                http=("PUT", "/hareg/v1/read-only"),
            )
            op.detail["on"] = str(int(on))
            self._complete(op, resp)
            return resp

        await switch(True)
        await asyncio.sleep(self.rng.uniform(1.0, 5.0))
        for _ in range(8):  # an operator retries until the registry is writable again
            if (await switch(False)).outcome is Outcome.OK:
                return
            await asyncio.sleep(self.rng.uniform(0.5, 1.5))

    async def push_index(self) -> None:
        repo = self._repo()
        children: list[Manifest] = []
        confirmed: Confirmed = {}
        platforms = self.rng.sample(PLATFORMS, k=2)
        for platform in platforms:
            built = await self._build_image(repo, share=self.rng.random() < 0.5, platform=platform)
            if built is None:
                return
            began = self.env.loop.time()  # keepYoungerThan counts from the record's creation, during the PUT
            if not await self._put_digest(built[0], built[1]):
                return
            children.append(built[0])
            confirmed[built[0].digest] = (began, "manifest")
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": c.media_type,
                    "digest": c.digest,
                    "size": len(c.body),
                    "platform": {"architecture": p[0], "os": p[1]},
                }
                for c, p in zip(children, platforms, strict=True)
            ],
        }
        body = json.dumps(doc, sort_keys=True).encode()
        index = Manifest(repo, sha256(body), body, OCI_INDEX, children=tuple(c.digest for c in children))
        self.u.manifests[(repo, index.digest)] = index
        self.u.images[repo].append(index.digest)
        await self._put_tag(index, self._tag(), confirmed)

    async def pull_tag(
        self,
        *,
        repo: str | None = None,
        tag: str | None = None,
        replica: int | None = None,
        final: bool = False,
    ) -> Operation:
        repo = repo or self._repo()
        tag = tag or self._tag()

        async def handler(reg: Registry) -> tuple[tuple[str, bytes] | None, bool]:
            before = _stale_reads(reg)
            try:
                content = await reg.manifests.get(repo, tag)
            except RegistryError as exc:
                if exc.code is ErrorCode.MANIFEST_UNKNOWN:
                    return None, _stale(reg, before)
                raise
            return (content.digest, content.body), _stale(reg, before)

        op, resp = await self._request(
            h.TAG_READ,
            repo,
            handler,
            tag=tag,
            replica=replica,
            final=final,
            http=("GET", f"/v2/{repo}/manifests/{tag}"),
        )
        if resp.outcome is not Outcome.OK:
            self._complete(op, resp)
            return op
        got, stale = resp.value
        self._complete(op, resp, value=got[0] if got else None, stale=stale)
        if got is not None:
            await self._check_content(op, repo, got[0], got[1], deep=self.rng.random() < 0.1)
        return op

    async def pull_digest(
        self,
        *,
        repo: str | None = None,
        digest: str | None = None,
        replica: int | None = None,
        final: bool = False,
    ) -> Operation | None:
        repo = repo or self._repo()
        if digest is None:
            images = self.u.images[repo]
            if not images:
                return None
            digest = images[self.rng.randrange(len(images))]

        async def handler(reg: Registry) -> tuple[bytes | None, bool]:
            before = _stale_reads(reg)
            try:
                content = await reg.manifests.get(repo, digest)
            except RegistryError as exc:
                if exc.code is ErrorCode.MANIFEST_UNKNOWN:
                    return None, _stale(reg, before)
                raise
            return content.body, _stale(reg, before)

        op, resp = await self._request(
            h.DIGEST_READ,
            repo,
            handler,
            digest=digest,
            replica=replica,
            final=final,
            http=("GET", f"/v2/{repo}/manifests/{digest}"),
        )
        if resp.outcome is not Outcome.OK:
            self._complete(op, resp)
            return op
        body, stale = resp.value
        self._complete(
            op, resp, value=digest if body is not None else None, found=body is not None, stale=stale
        )
        if body is not None:
            await self._check_content(op, repo, digest, body, deep=not final and self.rng.random() < 0.1)
        return op

    async def _check_content(self, op: Operation, repo: str, digest: str, body: bytes, *, deep: bool) -> None:
        """The body is the one pushed under this digest; with ``deep``, what it
        references is there too (invariants 1, 2, 3 of docs/invariants.md)."""
        if sha256(body) != digest:
            self.env.anomaly("3", op, f"manifest body of {repo}@{digest[:19]} hashes to {sha256(body)[:19]}")
            return
        m = self.u.manifests.get((repo, digest))
        if m is None:
            self.env.anomaly("1", op, f"{repo}@{digest[:19]} was never pushed by any client")
            return
        if m.body != body:
            self.env.anomaly("1", op, f"{repo}@{digest[:19]}: body differs from the one pushed")
        if deep:
            await self.check_references(m)

    async def check_references(
        self, m: Manifest, *, replica: int | None = None, final: bool = False
    ) -> str | None:
        """Read every blob (bytes hashed) and child manifest ``m`` references.

        None: all there; a digest: that one is definitely missing; "": some
        read failed for another reason (5xx, timeout)."""
        transient = False
        for ref in m.blobs:

            async def read_blob(reg: Registry, ref: str = ref) -> tuple[bytes, int]:
                return await get_blob(reg, m.repo, ref)

            op, resp = await self._request(
                h.REF_CHECK,
                m.repo,
                read_blob,
                digest=ref,
                replica=replica,
                final=final,
                http=("GET", f"/v2/{m.repo}/blobs/{ref}"),
            )
            op.detail["of"] = m.digest
            self._complete(op, resp, found=_found(resp, ErrorCode.BLOB_UNKNOWN))
            if resp.outcome is Outcome.OK:
                data, size = resp.value
                if len(data) != size:
                    self.env.anomaly("1", op, f"blob {ref[:19]} has {len(data)} bytes, its link says {size}")
                if sha256(data) != ref:
                    self.env.anomaly(
                        "3", op, f"blob {ref[:19]} served with bytes hashing to {sha256(data)[:19]}"
                    )
                elif data != self.u.blobs.get(ref):
                    self.env.anomaly("1", op, f"blob {ref[:19]} bytes differ from the ones pushed")
            elif resp.code == ErrorCode.BLOB_UNKNOWN.name:
                return ref
            else:
                transient = True
        for child in m.children:

            async def read_child(reg: Registry, child: str = child) -> bytes:
                return (await reg.manifests.get(m.repo, child)).body

            op, resp = await self._request(
                h.REF_CHECK,
                m.repo,
                read_child,
                digest=child,
                replica=replica,
                final=final,
                http=("GET", f"/v2/{m.repo}/manifests/{child}"),
            )
            op.detail["of"] = m.digest
            self._complete(op, resp, found=_found(resp, ErrorCode.MANIFEST_UNKNOWN))
            if resp.outcome is Outcome.OK:
                if sha256(resp.value) != child:
                    self.env.anomaly("3", op, f"child manifest {child[:19]} body does not hash to its digest")
            elif resp.code == ErrorCode.MANIFEST_UNKNOWN.name:
                return child
            else:
                transient = True
        return "" if transient else None

    async def tag_move(self) -> None:
        repo = self._repo()
        acked = [d for d in self.u.images[repo] if (repo, d) in self.u.acked]
        if not acked:
            return
        m = self.u.manifests[(repo, acked[self.rng.randrange(len(acked))])]
        await self._put_tag(m, self._tag(), {})

    async def tag_race(self) -> None:
        """Two or three writes of one tag at once through different replicas (CI
        jobs racing to move ``latest``): what a tag write's compare is for."""
        repo, tag = self._repo(), self._tag()
        acked = [d for d in self.u.images[repo] if (repo, d) in self.u.acked]
        if not acked:
            return
        picks = [acked[self.rng.randrange(len(acked))] for _ in range(self.rng.randint(2, 3))]
        await asyncio.gather(*(self._put_tag(self.u.manifests[(repo, d)], tag, {}) for d in picks))

    async def _delete(
        self,
        kind: str,
        repo: str,
        delete: Callable[[Registry], Awaitable[None]],
        missing: ErrorCode,
        path: str,
        *,
        tag: str | None = None,
        digest: str | None = None,
    ) -> None:
        """A DELETE; ``found`` records whether the registry had the thing (404 = False)."""

        async def handler(reg: Registry) -> bool:
            try:
                await delete(reg)
            except RegistryError as exc:
                if exc.code is missing:
                    return False
                raise
            return True

        op, resp = await self._request(kind, repo, handler, tag=tag, digest=digest, http=("DELETE", path))
        self._complete(op, resp, found=resp.value if resp.outcome is Outcome.OK else None)

    async def tag_delete(self) -> None:
        repo, tag = self._repo(), self._tag()
        await self._delete(
            h.TAG_DELETE,
            repo,
            lambda reg: reg.manifests.delete(repo, tag),
            ErrorCode.MANIFEST_UNKNOWN,
            f"/v2/{repo}/manifests/{tag}",
            tag=tag,
        )

    async def manifest_delete(self) -> None:
        repo = self._repo()
        images = self.u.images[repo]
        if not images:
            return
        digest = images[self.rng.randrange(len(images))]
        await self._delete(
            h.MANIFEST_DELETE,
            repo,
            lambda reg: reg.manifests.delete(repo, digest),
            ErrorCode.MANIFEST_UNKNOWN,
            f"/v2/{repo}/manifests/{digest}",
            digest=digest,
        )

    async def blob_delete(self) -> None:
        repo = self._repo()
        pool = self.u.layers[repo]
        if not pool:
            return
        digest = pool[self.rng.randrange(len(pool))]
        await self._delete(
            h.BLOB_DELETE,
            repo,
            lambda reg: reg.blobs.delete(repo, digest),
            ErrorCode.BLOB_UNKNOWN,
            f"/v2/{repo}/blobs/{digest}",
            digest=digest,
        )

    async def bad_upload(self) -> None:
        """An upload whose digest is not its content's must be refused (invariant 3 of docs/invariants.md)."""
        repo = self._repo()
        data = self._random_bytes(8, 512)
        wrong = sha256(data + b"!")
        op, resp = await self._upload(repo, wrong, data, kind=h.BAD_UPLOAD, chunked=0.75)
        if resp.outcome is Outcome.OK:
            self.env.anomaly(
                "3", op, f"upload of {len(data)} bytes accepted under the wrong digest {wrong[:19]}"
            )

    async def mount(self) -> None:
        repo, source = self._repo(), self._repo()
        if repo == source or not self.u.layers[source]:
            return
        digest = self.u.layers[source][self.rng.randrange(len(self.u.layers[source]))]
        op, resp = await self._request(
            h.BLOB_MOUNT,
            repo,
            lambda reg: reg.blobs.mount(repo, digest, source),
            digest=digest,
            http=("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}"),
        )
        self._complete(op, resp, found=resp.value is not None if resp.outcome is Outcome.OK else None)
        if resp.outcome is Outcome.OK and resp.value is not None and digest not in self.u.layers[repo]:
            self.u.layers[repo].append(digest)

    async def janitor(self) -> None:
        async def handler(reg: Registry) -> int:
            janitor = getattr(reg, "janitor", None)
            if janitor is None:
                return 0
            return len(await janitor.sweep())

        op, resp = await self._request(h.JANITOR, "", handler, http=None)  # a background task's work
        self._complete(op, resp, value=str(resp.value) if resp.outcome is Outcome.OK else None)

    async def rollback(self) -> None:
        """Point a tag back at an earlier manifest (a new forward history entry)."""
        repo, tag = self._repo(), self._tag()
        acked = [d for d in self.u.images[repo] if (repo, d) in self.u.acked]
        if not acked:
            return
        digest = acked[self.rng.randrange(len(acked))]
        op, resp = await self._request(
            h.TAG_WRITE,
            repo,
            lambda reg: reg.tag_lifecycle.rollback(repo, tag, digest),
            tag=tag,
            digest=digest,
            http=("POST", f"/hareg/v1/repositories/{repo}/tags/{tag}/rollback"),
        )
        op.detail["action"] = "rollback"
        if resp.outcome is Outcome.OK:
            op.detail["moved"] = "yes" if resp.value.moved else "no"
        self._complete(op, resp)

    async def prune(self) -> None:
        """A pruner run (garbage collection), forwarded to the leader as the HTTP API does;
        with identities, half of them limited to one repository (as its admin runs it)."""
        only: frozenset[str] | None = None
        prune = ("POST", "/hareg/v1/prune")
        if self.env.authz and self.rng.random() < 0.5:
            repo = self._repo()
            only = frozenset({repo})
            prune = ("POST", f"/hareg/v1/repositories/{repo}/prune")

        async def handler(reg: Registry) -> tuple[bool, str | None, str]:
            try:
                report = await reg.pruner.run_once(only=only)
            except NotLeader as exc:
                return False, exc.leader, ""
            counts = report.to_json()["counts"]
            return True, reg.replica, ",".join(f"{k}={v}" for k, v in counts.items() if v)

        op, resp = await self._request(h.PRUNE, "", handler, http=prune)
        if resp.outcome is Outcome.OK and not resp.value[0] and resp.value[1] is not None:
            leader = next((i for i, r in enumerate(self.env.replicas) if r.name == resp.value[1]), None)
            if leader is not None:
                resp = await self.env.call(
                    self.name, handler, start=leader, http=prune, op=op, failover=False
                )
        ran = resp.outcome is Outcome.OK and bool(resp.value[0])
        if resp.outcome is Outcome.OK and not ran:
            resp = Response(Outcome.FAIL, error="no pruner leader reachable", replica=resp.replica)
        self._complete(op, resp, value=resp.value[2] if ran else None)

    async def list_tags(self) -> None:
        repo = self._repo()

        async def handler(reg: Registry) -> tuple[list[str], bool]:
            before = _stale_reads(reg)
            try:
                tags, _ = await reg.listing.tags(repo, None, None)
            except RegistryError as exc:
                if exc.code is ErrorCode.NAME_UNKNOWN:
                    return [], _stale(reg, before)
                raise
            return tags, _stale(reg, before)

        op, resp = await self._request(h.LIST_TAGS, repo, handler, http=("GET", f"/v2/{repo}/tags/list"))
        if resp.outcome is Outcome.OK:
            op.detail["tags"] = ",".join(resp.value[0])
            self._complete(op, resp, stale=resp.value[1])
        else:
            self._complete(op, resp)

    # -- races and re-pushes that once lost or changed acknowledged state (issue 11) -----------

    async def repush_delete_race(self) -> None:
        """A re-push of a tag's current manifest racing a DELETE of that manifest
        by digest: if both are acknowledged, the push came last, so the tag must
        name the manifest (the push's transaction compares the tag even when it
        finds it already there; ``check_tag_pushes``)."""
        repo, tag = self._repo(), self._tag()
        read = await self.pull_tag(repo=repo, tag=tag)
        m = self.u.manifests.get((repo, read.value)) if read.ok and read.value else None
        if m is None:
            return
        await asyncio.gather(
            self._put_tag(m, tag, {}),
            self._delete(
                h.MANIFEST_DELETE,
                repo,
                lambda reg: reg.manifests.delete(repo, m.digest),
                ErrorCode.MANIFEST_UNKNOWN,
                f"/v2/{repo}/manifests/{m.digest}",
                digest=m.digest,
            ),
        )

    async def push_repeated_tag(self) -> None:
        """``PUT /v2/<repo>/manifests/<digest>?tag=t&tag=t``: one tag named twice
        is one tag write, never a transaction with the same key twice (which
        etcd refuses, a 5xx no retry can cure)."""
        repo, tag = self._repo(), self._tag()
        acked = [d for d in self.u.images[repo] if (repo, d) in self.u.acked]
        if not acked:
            return
        m = self.u.manifests[(repo, acked[self.rng.randrange(len(acked))])]

        async def handler(reg: Registry) -> str:
            try:
                await reg.manifests.put(repo, m.digest, m.body, m.media_type, extra_tags=[tag, tag])
            except KVError as exc:
                if "duplicate key" in str(exc):
                    return "duplicate key"
                raise
            return "ok"

        op, resp = await self._request(
            h.TAG_WRITE,
            repo,
            handler,
            tag=tag,
            digest=m.digest,
            http=("PUT", f"/v2/{repo}/manifests/{m.digest}?tag={tag}&tag={tag}"),
        )
        op.detail["tags"] = "repeated"
        if resp.outcome is Outcome.OK and resp.value == "duplicate key":
            self.env.anomaly("internal", op, f"?tag={tag}&tag={tag} put one key twice in a transaction")
            resp = Response(Outcome.FAIL, error="500 duplicate key", replica=resp.replica)
        self._complete(op, resp)

    async def media_type_flip(self) -> None:
        """A manifest body without ``mediaType`` pushed under one Content-Type,
        then again under another: its digest must keep the first type.  It gets
        a tag of its own, so no other client moves, deletes or collects it."""
        repo = self._repo()
        built = await self._build_image(repo, share=self.rng.random() < 0.5)
        if built is None:
            return
        doc = json.loads(built[0].body)
        del doc["mediaType"]
        body = json.dumps(doc, sort_keys=True).encode()
        first, second = self.rng.sample([OCI_MANIFEST, DOCKER_MANIFEST], k=2)
        m = Manifest(repo, sha256(body), body, first, blobs=built[0].blobs)
        self.u.manifests[(repo, m.digest)] = m
        tag = f"flip-{self.name}"
        await self._put_tag(m, tag, built[1])
        if (repo, m.digest) not in self.u.acked:
            return
        await self._put_tag(Manifest(repo, m.digest, body, second, blobs=m.blobs), tag, {})

        async def handler(reg: Registry) -> tuple[str | None, bool]:
            try:
                return (await reg.manifests.get(repo, m.digest)).media_type, _stale(reg)
            except RegistryError as exc:
                if exc.code is ErrorCode.MANIFEST_UNKNOWN:
                    return None, _stale(reg)
                raise

        op, resp = await self._request(
            h.DIGEST_READ, repo, handler, digest=m.digest, http=("GET", f"/v2/{repo}/manifests/{m.digest}")
        )
        if resp.outcome is not Outcome.OK:
            self._complete(op, resp)
            return
        served, stale = resp.value
        self._complete(op, resp, value=m.digest if served else None, found=served is not None, stale=stale)
        if served is not None and served != first:
            self.env.anomaly(
                "1", op, f"manifest {m.digest[:19]} pushed as {first} is served as {served} after a re-push"
            )

    async def push_with_urls(self) -> None:
        """A manifest whose layer lists ``urls`` and was never pushed: refused
        (no URL is allowed by default, and only a non-distributable layer may be
        absent), never stored referencing a blob the registry does not have."""
        repo = self._repo()
        config = self._new_blob(json.dumps({"nonce": self.rng.getrandbits(64)}).encode())
        ok = (await self._upload(repo, config, self.u.blobs[config]))[1].outcome is Outcome.OK
        if not ok:
            return
        absent = sha256(self._random_bytes(16, 64))
        foreign = self.rng.random() < 0.5
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": config, "size": len(self.u.blobs[config])},
            "layers": [
                {
                    "mediaType": NONDISTRIBUTABLE_TYPE if foreign else LAYER_TYPE,
                    "digest": absent,
                    "size": 32,
                    "urls": [f"https://example.com/{absent[7:19]}"],
                }
            ],
        }
        body = json.dumps(doc, sort_keys=True).encode()
        digest = sha256(body)
        op, resp = await self._request(
            h.MANIFEST_PUT,
            repo,
            lambda reg: reg.manifests.put(repo, digest, body, OCI_MANIFEST),
            digest=digest,
            http=("PUT", f"/v2/{repo}/manifests/{digest}"),
        )
        self._complete(op, resp)
        if resp.outcome is Outcome.OK:
            self.env.anomaly(
                "2", op, f"manifest {digest[:19]} accepted with a never-pushed layer that lists urls"
            )

    async def push_referrer(self) -> None:
        """An artifact (a signature) whose ``subject`` is an image of the
        repository or, half the time, a digest never pushed: untagged, it is
        garbage once its subject is, and the collector must delete it with its
        referrers entry in one transaction (the commit checker: no referrers
        entry names a missing manifest after any revision)."""
        repo = self._repo()
        images = [d for d in self.u.images[repo] if (repo, d) in self.u.acked]
        if images and self.rng.random() < 0.5:
            subject = self.u.manifests[(repo, images[self.rng.randrange(len(images))])]
            subject_doc = {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": len(subject.body),
            }
        else:
            subject_doc = {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(self._random_bytes(8, 32)),
                "size": 100,
            }
        config = self._new_blob(b"{}")
        payload = self._new_blob(self._random_bytes(16, 256))
        confirmed: Confirmed = {}
        for digest in (config, payload):
            if (await self._upload(repo, digest, self.u.blobs[digest]))[1].outcome is not Outcome.OK:
                return
            confirmed[digest] = (self.env.loop.time(), "upload")
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature.v1",
            "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": config, "size": 2},
            "layers": [{"mediaType": LAYER_TYPE, "digest": payload, "size": len(self.u.blobs[payload])}],
            "subject": subject_doc,
        }
        body = json.dumps(doc, sort_keys=True).encode()
        m = Manifest(repo, sha256(body), body, OCI_MANIFEST, blobs=(config, payload))
        self.u.manifests[(repo, m.digest)] = m
        self.u.images[repo].append(m.digest)
        await self._put_digest(m, confirmed)
