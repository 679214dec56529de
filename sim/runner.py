"""One seeded run: build the world, run the workload under the fault schedule,
heal, check liveness, then check every invariant.

The world: 3 etcd members (``EtcdCluster``), an object store, N replicas
running hareg's ``Registry``, 20 clients (and 3 hostile ones unless
``Options.hostile`` is off), another tenant writing to the same
etcd outside the registry's prefix, and the nemesis.  Everything random comes
from ``random.Random(options.world_seed)`` (itself drawn from the seed),
split into one child generator per component in a fixed order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hareg.kv.base import KVError, Put, prefix_end
from hareg.metadata.keys import Keys
from hareg.metadata.records import TagRecord, decode
from hareg.plants import planting
from hareg.registry.access import bindings_of
from hareg.registry.gc import Policy
from sim import access_check, checkers, hostile, identities, liveness, mirror_check, readback
from sim.etcd_model import EtcdCluster, SimKV
from sim.faults import Options
from sim.history import CURRENT_OP, History
from sim.loop import SimLoop
from sim.loop import run as run_loop
from sim.mirror_workload import MIRROR_CLIENTS, MirrorClient, MirrorLog
from sim.nemesis import Nemesis
from sim.network import Network
from sim.replica import EPOCH, PREFIX, Replica
from sim.storage_model import ObjectStore
from sim.trace import Trace
from sim.upstream_model import PREFIX as MIRROR_PREFIX
from sim.upstream_model import UpstreamModel
from sim.workload import Client, Env, Manifest, Universe

LIVENESS_BOUND = 30.0  # simulated seconds after healing for everything to be readable
DRAIN_TIMEOUT = 30.0  # for client operations in flight when the workload stops
SKEW_MARGIN = 5.0  # clocks may disagree by this much when judging grace windows


@dataclass(slots=True)
class RunResult:
    options: Options
    sim_time: float = 0.0
    wall_time: float = 0.0
    trace_hash: str = ""
    trace_lines: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)  # by outcome
    ops_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    hostile: dict[str, int] = field(default_factory=dict)  # hostile behaviours carried out
    violations: list[checkers.Violation] = field(default_factory=list)
    availability: float = 1.0
    stats: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the simulator itself failed (deadlock, violation of the sandbox)

    @property
    def failed(self) -> bool:
        return bool(self.violations) or bool(self.error)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.options.seed,
            "options": self.options.to_json(),
            "sim_time": round(self.sim_time, 3),
            "wall_time": round(self.wall_time, 3),
            "trace_hash": self.trace_hash,
            "ops": self.ops,
            "ops_by_kind": self.ops_by_kind,
            "faults": self.faults,
            "hostile": self.hostile,
            "availability": round(self.availability, 4),
            "violations": [v.to_json() for v in self.violations],
            "stats": self.stats,
            "error": self.error,
        }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The registry logs every fault it meets; a run would print thousands of lines."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


async def _other_tenant(kv: SimKV, rng: random.Random) -> None:
    """Another application sharing the etcd cluster: it moves the revision without
    producing events in the registry's watch (the case progress requests exist for)."""
    n = 0
    while True:
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        n += 1
        with contextlib.suppress(KVError):
            await kv.txn([], [Put(b"/other-app/key%d" % (n % 7), b"%d" % n)])


def _durable(universe: Universe, monitor: checkers.CommitMonitor, keys: Keys) -> list[Manifest]:
    """Acknowledged manifests that were never deleted from etcd: they must be readable."""
    out = []
    for (repo, digest), _op in sorted(universe.acked.items()):
        timeline = monitor.timeline.get(keys.manifest(repo, digest), [])
        if any(value is None for _, value in timeline):
            continue  # deleted by a client or collected: no longer promised
        out.append(universe.manifests[(repo, digest)])
    return out


