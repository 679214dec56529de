"""Partitions made by the kernel (bench/partitions.py) and the benchmark's
partition faults (bench/faults.py), on real processes and real sockets of
this machine: a rule is added and traffic is really dropped, only for the
process cut; the rule is removed and traffic flows again; the rules and
cgroups go away when the block fails and when the run gets SIGTERM; rules
of a run that is gone are removed by the next one.  Only ports these tests
bound themselves are cut.  Skipped where iptables, root or cgroup v2 is missing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from bench_support import PROJECT_ROOT

from bench.faults import Cluster, Fault, heal, inject
from bench.partitions import COMMENT_PREFIX, Partitions, open_connections
from hareg.processes.etcd import EtcdNotFound, EtcdProcess, find_etcd
from hareg.processes.ports import free_ports

NEED = Partitions().unavailable()
pytestmark = pytest.mark.skipif(NEED is not None, reason=f"partitions unavailable here: {NEED}")


class Listener:
    """A TCP server on a free loopback port that answers every line with ``pong``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            f = conn.makefile("rwb", buffering=0)
            for _ in f:
                f.write(b"pong\n")

    def close(self) -> None:
        self.sock.close()


PROBER = r"""
import socket, sys
port = int(sys.argv[1])
held = socket.create_connection(("127.0.0.1", port), timeout=5)  # an open connection, from before any cut
held_file = held.makefile("rwb", buffering=0)
print("ready", flush=True)
for line in sys.stdin:
    what = line.strip()
    try:
        if what == "new":
            with socket.create_connection(("127.0.0.1", port), timeout=1.5) as s:
                s.sendall(b"ping\n")
                ok = s.makefile("rb").readline() == b"pong\n"
        else:
            held.settimeout(1.5)
            held_file.write(b"ping\n")
            ok = held_file.readline() == b"pong\n"
    except OSError:
        ok = False
    print("ok" if ok else "dropped", flush=True)
"""


class Prober:
    """A child process that reaches ``port`` on request over a new connection
    or over the connection it opened at its start."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBER, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def reach(self, how: str) -> bool:
        assert self.proc.stdin is not None
        self.proc.stdin.write(how + "\n")
        self.proc.stdin.flush()
        return self._line() == "ok"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def reachable(port: int, timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"ping\n")
            return s.makefile("rb").readline() == b"pong\n"
    except OSError:
        return False


def our_rules(parts: Partitions) -> list[tuple[str, ...]]:
    return [rule for owner, rule in parts.listed() if owner == parts.owner]


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def parts() -> Iterator[Partitions]:
    p = Partitions()
    with p.guard():
        yield p
    assert our_rules(p) == []


def test_an_inbound_cut_drops_every_packet_to_the_port_until_removed(
    listener: Listener, parts: Partitions
) -> None:
    assert reachable(listener.port)
    rules = parts.inbound(listener.port)
    listed = our_rules(parts)
    assert len(listed) == len(rules) == 1 and str(listener.port) in listed[0]
    assert f"{COMMENT_PREFIX}{os.getpid()}" in listed[0]
    assert not reachable(listener.port)
    assert parts.remove(rules) == []
    assert our_rules(parts) == []
    assert reachable(listener.port)


def test_an_outbound_cut_drops_only_that_process_and_its_open_connections(
    listener: Listener, parts: Partitions
) -> None:
    prober = Prober(listener.port)
    try:
        assert prober.reach("new") and prober.reach("held")
        assert open_connections(prober.proc.pid, [listener.port])  # the held one
        rules = parts.outbound("prober", prober.proc.pid, [listener.port])
        assert len(rules) == 2  # new sockets (its cgroup) and the connection it holds
        assert not prober.reach("new")
        assert not prober.reach("held")
        assert reachable(listener.port)  # this process is not cut
        parts.remove(rules)
        assert prober.reach("new")
        cgroup = parts.cgroup_root / f"{parts.comment}-prober" if parts.cgroup_root else None
        assert cgroup is not None and cgroup.exists()
    finally:
        prober.close()
    parts.cleanup()
    assert not cgroup.exists()


def test_rules_and_cgroups_go_when_the_block_fails(listener: Listener) -> None:
    parts = Partitions()
    prober = Prober(listener.port)
    try:
        with pytest.raises(RuntimeError, match="the run failed"), parts.guard():
            parts.inbound(listener.port)
            parts.outbound("prober", prober.proc.pid, [listener.port])
            assert len(our_rules(parts)) == 3
            raise RuntimeError("the run failed")
        assert our_rules(parts) == []
        assert parts.cgroup_root is not None
        assert list(parts.cgroup_root.glob(f"{parts.comment}-*")) == []
        assert reachable(listener.port) and prober.reach("new")
    finally:
        prober.close()


RUN = r"""
import sys, time
from bench.partitions import Partitions
parts = Partitions()
with parts.guard():
    parts.inbound(int(sys.argv[1]))
    print("cut", flush=True)
    time.sleep(120)
