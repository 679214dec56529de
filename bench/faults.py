"""Faults injected into a running local cluster (``hareg cluster up``), on a
schedule, by pid: only processes of the cluster this benchmark started.

=============================  ==============================================  ===========================
fault                          inject                                          heal
=============================  ==============================================  ===========================
``replica_kill``               SIGKILL one replica                             the supervisor restarts it
``etcd_leader_kill``           SIGKILL the etcd leader                         SIGHUP to the supervisor
``etcd_leader_pause``          SIGSTOP the etcd leader past the lease TTL      SIGCONT
``storage_pause``              SIGSTOP the object store (SeaweedFS)            SIGCONT
``etcd_member_partition``      the etcd leader cut from its peers, both ways   the rules deleted
                               (clients still reach it)
``etcd_one_way``               the etcd leader's peer port drops every packet  the rules deleted
                               (peers cannot reach it over connections they
                               open; it still reaches them over its own)
``replica_etcd_partition``     one replica cut from every etcd member          the rules deleted
``replica_storage_partition``  one replica cut from the object store           the rules deleted
``etcd_quorum_loss``           SIGKILL two of three etcd members               SIGHUP to the supervisor
=============================  ==============================================  ===========================

The partitions are iptables rules on the loopback interface (:mod:`bench.partitions`),
deleted when the fault heals and, whatever happens, when the run ends.  A run
longer than one pass of the faults repeats them (``replica_kill#2``, ...), a
few seconds apart.

The supervisor never restarts etcd or SeaweedFS by itself (so chaos tests can
keep them down); a SIGHUP makes it start whatever member is down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.partitions import PartitionError, Partitions

# Membership leases in hareg are 10 s; a pause "past the lease TTL" lasts longer.
LEASE_TTL_S = 10.0


class Cluster:
    """A started cluster, read from its ``cluster.json`` (re-read on every call)."""

    def __init__(
        self,
        cluster_json: Path,
        supervisor_pid: int,
        registry_url: str,
        partitions: Partitions | None = None,
    ) -> None:
        self.cluster_json = cluster_json
        self.supervisor_pid = supervisor_pid
        self.registry_url = registry_url
        self.partitions = partitions  # None: partition faults are skipped

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

    def storage_port(self) -> int | None:
        url = str(self.doc().get("storage", {}).get("url", ""))
        return _port(url) if url.startswith("http") else None

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

    def etcd_leader(self, wait: float = 5.0) -> dict[str, Any] | None:
        """The member that says it leads; polled for up to ``wait`` seconds (an
        election may be going on after the previous fault), else None."""
        deadline = time.monotonic() + wait
        while True:
            leader = self._leader_now()
            if leader is not None or time.monotonic() >= deadline:
                return leader
            time.sleep(0.2)

    def _leader_now(self) -> dict[str, Any] | None:
        for member in self.etcd():
            if member.get("pid") is None:
                continue
            answer = self.etcd_status(member)
            if answer is not None and answer[0] == answer[1]:
                return member
        return None

    def etcd_peer_port(self, member: dict[str, Any]) -> int | None:
        """The member's peer port, from its command line (cluster.json names client URLs only)."""
        try:
            args = Path(f"/proc/{member['pid']}/cmdline").read_bytes().decode().split("\0")
        except (OSError, KeyError, TypeError):
            return None
        for flag, value in itertools.pairwise(args):
            if flag == "--listen-peer-urls":
                return _port(value.split(",")[0])
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

    name: str  # unique in a schedule: the kind, then ``kind#2``, ... when the faults repeat
    at: float
    hold: float
    kind: str = ""  # one of FAULT_ORDER; the name's kind when not given
    injected_at: float | None = None
    healed_at: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    rules: list[tuple[str, ...]] = field(default_factory=list)  # a partition's iptables rules

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = self.name.split("#", 1)[0]

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "scheduled_at": round(self.at, 2),
            "hold_s": round(self.hold, 2),
            "injected_at": None if self.injected_at is None else round(self.injected_at, 3),
            "healed_at": None if self.healed_at is None else round(self.healed_at, 3),
            "details": self.details,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        return out


FAULT_ORDER = (
    "replica_kill",
    "etcd_leader_kill",
    "etcd_leader_pause",
    "storage_pause",
    "etcd_member_partition",
    "etcd_one_way",
    "replica_etcd_partition",
    "replica_storage_partition",
    "etcd_quorum_loss",
)
PARTITION_KINDS = frozenset(
    {"etcd_member_partition", "etcd_one_way", "replica_etcd_partition", "replica_storage_partition"}
)
# Without partitions (a quick run): the kill and pause faults.
KILL_AND_PAUSE = tuple(k for k in FAULT_ORDER if k not in PARTITION_KINDS)
REPEAT_GAP_S = 6.0  # the gap between faults when a long run repeats them


def _holds(duration: float) -> dict[str, float]:
    def scaled(low: float, share: float, high: float) -> float:
        return min(max(low, share * duration), high)

    return {
        "replica_kill": 0.0,
        "etcd_leader_kill": scaled(3.0, 0.05, 8.0),
        "etcd_leader_pause": LEASE_TTL_S + 2.0,
        "storage_pause": scaled(3.0, 0.05, 8.0),
        "etcd_member_partition": scaled(4.0, 0.05, 8.0),
        "etcd_one_way": scaled(4.0, 0.05, 8.0),
        "replica_etcd_partition": scaled(4.0, 0.05, 8.0),
        "replica_storage_partition": scaled(3.0, 0.05, 8.0),
        "etcd_quorum_loss": scaled(4.0, 0.06, 10.0),
    }