async def _world(options: Options, keep_trace: bool) -> RunResult:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimLoop)
    # Background work (etcd, leadership, collectors) serves no client operation,
    # whatever the caller's context held (a test that invoked operations itself).
    CURRENT_OP.set(-1)
    result = RunResult(options)
    trace = Trace(loop.time, keep=keep_trace)
    world_rng = random.Random(options.world_seed)

    def child() -> random.Random:
        return random.Random(world_rng.getrandbits(64))

    net = Network(loop, child(), trace)
    cluster = EtcdCluster(loop, net, child(), trace)
    objects = ObjectStore(loop, child(), trace, epoch=EPOCH)
    history = History(loop.time, trace)
    keys = Keys(PREFIX)
    findings = checkers.Findings()
    monitor = checkers.CommitMonitor(cluster.store, keys, loop.time, lambda: history.seq, findings)
    storage_monitor = checkers.StorageMonitor(cluster.store, keys, loop.time, findings, monitor)
    objects.on_commit.append(storage_monitor.on_blob_commit)
    objects.on_delete.append(storage_monitor.on_blob_delete)
    auth = identities.auth_config() if options.authz else None
    policy = Policy(
        keep_tag_revisions=options.keep_tag_revisions,
        keep_younger_than=options.keep_younger_than,
        grace=options.upload_grace,
    )
    replicas = [
        Replica(
            name,
            loop,
            net,
            cluster,
            objects,
            child(),
            trace,
            upload_grace=options.upload_grace,
            gc_policy=policy,
            upload_session_ttl=hostile.UPLOAD_SESSION_TTL if options.hostile else None,
            access_config=auth,
            manifest_cache_bytes=options.manifest_cache_bytes,
        )
        for name in options.replica_names
    ]
    tenant_rng, client_rngs = child(), [child() for _ in range(options.clients + options.replicas)]
    # Drawn last, and only with hostile clients: without them a seed runs as it always did.
    hostile_rngs = [child() for _ in range(hostile.HOSTILE_CLIENTS)] if options.hostile else []
    # ... and the operator's, only with identities (the same reason).
    operator_rng = child() if options.authz else None
    # ... and the pull-through mirror's upstream and clients, only with it (the same reason).
    upstream: UpstreamModel | None = None
    mirror_rngs: list[random.Random] = []
    if options.upstream:
        upstream = UpstreamModel(loop, child(), options.faults, options.duration + DRAIN_TIMEOUT)
        mirror_rngs = [child() for _ in range(MIRROR_CLIENTS)]
        monitor.sparse_prefixes = (MIRROR_PREFIX + "/",)
        for replica in replicas:
            replica.mirrors = upstream.mirrors_for(net, cluster.store, keys)
    trace.event("options", seed=options.seed, faults=len(options.faults), plants=sorted(options.plants))

    background = [loop.create_task(cluster.run(), name="etcd")]
    background.append(
        loop.create_task(_other_tenant(SimKV(cluster, net, "x", tenant_rng), tenant_rng), name="tenant")
    )
    for replica in replicas:
        await replica.start()

    universe = Universe(
        repos=tuple(f"team{i}/app" for i in range(options.repos)),
        tags=tuple(["latest", "v1", "v2", "stable", "dev"][: options.tags]),
    )
    env = Env(loop, net, replicas, history, universe, trace)
    if options.authz:
        await _log_in(env, replicas, options)
    nemesis = Nemesis(loop, net, cluster, objects, replicas, trace)
    nemesis.schedule(options.faults)

    stop = asyncio.Event()
    clients = [Client(f"c{i}", env, client_rngs[i], think=options.think) for i in range(options.clients)]
    hostile_log = hostile.HostileLog()

    def session_alive(upload_id: str) -> bool:
        return cluster.store.get(keys.upload(upload_id)) is not None

    clients += [
        hostile.HostileClient(
            f"h{i}", env, rng, think=options.think, log=hostile_log, session_alive=session_alive
        )
        for i, rng in enumerate(hostile_rngs)
    ]
    runners: list[Client | hostile.HostileClient | identities.Operator] = list(clients)
    if operator_rng is not None:
        runners.append(identities.Operator("op", env, operator_rng, think=options.think / 4))
    tasks = [loop.create_task(c.run(stop), name=c.name) for c in runners]
    mirror_log = MirrorLog()
    if upstream is not None:
        mirror_clients = [
            MirrorClient(f"m{i}", env, upstream, rng, mirror_log, think=options.think)
            for i, rng in enumerate(mirror_rngs)
        ]
        tasks += [loop.create_task(c.run(stop), name=c.name) for c in mirror_clients]
    await asyncio.sleep(options.duration)
    stop.set()
    _, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT)
    for task in pending:
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            result.error = f"client task failed: {type(exc).__name__}: {exc}"
    history.close_pending()
    workload_ops = len(history.ops)

    # Liveness: heal everything; all acknowledged data must become readable everywhere.
    await nemesis.heal()
    final_clients = [
        Client(f"f{i}", env, client_rngs[options.clients + i], think=options.think)
        for i in range(options.replicas)
    ]
    report = await liveness.verify(
        env, final_clients, _durable(universe, monitor, keys), bound=LIVENESS_BOUND
    )
    for message in report.missing:
        findings.add("1", loop.time(), message)
    for message in report.late:
        findings.add("liveness", loop.time(), message)
    history.close_pending()
    # Every stored object read back through every replica and re-hashed (3).
    stores = [(r.name, r.registry.store) for r in replicas if r.registry is not None]
    read_back = await readback.read_back(stores, findings, loop.time)
    readback.check_sizes(cluster.store, keys, objects.blobs, findings, loop.time())

    for anomaly in env.anomalies:
        findings.add(anomaly.invariant, anomaly.time, f"op {anomaly.op}: {anomaly.message}")
    for message in env.unexpected[:5]:
        findings.add("internal", loop.time(), f"unexpected exception in the registry (HTTP 500): {message}")
    checkers.check_history(
        history,
        monitor,
        keys,
        findings,
        effects=cluster.effects,
        write_revisions=cluster.write_revisions,
        commit_ops=cluster.commit_ops,
        grace=options.upload_grace - SKEW_MARGIN,
        head_grace=options.upload_grace / 2 - SKEW_MARGIN,  # docs/gc.md, G2b
        keep_younger=options.keep_younger_than - SKEW_MARGIN,
    )
    access_judged = 0
    if auth is not None:
        access_check.check_access_changes(history, monitor, keys, findings)
        access_judged = access_check.check_access(history, monitor, keys, bindings_of(auth), findings)
    _check_final_state(cluster, objects, keys, findings, monitor, loop.time())
    mirror_stats: dict[str, Any] = {}
    if upstream is not None:
        mirror_stats = mirror_check.check(
            upstream, mirror_log, cluster.store, objects, keys, findings, loop.time()
        )

    for task in background:
        task.cancel()
    for replica in replicas:
        replica.crash()  # stop every task; the run is over

    if loop.errors and not result.error:
        result.error = f"simulator error: {loop.errors[0]}"
    result.sim_time = loop.time()
    result.trace_hash = trace.digest()
    result.trace_lines = trace.lines
    result.violations = findings.violations
    result.ops = history.counts()
    by_kind: dict[str, dict[str, int]] = {}
    for op in history.ops:
        if op.outcome is not None:
            by_kind.setdefault(op.kind, {}).setdefault(op.outcome.value, 0)
            by_kind[op.kind][op.outcome.value] += 1
    result.ops_by_kind = by_kind
    result.faults = dict(sorted(nemesis.applied.items()))
    result.hostile = dict(sorted(hostile_log.counts.items()))
    during = history.ops[:workload_ops]
    answered = [
        op
        for op in during
        if op.outcome is not None
        and op.kind != "bad_upload"
        and "hostile" not in op.detail
        and "refused" not in op.detail  # refused for want of a role: as it should be
    ]
    result.availability = sum(op.ok for op in answered) / len(answered) if answered else 1.0
    result.stats = {
        "etcd": dict(cluster.stats),
        "revision": cluster.store.revision,
        "storage": dict(objects.stats),
        "blobs_stored": len(objects.blobs),
        "blobs_deleted": len(objects.deletions),
        "messages": net.sent,
        "messages_dropped": net.dropped,
        "requests": env.requests,
        "loop_steps": loop.steps,
        "final_checks": report.checked,
        # Invariant 8: operations judged, and requests refused for want of a role.
        "access": {"judged": access_judged, "refused": sum("refused" in op.detail for op in history.ops)},
        "read_back": read_back,
        "settle_time": round(report.settle_time, 3),
        "linearizability": {
            "tags": findings.lin_checked,
            "inconclusive": findings.lin_inconclusive,
            "steps": findings.lin_steps,
        },
        "replicas": {r.name: r.stats() for r in replicas},
    }
    if mirror_stats:
        result.stats["mirror"] = mirror_stats
    return result


