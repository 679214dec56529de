"""EtcdProcess: a real etcd child process."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import pytest
from process_checks import assert_dies_with_parent, get_once_reachable, pid_alive

from hareg.kv.base import KVError, KVNoSpace, KVUnavailable, KVUnknownOutcome, Put
from hareg.kv.etcd import EtcdKV
from hareg.processes.etcd import (
    EtcdNotFound,
    EtcdProcess,
    EtcdStartError,
    find_etcd,
)
from hareg.processes.ports import free_port, free_ports

pytestmark = [pytest.mark.timeout(120)]

try:
    find_etcd()
    HAVE_ETCD = True
except EtcdNotFound:
    HAVE_ETCD = False
needs_etcd = pytest.mark.skipif(not HAVE_ETCD, reason="etcd binary not installed")


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
    assert 0 < free_port() < 65536


def test_missing_binary_message(tmp_path: Path) -> None:
    with pytest.raises(EtcdNotFound) as exc:
        EtcdProcess("x", tmp_path, binary="etcd-that-does-not-exist")
    msg = str(exc.value)
    assert "apt-get install etcd-server" in msg
    assert "--etcd-binary" in msg
    with pytest.raises(EtcdNotFound):
        find_etcd(tmp_path / "no-such-etcd")


@needs_etcd
def test_command_line(tmp_path: Path) -> None:
    cluster = {"a": "http://127.0.0.1:1001", "b": "http://127.0.0.1:1002"}
    proc = EtcdProcess("b", tmp_path, client_port=2001, peer_port=1002, initial_cluster=cluster)
    cmd = proc.command()

    def arg(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert arg("--initial-cluster") == "a=http://127.0.0.1:1001,b=http://127.0.0.1:1002"
    assert arg("--listen-client-urls") == "http://127.0.0.1:2001"
    assert arg("--listen-peer-urls") == "http://127.0.0.1:1002"
    assert arg("--max-txn-ops") == "4096"
    assert arg("--max-request-bytes") == "8388608"
    assert arg("--initial-cluster-state") == "new"
    with pytest.raises(ValueError):
        EtcdProcess("c", tmp_path, peer_port=1003, initial_cluster=cluster)


@needs_etcd
async def test_start_stop(tmp_path: Path) -> None:
    proc = EtcdProcess("solo", tmp_path / "data")
    await proc.start()
    pid = proc.pid
    assert pid is not None and proc.running and pid_alive(pid)
    async with EtcdKV([f"127.0.0.1:{proc.client_port}"], timeout=5) as kv:  # a bare host:port
        assert await kv.current_revision() >= 1
    assert (tmp_path / "data" / "etcd.log").stat().st_size > 0
    await proc.stop()
    assert proc.returncode is not None  # exited
    assert not pid_alive(pid)  # stopped and reaped: no orphan, no zombie
    await proc.stop()  # idempotent


@needs_etcd
async def test_kill_pause_resume_restart_keeps_data(tmp_path: Path) -> None:
    # 3 s: a healthy etcd's fsync may take more than 1 s on a busy machine.
    async with EtcdProcess("solo", tmp_path / "data") as proc, EtcdKV([proc.client_url], timeout=3) as kv:
        await kv.txn([], [Put(b"k", b"v")])
        proc.pause()
        with pytest.raises(KVError):  # and it must not hang
            await kv.get(b"k")
        proc.resume()
        assert await kv.get(b"k") is not None
        assert await proc.kill() == -signal.SIGKILL
        assert not proc.running
        await proc.start()
        got = await get_once_reachable(kv, b"k")  # the client reconnects with a backoff
        assert got is not None and got.value == b"v"


@needs_etcd
async def test_a_member_out_of_space_restarts(tmp_path: Path) -> None:
    """A NOSPACE alarm makes etcd's /health false, but the member serves reads,
    deletes and the maintenance that frees space: start() must not wait for it."""
    proc = EtcdProcess("full", tmp_path / "data", quota_backend_bytes=1024 * 1024)
    async with proc, EtcdKV([proc.client_url], timeout=3) as kv:
        with pytest.raises(KVNoSpace):
            for i in range(1000):
                await kv.txn([], [Put(b"k%04d" % i, b"x" * 100_000)])
        assert [a.kind for a in await kv.alarms()] == ["NOSPACE"]
        await proc.stop()
        await proc.start(startup_timeout=30)
        got = await get_once_reachable(kv, b"k0000")
        assert got is not None and len(got.value) == 100_000
        assert [a.kind for a in await kv.alarms()] == ["NOSPACE"]


@needs_etcd
async def test_stop_of_paused_etcd(tmp_path: Path) -> None:
    proc = EtcdProcess("solo", tmp_path / "data")
    await proc.start()
    pid = proc.pid
    assert pid is not None
    proc.pause()
    t0 = time.monotonic()
    await proc.stop(grace=30)
    assert time.monotonic() - t0 < 15  # it did not wait out the grace
    assert not pid_alive(pid)


@needs_etcd
async def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = EtcdProcess("solo", tmp_path / "data", client_port=port)
        t0 = time.monotonic()
        with pytest.raises(EtcdStartError) as exc:
            await proc.start(startup_timeout=30)
        assert time.monotonic() - t0 < 15  # failed early, not at the deadline
    assert "address already in use" in str(exc.value)
    assert not proc.running


@needs_etcd
async def test_three_member_cluster(tmp_path: Path) -> None:
    ports = free_ports(6)
    cluster = {f"m{i}": f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)}
    members = [
        EtcdProcess(
            f"m{i}",
            tmp_path / f"m{i}",
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
            initial_cluster=cluster,
            cluster_token="test-cluster",
        )
        for i in range(3)
    ]
    try:
        await asyncio.gather(*(m.start(startup_timeout=60) for m in members))
        async with EtcdKV([members[0].client_url], timeout=3) as kv0:
            rev = (await kv0.txn([], [Put(b"k", b"v")])).revision
        async with EtcdKV([m.client_url for m in members], timeout=3) as kv:
            got = await kv.get(b"k")
            assert got is not None and got.mod_revision == rev
            # One member down: the majority serves writes again once it has a
            # leader (if the killed member led, a write in flight is lost and
            # times out as KVUnknownOutcome until the election is over).
            await members[2].kill()
            deadline = time.monotonic() + 60
            ok = 0
            while ok < 6:  # round-robin: some calls go to the dead member's address
                try:
                    assert (await kv.txn([], [Put(b"k2", b"v")])).succeeded
                    ok += 1
                except (KVUnavailable, KVUnknownOutcome):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(*(m.stop() for m in members))


@needs_etcd
async def test_no_orphan_when_parent_is_sigkilled(tmp_path: Path) -> None:
    await assert_dies_with_parent(EtcdProcess, "orphan-test", str(tmp_path / "data"))