def schedule(duration: float, kinds: tuple[str, ...] = FAULT_ORDER) -> list[Fault]:
    """The faults spread over ``duration`` seconds: a warm-up, then each fault
    with its hold and an equal recovery gap, then a quiet tail.  When a pass
    leaves gaps longer than twice ``REPEAT_GAP_S``, the pass repeats (as many
    times as fit with gaps of about ``REPEAT_GAP_S``): a soak has a fault every
    few seconds."""
    holds = _holds(duration)
    warmup = min(max(4.0, 0.07 * duration), 15.0)
    tail = min(max(3.0, 0.05 * duration), 10.0)
    room = duration - warmup - tail
    one_pass = sum(holds[k] for k in kinds)
    rounds = 1
    if (room - one_pass) / len(kinds) > 2 * REPEAT_GAP_S:
        rounds = max(int(room // (one_pass + len(kinds) * REPEAT_GAP_S)), 1)
    gap = max((room - rounds * one_pass) / (rounds * len(kinds)), 3.0)
    faults = []
    t = warmup
    for r in range(rounds):
        for kind in kinds:
            name = kind if r == 0 else f"{kind}#{r + 1}"
            faults.append(Fault(name=name, at=t, hold=holds[kind], kind=kind))
            t += holds[kind] + gap
    return faults


def minimum_duration(kinds: tuple[str, ...] = FAULT_ORDER) -> float:
    faults = schedule(0.0, kinds)
    return faults[-1].at + faults[-1].hold + 3.0 + 3.0


def _port(url: str) -> int | None:
    tail = url.rstrip("/").rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _partition(cluster: Cluster, fault: Fault) -> None:
    """Inject a partition fault (see the table in the module's docstring)."""
    parts = cluster.partitions
    if parts is None:
        fault.skipped = "partitions are off (not root, or no iptables / cgroup v2)"
        return
    rules: list[tuple[str, ...]] = []
    try:
        if fault.kind in ("etcd_member_partition", "etcd_one_way"):
            leader = cluster.etcd_leader()
            if leader is None:
                fault.skipped = "no etcd leader could be found"
                return
            peers = {m["name"]: cluster.etcd_peer_port(m) for m in cluster.etcd() if m.get("pid")}
            own = peers.get(leader["name"])
            others = [p for n, p in peers.items() if n != leader["name"] and p is not None]
            if own is None or not others:
                fault.skipped = f"peer ports unknown: {peers}"
                return
            rules += parts.inbound(own)
            if fault.kind == "etcd_member_partition":
                rules += parts.outbound(leader["name"], leader["pid"], others)
            fault.details = {"member": leader["name"], "pid": leader["pid"], "peer_port": own,
                             "cut_from_peer_ports": others if fault.kind == "etcd_member_partition" else []}  # fmt: skip
        else:
            replicas = [r for r in cluster.replicas() if r.get("pid")]
            # Not the first replica: replica_kill's victim restarts meanwhile.
            victim = replicas[min(1, len(replicas) - 1)]
            if fault.kind == "replica_etcd_partition":
                ports = [p for p in (_port(m["client_url"]) for m in cluster.etcd()) if p is not None]
            else:
                storage = cluster.storage_port()
                if storage is None:
                    fault.skipped = "no object store process (filesystem storage)"
                    return
                ports = [storage]
            rules += parts.outbound(victim["name"], victim["pid"], ports)
            fault.details = {"replica": victim["name"], "pid": victim["pid"], "ports": ports}
    except PartitionError as exc:
        parts.remove(rules)
        fault.skipped = f"partition failed: {exc}"[:300]
        return
    fault.details["rules"] = len(rules)
    fault.rules = rules


def inject(cluster: Cluster, fault: Fault) -> None:
    if fault.kind in PARTITION_KINDS:
        _partition(cluster, fault)
    elif fault.kind == "replica_kill":
        replicas = [r for r in cluster.replicas() if r.get("pid")]
        victim = replicas[0]
        cluster.signal(victim["pid"], signal.SIGKILL)
        fault.details = {"replica": victim["name"], "pid": victim["pid"]}
    elif fault.kind in ("etcd_leader_kill", "etcd_leader_pause"):
        leader = cluster.etcd_leader()
        if leader is None:
            fault.skipped = "no etcd leader could be found"
            return
        sig = signal.SIGKILL if fault.kind == "etcd_leader_kill" else signal.SIGSTOP
        cluster.signal(leader["pid"], sig)
        fault.details = {"member": leader["name"], "pid": leader["pid"], "signal": sig.name}
    elif fault.kind == "storage_pause":
        pid = cluster.storage_pid()
        if pid is None:
            fault.skipped = "no object store process (filesystem storage)"
            return
        cluster.signal(pid, signal.SIGSTOP)
        fault.details = {"pid": pid}
    elif fault.kind == "etcd_quorum_loss":
        leader = cluster.etcd_leader()
        members = [m for m in cluster.etcd() if m.get("pid")]
        # The two followers: the leader that stays loses its quorum.
        victims = [m for m in members if leader is None or m["name"] != leader["name"]][:2]
        for m in victims:
            cluster.signal(m["pid"], signal.SIGKILL)
        fault.details = {"members": [m["name"] for m in victims], "pids": [m["pid"] for m in victims]}
    else:
        raise ValueError(f"unknown fault {fault.kind}")


def heal(cluster: Cluster, fault: Fault) -> None:
    if fault.skipped:
        return
    if fault.kind in PARTITION_KINDS:
        if cluster.partitions is not None:
            errors = cluster.partitions.remove(fault.rules)
            if errors:
                fault.details["heal_errors"] = errors
    elif fault.kind in ("etcd_leader_kill", "etcd_quorum_loss"):
        cluster.sighup_supervisor()
    elif fault.kind in ("etcd_leader_pause", "storage_pause"):
        cluster.signal(fault.details.get("pid"), signal.SIGCONT)
