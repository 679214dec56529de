"""Faults injected into a running local cluster (``hareg cluster up``), on a
schedule, by pid: only processes of the cluster this benchmark started.

==========================  ===============================================  ==========================
fault                       inject                                           heal
==========================  ===============================================  ==========================
``replica_kill``            SIGKILL one replica                              the supervisor restarts it
``etcd_leader_kill``        SIGKILL the etcd leader                          SIGHUP to the supervisor
``etcd_leader_pause``       SIGSTOP the etcd leader past the lease TTL       SIGCONT
``storage_pause``           SIGSTOP the object store (SeaweedFS)             SIGCONT
``etcd_quorum_loss``        SIGKILL two of three etcd members                SIGHUP to the supervisor
==========================  ===============================================  ==========================

The supervisor never restarts etcd or SeaweedFS by itself (so chaos tests can
keep them down); a SIGHUP makes it start whatever member is down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Membership leases in hareg are 10 s; a pause "past the lease TTL" lasts longer.
LEASE_TTL_S = 10.0


class Cluster:
    """A started cluster, read from its ``cluster.json`` (re-read on every call)."""

    def __init__(self, cluster_json: Path, supervisor_pid: int, registry_url: str) -> None:
        self.cluster_json = cluster_json
        self.supervisor_pid = supervisor_pid
        self.registry_url = registry_url

    def doc(self) -> dict[str, Any]:
        for _ in range(50):  # rewritten atomically, but it may be missing for a moment
            with contextlib.suppress(OSError, ValueError):
                data: dict[str, Any] = json.loads(self.cluster_json.read_text())
                return data
            time.sleep(0.02)
        raise RuntimeError(f"cannot read {self.cluster_json}")

    def replicas(self) -> list[dict[str, Any]]:
        return list(self.doc().get("replicas", []))

    def etcd(self) -> list[dict[str, Any]]:
        return list(self.doc().get("etcd", []))

    def storage_pid(self) -> int | None:
        pid = self.doc().get("storage", {}).get("pid")
        return pid if isinstance(pid, int) else None

    def etcd_status(self, member: dict[str, Any], timeout: float = 1.0) -> tuple[str, str] | None:
        """(member_id, leader_id) from the member's maintenance status, or None."""
        req = urllib.request.Request(
            f"{member['client_url']}/v3/maintenance/status",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = json.loads(resp.read())
            return str(data["header"]["member_id"]), str(data["leader"])
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
            return None

    def etcd_leader(self) -> dict[str, Any] | None:
        for member in self.etcd():
            if member.get("pid") is None:
                continue
            answer = self.etcd_status(member)
            if answer is not None and answer[0] == answer[1]:
                return member
        return None

    def etcd_healthy(self, member: dict[str, Any]) -> bool:
        try:
            with urllib.request.urlopen(f"{member['client_url']}/health", timeout=1.0) as resp:
                health: object = json.loads(resp.read()).get("health")
                return health in ("true", True)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def replica_ready(self, replica: dict[str, Any]) -> bool:
        try:
            with urllib.request.urlopen(f"{replica['url']}/readyz", timeout=1.0) as resp:
                status: int = resp.status
        except (urllib.error.URLError, OSError):
            return False
        return status == 200

    def signal(self, pid: int | None, sig: signal.Signals) -> bool:
        """Send ``sig`` to a pid that cluster.json names (never by name)."""
        if pid is None:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def sighup_supervisor(self) -> None:
        self.signal(self.supervisor_pid, signal.SIGHUP)

    def resume_everything(self) -> None:
        """SIGCONT every etcd member and the object store (safe if none is stopped)."""
        for member in self.etcd():
            self.signal(member.get("pid"), signal.SIGCONT)
        self.signal(self.storage_pid(), signal.SIGCONT)

    def healthy(self) -> bool:
        doc = self.doc()
        etcd = doc.get("etcd", [])
        replicas = doc.get("replicas", [])
        if any(m.get("pid") is None for m in etcd) or any(r.get("pid") is None for r in replicas):
            return False
        if doc.get("storage", {}).get("url", "").startswith("http") and self.storage_pid() is None:
            return False
        return all(self.etcd_healthy(m) for m in etcd) and all(self.replica_ready(r) for r in replicas)

    def wait_healthy(self, timeout: float) -> float:
        """Poll (bounded) until every member and replica is up and ready; the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        hup_at = start
        while time.monotonic() < deadline:
            if self.healthy():
                return time.monotonic() - start
            if time.monotonic() - hup_at > 10:  # a member that failed to start gets another go
                self.sighup_supervisor()
                hup_at = time.monotonic()
            time.sleep(0.2)
        raise RuntimeError(f"the cluster was not healthy again within {timeout:.0f}s: {self.doc()}")


@dataclass
class Fault:
    """One scheduled fault: injected at ``at`` seconds, healed ``hold`` seconds later."""

    name: str
    at: float
    hold: float
    injected_at: float | None = None
    healed_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "scheduled_at": round(self.at, 2),
            "hold_s": round(self.hold, 2),
            "injected_at": None if self.injected_at is None else round(self.injected_at, 3),
            "healed_at": None if self.healed_at is None else round(self.healed_at, 3),
            "details": self.details,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        return out


FAULT_ORDER = ("replica_kill", "etcd_leader_kill", "etcd_leader_pause", "storage_pause", "etcd_quorum_loss")


def schedule(duration: float) -> list[Fault]:
    """The five faults spread over ``duration`` seconds: a warm-up, then each
    fault with its hold and an equal recovery gap, then a quiet tail."""
    holds = {
        "replica_kill": 0.0,
        "etcd_leader_kill": max(3.0, 0.05 * duration),
        "etcd_leader_pause": LEASE_TTL_S + 2.0,
        "storage_pause": max(3.0, 0.05 * duration),
        "etcd_quorum_loss": max(4.0, 0.06 * duration),
    }
    warmup = max(4.0, 0.07 * duration)
    tail = max(3.0, 0.05 * duration)
    gap = max((duration - warmup - tail - sum(holds.values())) / len(FAULT_ORDER), 3.0)
    faults = []
    t = warmup
    for name in FAULT_ORDER:
        faults.append(Fault(name=name, at=t, hold=holds[name]))
        t += holds[name] + gap
    return faults


def minimum_duration() -> float:
    faults = schedule(0.0)
    return faults[-1].at + faults[-1].hold + 3.0 + 3.0


def inject(cluster: Cluster, fault: Fault) -> None:
    if fault.name == "replica_kill":
        replicas = [r for r in cluster.replicas() if r.get("pid")]
        victim = replicas[0]
        cluster.signal(victim["pid"], signal.SIGKILL)
        fault.details = {"replica": victim["name"], "pid": victim["pid"]}
    elif fault.name in ("etcd_leader_kill", "etcd_leader_pause"):
        leader = cluster.etcd_leader()
        if leader is None:
            fault.skipped = "no etcd leader could be found"
            return
        sig = signal.SIGKILL if fault.name == "etcd_leader_kill" else signal.SIGSTOP
        cluster.signal(leader["pid"], sig)
        fault.details = {"member": leader["name"], "pid": leader["pid"], "signal": sig.name}
    elif fault.name == "storage_pause":
        pid = cluster.storage_pid()
        if pid is None:
            fault.skipped = "no object store process (filesystem storage)"
            return
        cluster.signal(pid, signal.SIGSTOP)
        fault.details = {"pid": pid}
    elif fault.name == "etcd_quorum_loss":
        leader = cluster.etcd_leader()
        members = [m for m in cluster.etcd() if m.get("pid")]
        # The two followers: the leader that stays loses its quorum.
        victims = [m for m in members if leader is None or m["name"] != leader["name"]][:2]
        for m in victims:
            cluster.signal(m["pid"], signal.SIGKILL)
        fault.details = {"members": [m["name"] for m in victims], "pids": [m["pid"] for m in victims]}
    else:
        raise ValueError(f"unknown fault {fault.name}")


def heal(cluster: Cluster, fault: Fault) -> None:
    if fault.skipped:
        return
    if fault.name in ("etcd_leader_kill", "etcd_quorum_loss"):
        cluster.sighup_supervisor()
    elif fault.name in ("etcd_leader_pause", "storage_pause"):
        cluster.signal(fault.details.get("pid"), signal.SIGCONT)
