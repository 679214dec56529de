"""``hareg cluster up`` as a child process, for the local-cluster tests.

``launch()`` starts it on free 127.0.0.1 ports in a directory and waits,
bounded, for the ready line and ``cluster.json``; ``ClusterRun.stop()``
signals it and waits, bounded; ``recorded_pids()`` lists every pid that
cluster.json names plus their descendants (haproxy's workers), so a test can
check that none outlives the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from cli_process import CommandRun, child_env, start_command

from hareg.processes.ports import free_ports

HAREG = Path(sys.executable).with_name("hareg")
START_TIMEOUT = 60.0
# The bound for anything the supervisor or a child must do (notice a death,
# restart, become ready, report a condition): generous, as the machine may be
# busy; a test that promises a time asserts it separately.
EVENT_TIMEOUT = 60.0


@functools.cache
def cluster_storage() -> str:
    """``seaweedfs`` when this build can use it (``weed`` installed and an S3
    driver in ``hareg serve``), else ``filesystem`` (one shared directory)."""
    from hareg.config.model import Config, S3Storage, StorageConfig
    from hareg.server.serve import StartupError, make_store

    try:
        from hareg.processes.seaweedfs import find_weed

        find_weed()
    except (ImportError, RuntimeError):
        return "filesystem"
    config = Config(
        storage=StorageConfig(
            kind="s3",
            s3=S3Storage(
                bucket="probe",
                region_endpoint="http://127.0.0.1:9",
                access_key="probe",
                secret_key="probe-secret",
            ),
        )
    )
    try:
        store = make_store(config, Path("/nonexistent"))
    except StartupError:
        return "filesystem"
    except Exception:
        return "seaweedfs"  # it knows s3 and complained about something else
    # A thread of its own: the caller may be inside a running event loop.
    closer = threading.Thread(target=asyncio.run, args=(store.close(),))
    closer.start()
    closer.join(timeout=10)
    return "seaweedfs"


@dataclass(kw_only=True)
class ClusterRun(CommandRun):
    """One ``hareg cluster up`` child process."""

    dir: Path
    port: int
    config_path: Path | None
    what: str = "hareg cluster up"

    @property
    def cluster_json(self) -> Path:
        return self.dir / "cluster.json"

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cluster_json.read_text())
        return data

    def replica(self, name: str) -> dict[str, Any]:
        for r in self.info()["replicas"]:
            if r["name"] == name:
                return dict(r)
        raise KeyError(name)

    def wait_until_ready(self, timeout: float = START_TIMEOUT) -> None:
        """The ready line, then ``cluster.json`` (written before it; bounded all the same)."""
        deadline = time.monotonic() + timeout
        super().wait_until_ready(timeout)
        while not self.cluster_json.exists():
            if time.monotonic() >= deadline:
                raise RuntimeError("ready line printed but no cluster.json")
            time.sleep(0.05)


def recorded_pids(run: ClusterRun) -> set[int]:
    """The supervisor, every pid in cluster.json, and their descendants."""
    pids = {run.pid}
    with contextlib.suppress(FileNotFoundError, ValueError):
        info = run.info()
        for item in [*info["replicas"], *info["etcd"], info["storage"], info["lb"]]:
            if item.get("pid"):
                pids.add(int(item["pid"]))
    for pid in list(pids):
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
    return pids


def alive(pids: set[int]) -> list[str]:
    """The pids of ``pids`` that still run (zombies excluded), described."""
    found = []
    for pid in sorted(pids):
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append(f"{pid}: {' '.join(p.cmdline())[:200]}")
        except psutil.Error:
            continue
    return found


def wait_gone(pids: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = alive(pids)
        if not left:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"processes outlived the cluster: {left}")
        time.sleep(0.05)


def launch(
    directory: Path,
    *,
    args: Sequence[str] = (),
    config_text: str | None = None,
    storage: str | None = None,
    timeout: float = START_TIMEOUT,
    wait_ready: bool = True,
) -> ClusterRun:
    """Start ``hareg cluster up --dir directory --port FREE`` (plus ``args``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    config_path = None
    command = [str(HAREG), "cluster", "up", "--dir", str(directory / "cluster"), "--port", str(port)]
    if config_text is not None:
        config_path = directory / "config.yaml"
        config_path.write_text(config_text)
        command += ["--config", str(config_path)]
    command += ["--storage", storage or cluster_storage(), *args]
    stderr_path = directory / f"cluster-up-{time.monotonic_ns()}.stderr"
    env = child_env({k: v for k, v in os.environ.items() if not k.startswith("HAREG_")})
    run = ClusterRun(
        proc=start_command(command, stderr_path, env),
        stderr_path=stderr_path,
        dir=directory / "cluster",
        port=port,
        config_path=config_path,
    )
    if wait_ready:
        run.wait_until_ready(timeout)
    return run


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until it returns something truthy (returned); AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def hareg_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HAREG), *args], capture_output=True, text=True, timeout=timeout, env=child_env(), check=False
    )
