"""``hareg cluster status``: the cluster's conditions, as the OpenShift Image
Registry Operator reports its own (``oc get co image-registry``).

Three conditions, each ``True`` or ``False`` with a CamelCase reason and a
message:

- **Available**: the registry URL serves.  ``AllReplicasReady``,
  ``MinimumAvailability`` (some replicas ready), ``NoReplicasAvailable``,
  ``LoadBalancerDown``, ``SupervisorDown``; ``Removed`` (True, as OpenShift
  says of a registry that was removed on purpose).
- **Progressing**: the supervisor is changing something.  ``RollingOut``
  (replicas starting), ``ScalingDown``, ``Removing``, ``ClusterStarting``;
  False with ``AllReplicasReady``, ``Removed``, ``Unmanaged`` or
  ``SupervisorDown``.
- **Degraded**: something is broken.  ``SupervisorDown``,
  ``LoadBalancerDown``, ``EtcdQuorumLost``, ``EtcdMemberDown``,
  ``MetadataStoreFull`` (a replica reports etcd's NOSPACE alarm: pulls
  served, pushes refused), ``StorageUnavailable``, ``ReplicaDown``; False
  with ``AsExpected``.

It is computed from ``DIR/cluster.json`` and ``DIR/supervisor.json`` and from
probing every process (is the pid alive), every replica's ``/readyz``, every
etcd member's ``/health?exclude=NOSPACE`` (a member at its space quota still
serves: the replicas report the alarm), the object store and the registry
URL itself.
``observe()`` does the probing, ``cluster_conditions()`` is a pure function
of what it saw (the condition model: hareg/registry/conditions.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hareg.cluster.spec import ClusterError, ClusterPaths
from hareg.processes.child import pid_alive
from hareg.registry.conditions import Condition

__all__ = [
    "ClusterObservation",
    "ComponentState",
    "cluster_conditions",
    "format_status",
    "observe",
    "status_document",
]

_PROBE_TIMEOUT = 2.0


@dataclass
class ComponentState:
    name: str
    pid: int | None
    alive: bool
    ready: bool  # replica: /readyz 200; etcd: /health true; storage: answers; lb: registry /readyz 200
    url: str | None = None
    detail: str = ""
    reason: str = ""  # replica: why /readyz says it is degraded (MetadataStoreFull, EtcdUnavailable)


@dataclass
class ClusterObservation:
    registry: str | None
    management_state: str
    desired_replicas: int
    supervisor_pid: int | None
    supervisor_alive: bool
    phase: str  # Starting, Running, Stopping
    replicas: list[ComponentState] = field(default_factory=list)
    etcd: list[ComponentState] = field(default_factory=list)
    storage: ComponentState | None = None
    lb: ComponentState | None = None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{path} does not hold a JSON object")
    return data


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int | None, bytes]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT)) as resp:
            return resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return None, str(exc).encode() or type(exc).__name__.encode()


async def _replica(session: aiohttp.ClientSession, item: dict[str, Any]) -> ComponentState:
    pid, url = item.get("pid"), str(item.get("url"))
    state = ComponentState(str(item.get("name")), pid, pid_alive(pid), False, url)
    if not state.alive:
        state.detail = "not running"
        return state
    status, body = await _get(session, f"{url}/readyz")
    state.ready = status == 200
    try:
        answer = json.loads(body) if status is not None else {}
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    checks = answer.get("checks")
    listed = (
        " (" + ", ".join(f"{k}: {v}" for k, v in checks.items()) + ")" if isinstance(checks, dict) else ""
    )
    if not state.ready:
        state.detail = (f"/readyz answered {status}" if status is not None else "/readyz: no answer") + listed
    elif answer.get("degraded") is True:
        state.reason = str(answer.get("reason") or "")
        state.detail = f"degraded: {state.reason}{listed}"
    return state


async def _etcd(session: aiohttp.ClientSession, item: dict[str, Any]) -> ComponentState:
    pid, url = item.get("pid"), str(item.get("client_url"))
    state = ComponentState(str(item.get("name")), pid, pid_alive(pid), False, url)
    if not state.alive:
        state.detail = "not running"
        return state
    # A member with a NOSPACE alarm answers /health false, yet serves reads
    # and deletes: the replicas report the alarm (MetadataStoreFull).
    status, body = await _get(session, f"{url}/health?exclude=NOSPACE")
    try:
        state.ready = status is not None and json.loads(body).get("health") == "true"
    except (ValueError, AttributeError):
        state.ready = False
    if not state.ready:
        state.detail = f"/health: {body.decode(errors='replace').strip()[:200] or status}"
    return state


async def _storage(session: aiohttp.ClientSession, item: dict[str, Any]) -> ComponentState:
    pid, url = item.get("pid"), str(item.get("url"))
    if url.startswith("file:"):
        path = Path(urlsplit(url).path)
        ok = _writable_dir(path)
        return ComponentState(
            "storage", None, ok, ok, url, "" if ok else f"{path} is not a writable directory"
        )
    state = ComponentState("storage", pid, pid_alive(pid), False, url)
    if not state.alive:
        state.detail = "not running"
        return state
    status, body = await _get(session, url)
    state.ready = status is not None and status < 500  # any S3 answer (403 without credentials) is an answer
    if not state.ready:
        state.detail = f"S3 gateway: {status or body.decode(errors='replace')[:200]}"
    return state


async def _lb(session: aiohttp.ClientSession, item: dict[str, Any], registry: str | None) -> ComponentState:
    pid = item.get("pid")
    state = ComponentState("haproxy", pid, pid_alive(pid), False, registry)
    if not state.alive:
        state.detail = "not running"
        return state
    if registry:
        status, _ = await _get(session, f"{registry}/readyz")
        state.ready = status == 200
        if not state.ready:
            state.detail = f"{registry}/readyz answered {status}" if status else f"{registry}: no answer"
    return state


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def _read_files(
    root: str | os.PathLike[str],
) -> tuple[ClusterPaths, dict[str, Any] | None, dict[str, Any] | None]:
    paths = ClusterPaths(Path(root).resolve())
    return paths, _read_json(paths.cluster_json), _read_json(paths.supervisor_json)


async def observe(root: str | os.PathLike[str]) -> ClusterObservation:
    """Probe the cluster in ``root``.  ClusterError when no cluster was ever
    started there (or its files cannot be read)."""
    paths, cluster, sup = _read_files(root)
    if cluster is None and sup is None:
        raise ClusterError(
            f"no cluster is running in {paths.root} (no {paths.cluster_json.name}); "
            f"start one with `hareg cluster up --dir {paths.root}`"
        )
    sup = sup or {}
    sup_pid = sup.get("pid") if isinstance(sup.get("pid"), int) else None
    obs = ClusterObservation(
        registry=(cluster or {}).get("registry") or sup.get("registry"),
        management_state=str(sup.get("managementState", "Managed")),
        desired_replicas=int(sup.get("replicas", len((cluster or {}).get("replicas", [])))),
        supervisor_pid=sup_pid,
        supervisor_alive=pid_alive(sup_pid),
        phase=str(sup.get("phase", "Running")),
    )
    if cluster is None:
        return obs
    async with aiohttp.ClientSession() as session:
        replicas = asyncio.gather(*(_replica(session, r) for r in cluster.get("replicas", [])))
        etcd = asyncio.gather(*(_etcd(session, m) for m in cluster.get("etcd", [])))
        storage = _storage(session, cluster.get("storage", {}))
        lb = _lb(session, cluster.get("lb", {}), obs.registry)
        obs.replicas, obs.etcd, obs.storage, obs.lb = await asyncio.gather(replicas, etcd, storage, lb)
    return obs


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cluster_conditions(obs: ClusterObservation) -> list[Condition]:
    """Available, Progressing and Degraded from what ``observe`` saw."""
    state = obs.management_state
    desired = obs.desired_replicas
    ready = [r for r in obs.replicas if r.ready]
    alive = [r for r in obs.replicas if r.alive]
    lb_up = obs.lb is not None and obs.lb.alive
    starting = obs.supervisor_alive and obs.lb is None  # no cluster.json yet

    # Degraded: every problem, the most severe one's reason first.
    problems: list[tuple[str, str]] = []
    if not obs.supervisor_alive:
        problems.append(("SupervisorDown", f"the supervisor (pid {obs.supervisor_pid}) is not running"))
    if obs.lb is not None and not lb_up:
        problems.append(("LoadBalancerDown", f"haproxy is not running; {obs.registry} answers nothing"))
    if obs.etcd:
        healthy = [m for m in obs.etcd if m.ready]
        down = [m for m in obs.etcd if not m.ready]
        if len(healthy) <= len(obs.etcd) // 2:
            problems.append(
                (
                    "EtcdQuorumLost",
                    f"{len(healthy)}/{len(obs.etcd)} etcd members healthy (a majority is needed): "
                    + ", ".join(f"{m.name} {m.detail}" for m in down),
                )
            )
        elif down:
            problems.append(
                ("EtcdMemberDown", "etcd member " + ", ".join(f"{m.name} {m.detail}" for m in down))
            )
    full = [r for r in obs.replicas if r.ready and r.reason == "MetadataStoreFull"]
    if full:
        problems.append(
            (
                "MetadataStoreFull",
                "etcd's database is at its space quota (NOSPACE alarm), as "
                + ", ".join(r.name for r in full)
                + " report: pulls are served, pushes refused with 507 until space is freed "
                "(docs/operations.md, etcd space)",
            )
        )
    if obs.storage is not None and not obs.storage.ready:
        problems.append(
            ("StorageUnavailable", f"the object store at {obs.storage.url}: {obs.storage.detail}")
        )
    if state != "Removed" and not starting:
        bad = [r for r in obs.replicas if not r.ready and int(r.name.rsplit("-", 1)[-1]) <= desired]
        if bad:
            problems.append(("ReplicaDown", "replica " + ", ".join(f"{r.name} {r.detail}" for r in bad)))
    if problems:
        degraded = Condition("Degraded", "True", problems[0][0], "; ".join(msg for _, msg in problems))
    elif state == "Removed":
        degraded = Condition("Degraded", "False", "Removed", "The registry is removed")
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "All components are running")

    # Available: does the registry URL serve?
    if state == "Removed":
        available = Condition(
            "Available", "True", "Removed", "The registry is removed (managementState: Removed)"
        )
    elif starting:
        available = Condition("Available", "False", "ClusterStarting", "The cluster is starting")
    elif not obs.supervisor_alive and not lb_up:
        available = Condition("Available", "False", "SupervisorDown", "The cluster is not running")
    elif not lb_up:
        available = Condition(
            "Available", "False", "LoadBalancerDown", f"haproxy is down: {obs.registry} does not serve"
        )
    elif not ready:
        available = Condition(
            "Available", "False", "NoReplicasAvailable", f"No replica is ready; {obs.registry} does not serve"
        )
    elif len(ready) >= desired:
        available = Condition(
            "Available",
            "True",
            "AllReplicasReady",
            f"{len(ready)}/{desired} replicas ready behind {obs.registry}",
        )
    else:
        available = Condition(
            "Available",
            "True",
            "MinimumAvailability",
            f"{len(ready)}/{desired} replicas ready behind {obs.registry}",
        )

    # Progressing: is the supervisor changing anything?
    if not obs.supervisor_alive:
        progressing = Condition("Progressing", "False", "SupervisorDown", "Nothing supervises the cluster")
    elif starting:
        progressing = Condition(
            "Progressing", "True", "ClusterStarting", "Starting etcd, storage, replicas, haproxy"
        )
    elif state == "Unmanaged":
        progressing = Condition(
            "Progressing",
            "False",
            "Unmanaged",
            "managementState is Unmanaged: the supervisor leaves processes alone",
        )
    elif state == "Removed":
        if alive:
            progressing = Condition(
                "Progressing", "True", "Removing", f"Stopping {_plural(len(alive), 'replica')}"
            )
        else:
            progressing = Condition("Progressing", "False", "Removed", "All registry replicas are removed")
    elif len(obs.replicas) > desired:
        progressing = Condition(
            "Progressing",
            "True",
            "ScalingDown",
            f"Scaling down from {len(obs.replicas)} to {desired} replicas",
        )
    elif len(ready) < desired:
        progressing = Condition(
            "Progressing",
            "True",
            "RollingOut",
            f"{len(ready)}/{desired} replicas ready; the supervisor is bringing the others up",
        )
    else:
        progressing = Condition(
            "Progressing", "False", "AllReplicasReady", f"{len(ready)}/{desired} replicas ready"
        )
    return [available, progressing, degraded]


def status_document(root: str | os.PathLike[str], obs: ClusterObservation) -> dict[str, Any]:
    """The ``--json`` output."""
    return {
        "dir": str(Path(root).resolve()),
        "registry": obs.registry,
        "managementState": obs.management_state,
        "replicas": {"desired": obs.desired_replicas, "ready": sum(r.ready for r in obs.replicas)},
        "conditions": [c.document() for c in cluster_conditions(obs)],
        "supervisor": {"pid": obs.supervisor_pid, "alive": obs.supervisor_alive, "phase": obs.phase},
        "components": {
            "replicas": [asdict(r) for r in obs.replicas],
            "etcd": [asdict(m) for m in obs.etcd],
            "storage": asdict(obs.storage) if obs.storage is not None else None,
            "lb": asdict(obs.lb) if obs.lb is not None else None,
        },
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]


def format_status(root: str | os.PathLike[str], obs: ClusterObservation) -> str:
    """The human output: a header, the conditions table, the components table."""
    doc = status_document(root, obs)
    lines = [
        f"Cluster:    {doc['dir']}",
        f"Registry:   {obs.registry}",
        f"State:      managementState {obs.management_state}, "
        f"{doc['replicas']['ready']}/{obs.desired_replicas} replicas ready",
        "",
    ]
    lines += _table(
        [["CONDITION", "STATUS", "REASON", "MESSAGE"]]
        + [[c["type"], c["status"], c["reason"], c["message"]] for c in doc["conditions"]]
    )
    rows = [["COMPONENT", "PID", "STATE", "URL"]]

    def row(kind: str, c: ComponentState, good: str) -> list[str]:
        state = good if c.ready else ("running" if c.alive else "down")
        if c.detail and not c.ready:
            state += f" ({c.detail})"
        return [kind, str(c.pid or "-"), state, c.url or ""]

    rows.append(
        [
            "supervisor",
            str(obs.supervisor_pid or "-"),
            obs.phase.lower() if obs.supervisor_alive else "down",
            "",
        ]
    )
    if obs.lb is not None:
        rows.append(row("haproxy", obs.lb, "serving"))
    rows += [row(r.name, r, "ready") for r in obs.replicas]
    if obs.storage is not None:
        rows.append(row("storage", obs.storage, "ready"))
    rows += [row(f"etcd {m.name}", m, "healthy") for m in obs.etcd]
    lines += ["", *_table([[r[0], r[1], r[3], r[2]] for r in rows])]
    return "\n".join(lines)
