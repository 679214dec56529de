"""Simulated replica processes running hareg's own ``Registry``.

A replica is a name on the network plus, while it is up, one *incarnation*:
a ``Registry`` built from a fresh ``SimKV`` and ``SimBlobStore`` client,
started exactly as the server starts it.  Every task it runs is owned by the
incarnation, so:

* ``crash()`` cancels them all and drops the Registry (all memory: caches,
  hashers, leases it held); ``start()`` builds a new one on the same etcd
  and storage;
* ``pause()`` stops the process: it sends and receives nothing and its
  sleeps do not end until ``resume()`` (past its membership lease, the
  lease expires and etcd deletes its record);
* its clock can be skewed (offset) and drift (rate), as a real host's can.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from hareg.clock import Clock
from hareg.config.model import DEFAULT_MANIFEST_CACHE_BYTES, AuthConfig
from hareg.ids import SeededIds
from hareg.registry.access import AccessControl
from hareg.registry.gc import Policy
from hareg.registry.htpasswd import Users
from hareg.registry.login_limits import LoginLimiter
from hareg.registry.pull_through import Mirror
from hareg.registry.service import NO_CAPS, Registry
from sim.etcd_model import EtcdCluster, SimKV
from sim.loop import SimLoop
from sim.network import Network
from sim.storage_model import ObjectStore, SimBlobStore
from sim.trace import Trace

T = TypeVar("T")

EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the simulated wall clock's origin
HTTP_SECRET = "simulated-http-secret-0123456789"
PREFIX = "/hareg"

# Deletions per garbage-collection transaction: far below the registry's own
# (64), so that collections in short runs span several transactions and the
# checkers see every state between two of them.
GC_BATCH = 5


class ReplicaClock:
    """One host's clock: virtual time seen through an offset and a rate."""

    def __init__(self, loop: SimLoop, net: Network, node: str) -> None:
        self.loop = loop
        self.net = net
        self.node = node
        self.offset = 0.0
        self.drift = 0.0
        self._base_real = 0.0  # virtual time of the last rate change
        self._base_mono = 1000.0  # monotonic reading at that time

    def set_skew(self, offset: float, drift: float) -> None:
        now = self.loop.time()
        self._base_mono = self.monotonic()
        self._base_real = now
        self.offset = offset
        self.drift = drift

    def now(self) -> float:
        return EPOCH + self.offset + self.loop.time() * (1.0 + self.drift)

    def monotonic(self) -> float:
        return self._base_mono + (self.loop.time() - self._base_real) * (1.0 + self.drift)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / (1.0 + self.drift))
        if self.net.is_paused(self.node):
            await self.net.wait_running(self.node)


class ReplicaDown(Exception):
    """The replica process is not running (connection refused)."""


DONE, FAILED, CRASHED = "done", "failed", "crashed"


@dataclass(frozen=True, slots=True)
class Reply:
    """How a request ended on the replica: DONE (value), FAILED (exception), CRASHED."""

    status: str
    value: Any


