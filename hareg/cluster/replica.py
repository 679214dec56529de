"""One ``hareg serve`` replica run by the cluster supervisor."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from hareg.cluster.spec import ReplicaSlot
from hareg.processes.child import ChildProcess

__all__ = ["ReplicaError", "ReplicaProcess", "probe_ready", "replica_env"]

_PROBE_TIMEOUT = 2.0


class ReplicaError(RuntimeError):
    """A replica exited or did not become ready in time."""


def replica_env(base: Mapping[str, str]) -> dict[str, str]:
    """The replicas' environment: ``base`` without ``HAREG_...`` overrides (the
    generated configuration file already holds their effect, and a storage
    variable would conflict with the cluster's storage), unbuffered output,
    and at most two glibc malloc arenas unless ``MALLOC_ARENA_MAX`` is set:
    an arena per thread (obstore's runtime, the thread pools) keeps the
    freed upload buffers of each thread, which lifted a replica under 8
    concurrent chunked pushes from 143 to 167 MB (docs/storage.md, "Memory").
    ``HAREG_TEST_PLANTS`` passes (hareg/plants.py: planted bugs, tests only)."""
    env = {k: v for k, v in base.items() if not k.startswith("HAREG_") or k == "HAREG_TEST_PLANTS"}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MALLOC_ARENA_MAX", "2")
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


class ReplicaProcess(ChildProcess):
    """A replica slot (name, port) and the ``hareg serve`` child that fills it.

    The supervisor ``spawn()``s replicas and then waits for them with
    ``wait_ready()``, which probes through its shared HTTP session."""

    start_error = ReplicaError
    new_session = True  # a terminal's Ctrl-C reaches only the supervisor, which stops it in order

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
        super().__init__(f"replica {slot.name}", log_file)
        self.slot = slot
        self.data_dir = data_dir
        self._command = [
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
        self._env = replica_env(os.environ if env is None else env)
        self.quick_failures = 0  # deaths in a row soon after a start (crash-loop backoff)

    @property
    def name(self) -> str:
        return self.slot.name

    @property
    def url(self) -> str:
        return self.slot.url

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def command(self) -> list[str]:
        return list(self._command)

    def environment(self) -> dict[str, str]:
        return dict(self._env)

    def spawn(self) -> int:
        """Start ``hareg serve`` (from the event loop's thread); its pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return super().spawn()

    async def wait_ready(self, session: aiohttp.ClientSession, startup_timeout: float = 60.0) -> None:
        """Until ``/readyz`` answers 200; ReplicaError if the child exits or time runs out."""

        async def readyz(limit: float) -> tuple[bool, str]:
            if await probe_ready(session, self.url, probe_timeout=limit):
                return True, "ready"
            return False, f"{self.url}/readyz did not answer 200"

        await self.wait_until_ready(startup_timeout, readyz)
