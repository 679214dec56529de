"""Checks on the child processes of :mod:`hareg.processes.child` (etcd, SeaweedFS):
is the binary installed (else the test is skipped), is a pid alive, does the
child die when its parent is SIGKILLed, and reading a key once a restarted
etcd answers again.

Read from /proc here rather than through hareg's own helpers, so that a test
does not trust the code it tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hareg.kv.base import KeyValue, KVUnavailable
from hareg.kv.etcd import EtcdKV
from hareg.processes.child import ChildProcess
from hareg.processes.etcd import EtcdNotFound, find_etcd

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Starts a ChildProcess subclass (module, class name, constructor arguments on
# the command line), prints the child's pid and ports (if it has any), and
# waits to be killed.
_PARENT = textwrap.dedent(
    """
    import asyncio, importlib, sys

    async def main():
        module, name, *args = sys.argv[1:]
        proc = getattr(importlib.import_module(module), name)(*args)
        await proc.start()
        print(proc.pid, *getattr(proc, "ports", ()), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def wait_dead(pid: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        await asyncio.sleep(0.05)


def _spawn_parent(cls: type[ChildProcess], args: tuple[str, ...]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _PARENT, cls.__module__, cls.__name__, *args],
        stdout=subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )


async def assert_dies_with_parent(
    cls: type[ChildProcess], *args: str, cleanup: Callable[[list[int]], None] | None = None
) -> None:
    """Start ``cls(*args)`` in a fresh Python process, SIGKILL that process
    once the child is ready, and check that the child dies with it.

    ``cleanup(ports)`` runs at the end whatever happened, with the ports the
    child listened on (nobody is left to clean up after it)."""
    parent = _spawn_parent(cls, args)
    child_pid = 0
    ports: list[int] = []
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 60)
        child_pid, *ports = map(int, line.split())
        assert pid_alive(child_pid)
        parent.kill()
        parent.wait(10)
        await wait_dead(child_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if child_pid and pid_alive(child_pid):  # only if the test failed: never leave it behind
            os.kill(child_pid, signal.SIGKILL)
            await wait_dead(child_pid)
        if cleanup is not None:
            cleanup(ports)


def require_etcd() -> None:
    """Skip the test (or the fixture's users) when no etcd binary is installed."""
    try:
        find_etcd()
    except EtcdNotFound as exc:
        pytest.skip(str(exc))


async def get_once_reachable(kv: EtcdKV, key: bytes, within: float = 60.0) -> KeyValue | None:
    """``kv.get(key)`` as soon as etcd answers again (after a restart the client
    reconnects with a backoff); fails the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await kv.get(key)
        except KVUnavailable:
            assert time.monotonic() < deadline, f"etcd did not answer within {within} s"
            await asyncio.sleep(0.1)