async def _log_in(env: Env, replicas: list[Replica], options: Options) -> None:
    """Make the robot accounts (as an operator would before the clients start)
    and give each client its identity: c0.. the ones of ``identities.IDENTITIES``,
    the rest, the hostile and the final clients ``robot+ci``."""
    access = replicas[0].access
    assert access is not None
    headers = await identities.make_robots(access)
    names = [f"c{i}" for i in range(options.clients)]
    names += [f"h{i}" for i in range(hostile.HOSTILE_CLIENTS)] + [f"f{i}" for i in range(options.replicas)]
    for i, name in enumerate(names):
        subject = identities.IDENTITIES[i] if i < len(identities.IDENTITIES) else identities.CI
        env.subjects[name] = subject
        if subject in headers:
            env.credentials[name] = headers[subject]
    for name, subject in identities.PROBES.items():
        env.subjects[name] = subject
        if subject in headers:
            env.credentials[name] = headers[subject]
    env.subjects["op"] = identities.OPERATOR
    env.credentials["op"] = headers[identities.OPERATOR]


def _check_final_state(
    cluster: EtcdCluster,
    objects: ObjectStore,
    keys: Keys,
    findings: checkers.Findings,
    monitor: checkers.CommitMonitor,
    now: float,
) -> None:
    """At the end: every stored blob hashes to its digest (3); every tag names a
    manifest (2, also checked at each commit)."""
    storage = checkers.StorageMonitor(cluster.store, keys, lambda: now, findings, monitor)
    for digest, data in sorted(objects.blobs.items()):
        storage.on_blob_commit(digest, data)
    for kv in cluster.store.live_items(*_kind_range(keys, "t")):
        digest = decode(TagRecord, kv.value).digest
        repo = keys.strip("t", kv.key).rsplit("@", 1)[0]
        if cluster.store.get(keys.manifest(repo, digest)) is None:
            findings.add("2", now, f"at the end, tag {keys.strip('t', kv.key)} names missing {digest[7:19]}")


def _kind_range(keys: Keys, kind: str) -> tuple[bytes, bytes]:
    start = keys.kind_prefix(kind)
    return start, prefix_end(start)


def run(options: Options, *, keep_trace: bool = False) -> RunResult:
    """Run one seed to completion (deterministic: same options, same trace hash)."""
    started = time.perf_counter()
    with _quiet():
        try:
            # The run's planted bugs: its event loop's first task copies them from
            # this context, and every task of the run inherits them from that one.
            with planting(options.plants):
                result, _loop = run_loop(_world(options, keep_trace))
        except Exception as exc:  # the simulator itself broke: report it as a failure of the seed
            result = RunResult(options, error=f"{type(exc).__name__}: {exc}")
    gc.collect()
    result.wall_time = time.perf_counter() - started
    return result