class Replica:
    def __init__(
        self,
        name: str,
        loop: SimLoop,
        net: Network,
        cluster: EtcdCluster,
        objects: ObjectStore,
        rng: random.Random,
        trace: Trace,
        *,
        upload_grace: float = 30.0,
        gc_policy: Policy | None = None,
        upload_session_ttl: int | None = None,
        access_config: AuthConfig | None = None,
        manifest_cache_bytes: int = DEFAULT_MANIFEST_CACHE_BYTES,
    ) -> None:
        self.name = name
        self.loop = loop
        self.net = net
        self.cluster = cluster
        self.objects = objects
        self.rng = rng
        self.trace = trace
        self.upload_grace = upload_grace
        self.gc_policy = gc_policy
        self.upload_session_ttl = upload_session_ttl
        # The configuration's auth section (None: none, every request served).
        self.access_config = access_config
        self.manifest_cache_bytes = manifest_cache_bytes
        self.access: AccessControl | None = None  # this incarnation's
        # The pullThrough configuration: each incarnation's mirrors (each with its
        # own upstream client), set by the runner before the first start; None: none.
        self.mirrors: Callable[[str], Sequence[Mirror]] | None = None
        self.clock = ReplicaClock(loop, net, name)
        self.incarnation = 0
        self.registry: Registry | None = None
        self._kv: SimKV | None = None
        self._store: SimBlobStore | None = None
        self.crashes = 0
        self._requests = 0
        self._inflight: dict[int, Callable[[Reply], None]] = {}  # request -> how to answer it

    @property
    def owner(self) -> str:
        return f"{self.name}#{self.incarnation}"

    @property
    def up(self) -> bool:
        return self.registry is not None

    @property
    def paused(self) -> bool:
        return self.net.is_paused(self.name)

    async def start(self) -> None:
        """Start a new incarnation (a fresh process: nothing survives from the last)."""
        if self.registry is not None:
            return
        self.incarnation += 1
        kv = SimKV(self.cluster, self.net, self.name, random.Random(self.rng.getrandbits(64)))
        store = SimBlobStore(self.objects, self.net, self.name)
        ids = SeededIds(random.Random(self.rng.getrandbits(64)))
        clock: Clock = self.clock
        registry = Registry(
            kv,
            store,
            clock,
            ids,
            prefix=PREFIX,
            replica=self.name,
            cache=True,
            http_secret=HTTP_SECRET,
            url=f"http://{self.name}:5000",
            upload_grace=self.upload_grace,
            gc_policy=self.gc_policy,
            gc_batch=GC_BATCH,
            mirrors=self.mirrors(self.name) if self.mirrors is not None else (),
            limits=replace(NO_CAPS, manifest_cache_bytes=self.manifest_cache_bytes),
        )
        if self.upload_session_ttl is not None:
            # Upload sessions that expire within a run (the server keeps them a day),
            # so hostile clients can replay an expired upload's URL: an idle session
            # lives between ttl and 1.5 x ttl (one lease per window of ttl / 2).
            registry.meta.upload_ttl = self.upload_session_ttl
            registry.meta.upload_lease_window = max(1, self.upload_session_ttl // 2)
        if self.access_config is not None:
            self.access = _access_control(
                self.access_config, registry, clock, ids, random.Random(self.rng.getrandbits(64))
            )
        self._kv, self._store, self.registry = kv, store, registry
        self.trace.event("replica.start", r=self.name, inc=self.incarnation)
        # Started as the server starts it (its background tasks: cache, settings,
        # membership, janitor, pruner leadership), all owned by this incarnation.
        await self.loop.create_owned_task(self.owner, registry.start(), name=f"{self.owner}-start")

    def crash(self) -> None:
        """kill -9: every task of the process ends, its connections drop, memory is gone."""
        if self.registry is None:
            return
        self.crashes += 1
        self.trace.event("replica.crash", r=self.name, inc=self.incarnation)
        if self._kv is not None:
            self._kv.kill()
        if self._store is not None:
            self._store.kill()
        self.loop.cancel_owned(self.owner)
        for number in list(self._inflight):
            self._answer(number, Reply(CRASHED, None))  # the connection resets
        self.registry = self._kv = self._store = None
        self.access = None
        self.net.resume(self.name)  # a dead process is not paused

    def pause(self) -> None:
        self.trace.event("replica.pause", r=self.name)
        self.net.pause(self.name)

    def resume(self) -> None:
        if self.paused:
            self.trace.event("replica.resume", r=self.name)
        self.net.resume(self.name)

    def serve(self, handler: Callable[[Registry], Awaitable[T]], respond: Callable[[Reply], None]) -> None:
        """Run one request's handler as this process; ``respond`` gets its result,
        its exception, or ``CRASHED`` if the process dies first.  Raises
        ReplicaDown (connection refused) if the process is not running."""
        registry = self.registry
        if registry is None:
            raise ReplicaDown(self.name)
        self._requests += 1
        number = self._requests
        self._inflight[number] = respond

        async def handle() -> None:
            if self.net.is_paused(self.name):
                await self.net.wait_running(self.name)
            try:
                result = await handler(registry)
            except Exception as exc:  # an error response (the HTTP layer maps it)
                self._answer(number, Reply(FAILED, exc))
                return
            self._answer(number, Reply(DONE, result))

        self.loop.create_owned_task(self.owner, handle())

    def _answer(self, number: int, reply: Reply) -> None:
        respond = self._inflight.pop(number, None)
        if respond is not None:
            respond(reply)

    def stats(self) -> dict[str, Any]:
        reg = self.registry
        out: dict[str, Any] = {"incarnation": self.incarnation, "crashes": self.crashes}
        if reg is not None and reg.cache is not None:
            out["relists"] = reg.cache.relists
            out["cache_revision"] = reg.cache.revision
        if reg is not None and reg.barrier is not None:
            out["revision_reads"] = reg.barrier.revision_reads
        return out


async def _no_signing_key() -> bytes:
    raise RuntimeError("the simulator issues no bearer tokens")


def _access_control(
    config: AuthConfig, registry: Registry, clock: Clock, ids: SeededIds, rng: random.Random
) -> AccessControl:
    """What ``hareg serve`` builds (``hareg/server/auth.py`` ``build_access``),
    without htpasswd users (the clients log in as robot accounts, whose
    secrets cost no bcrypt) and without tokens; robot secrets from the
    incarnation's seeded randomness."""
    return AccessControl(
        config,
        Users(None, None),
        LoginLimiter(clock),
        clock,
        ids,
        key_source=_no_signing_key,
        store=registry.meta,
        random_bytes=rng.randbytes,
    )


if TYPE_CHECKING:

    def _conforms(clock: ReplicaClock) -> Clock:
        return clock