"""


def test_rules_go_when_the_run_gets_sigterm(listener: Listener) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, str(listener.port)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "cut"
    watcher = Partitions(owner=proc.pid)
    assert len(our_rules(watcher)) == 1
    assert not reachable(listener.port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert our_rules(watcher) == []
    assert reachable(listener.port)


def test_rules_of_a_run_that_is_gone_are_removed(listener: Listener) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = Partitions(owner=dead.pid)
    orphan.inbound(listener.port)
    assert not reachable(listener.port)
    assert Partitions().remove_orphans() >= 1
    assert our_rules(orphan) == []
    assert reachable(listener.port)


def _cluster(tmp_path: Path, replica_pid: int, etcd_port: int, storage_port: int) -> Cluster:
    """A cluster.json naming real processes: the prober as a replica, listeners as etcd and storage."""
    doc = {
        "registry": "http://127.0.0.1:1",
        "replicas": [{"name": "replica-1", "url": "http://127.0.0.1:1", "pid": replica_pid}],
        "etcd": [{"name": "m1", "client_url": f"http://127.0.0.1:{etcd_port}", "pid": os.getpid()}],
        "storage": {"url": f"http://127.0.0.1:{storage_port}", "pid": os.getpid()},
    }
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(doc))
    return Cluster(path, os.getpid(), doc["registry"], Partitions())


@pytest.mark.parametrize("kind", ["replica_etcd_partition", "replica_storage_partition"])
def test_a_replica_partition_fault_cuts_that_replica_until_healed(
    tmp_path: Path, listener: Listener, kind: str
) -> None:
    other = Listener()  # the port the fault leaves alone
    target, spare = (listener, other) if kind == "replica_etcd_partition" else (other, listener)
    prober = Prober(target.port)
    etcd, storage = (
        (target.port, spare.port) if kind == "replica_etcd_partition" else (spare.port, target.port)
    )
    cluster = _cluster(tmp_path, prober.proc.pid, etcd, storage)
    assert cluster.partitions is not None
    try:
        with cluster.partitions.guard():
            fault = Fault(name=kind, at=0.0, hold=1.0)
            inject(cluster, fault)
            assert not fault.skipped and fault.details["ports"] == [target.port]
            assert not prober.reach("new") and not prober.reach("held")
            assert reachable(target.port)  # only the replica is cut
            heal(cluster, fault)
            assert cluster.partitions.rules == []
            assert prober.reach("new")
        assert our_rules(cluster.partitions) == []
    finally:
        prober.close()
        other.close()


@pytest.fixture
async def etcd_trio(tmp_path: Path) -> AsyncIterator[tuple[Cluster, list[EtcdProcess]]]:
    """Three real etcd members in one cluster, named in a cluster.json."""
    try:
        find_etcd()
    except EtcdNotFound as exc:
        pytest.skip(str(exc))
    ports = free_ports(6)
    initial = {f"m{i}": f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)}
    members = [
        EtcdProcess(f"m{i}", tmp_path / f"m{i}", client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                    initial_cluster=initial)
        for i in range(3)
    ]  # fmt: skip
    await asyncio.gather(*(m.start(startup_timeout=90) for m in members))
    doc = {
        "registry": "http://127.0.0.1:1",
        "replicas": [],
        "etcd": [{"name": m.name, "client_url": m.client_url, "pid": m.pid} for m in members],
        "storage": {},
    }
    (tmp_path / "cluster.json").write_text(json.dumps(doc))
    try:
        yield Cluster(tmp_path / "cluster.json", os.getpid(), "http://127.0.0.1:1", Partitions()), members
    finally:
        await asyncio.gather(*(m.stop(grace=5) for m in members))


async def _until(what: str, check: Callable[[], bool], within: float = 60.0) -> None:
    try:
        async with asyncio.timeout(within):
            while not await asyncio.to_thread(check):
                await asyncio.sleep(0.2)  # polling a condition under the timeout above
    except TimeoutError:
        pytest.fail(f"not within {within:g} s: {what}")


async def test_an_etcd_member_partition_cuts_the_leader_from_its_peers_until_healed(
    etcd_trio: tuple[Cluster, list[EtcdProcess]],
) -> None:
    cluster, _ = etcd_trio
    assert cluster.partitions is not None
    with cluster.partitions.guard():
        assert cluster.etcd_leader() is not None
        fault = Fault(name="etcd_member_partition", at=0.0, hold=1.0)
        inject(cluster, fault)
        assert not fault.skipped, fault.skipped
        victim = fault.details["member"]
        others = [m for m in cluster.etcd() if m["name"] != victim]
        before = [cluster.etcd_status(m) for m in others]
        old_leader = before[0][1] if before[0] else None

        def others_elected_a_new_leader() -> bool:
            answers = [cluster.etcd_status(m) for m in others]
            ids = {a[0] for a in answers if a}
            leaders = {a[1] for a in answers if a}
            return len(ids) == 2 and len(leaders) == 1 and leaders <= ids and old_leader not in leaders

        await _until("the two others elect one of them", others_elected_a_new_leader)
        heal(cluster, fault)
        assert cluster.partitions.rules == []

        def all_agree() -> bool:
            answers = [cluster.etcd_status(m) for m in cluster.etcd()]
            return all(a is not None for a in answers) and len({a[1] for a in answers if a}) == 1

        await _until("all three agree on one leader again", all_agree)


async def test_etcd_one_way_closes_the_leaders_peer_port_only(
    etcd_trio: tuple[Cluster, list[EtcdProcess]],
) -> None:
    cluster, _ = etcd_trio
    assert cluster.partitions is not None
    with cluster.partitions.guard():
        fault = Fault(name="etcd_one_way", at=0.0, hold=1.0)
        inject(cluster, fault)
        assert not fault.skipped, fault.skipped
        port = fault.details["peer_port"]
        assert len(fault.rules) == 1 and str(port) in fault.rules[0]
        assert not _connects(port)
        heal(cluster, fault)
        assert _connects(port)


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.5):
            return True
    except OSError:
        return False
