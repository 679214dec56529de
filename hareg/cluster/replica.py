"""One ``hareg serve`` replica run by the cluster supervisor."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from hareg.cluster.process import ChildProcess
from hareg.cluster.spec import ReplicaSlot

__all__ = ["ReplicaError", "ReplicaProcess", "probe_ready", "replica_env"]

_PROBE_TIMEOUT = 2.0


class ReplicaError(RuntimeError):
    """A replica exited or did not become ready in time."""


def replica_env(base: Mapping[str, str]) -> dict[str, str]:
    """The replicas' environment: ``base`` without ``HAREG_...`` overrides (the
    generated configuration file already holds their effect, and a storage
    variable would conflict with the cluster's storage), unbuffered output."""
    env = {k: v for k, v in base.items() if not k.startswith("HAREG_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def probe_ready(
    session: aiohttp.ClientSession, url: str, probe_timeout: float = _PROBE_TIMEOUT
) -> bool:
    """``GET url/readyz`` answers 200."""
    try:
        async with session.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=probe_timeout)) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


class ReplicaProcess:
    """A replica slot (name, port) and the ``hareg serve`` child that fills it."""

    def __init__(
        self,
        slot: ReplicaSlot,
        *,
        config_file: Path,
        data_dir: Path,
        etcd_endpoints: Sequence[str],
        log_file: Path,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.slot = slot
        self.data_dir = data_dir
        command = [
            python,
            "-m",
            "hareg",
            "serve",
            "--listen",
            slot.listen,
            "--data-dir",
            str(data_dir),
            "--config",
            str(config_file),
            "--etcd-endpoints",
            ",".join(etcd_endpoints),
            "--replica",
            slot.name,
        ]
        self._child = ChildProcess(
            slot.name, command, log_file=log_file, env=replica_env(os.environ if env is None else env)
        )
        self.restarts = 0
        self.quick_failures = 0  # deaths in a row soon after a start (crash-loop backoff)

    @property
    def name(self) -> str:
        return self.slot.name

    @property
    def url(self) -> str:
        return self.slot.url

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._child.started_at

    def log_tail(self, lines: int = 20) -> str:
        return self._child.log_tail(lines)

    def spawn(self) -> int:
        """Start ``hareg serve`` (from the event loop's thread); its pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self._child.spawn()

    async def wait_ready(self, session: aiohttp.ClientSession, startup_timeout: float = 60.0) -> None:
        """Until ``/readyz`` answers 200; ReplicaError if the child exits or time runs out."""
        deadline = time.monotonic() + startup_timeout
        while True:
            if not self._child.running:
                raise ReplicaError(
                    f"replica {self.name} exited with code {self._child.returncode} while starting; "
                    f"last lines of {self._child.log_file}:\n{self.log_tail()}"
                )
            if await probe_ready(
                session, self.url, probe_timeout=min(1.0, max(0.1, deadline - time.monotonic()))
            ):
                return
            if time.monotonic() >= deadline:
                raise ReplicaError(
                    f"replica {self.name} not ready at {self.url}/readyz after {startup_timeout:.0f}s; "
                    f"last lines of {self._child.log_file}:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.1)

    async def stop(self, grace: float = 10.0) -> int | None:
        return await self._child.stop(grace)

    async def kill(self) -> int | None:
        return await self._child.kill()

    def __repr__(self) -> str:
        return f"ReplicaProcess({self.name!r}, url={self.url}, pid={self.pid})"
