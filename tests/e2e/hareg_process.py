"""Running ``hareg serve`` as a child process, for the end-to-end tests.

``launch()`` starts it on a free 127.0.0.1 port (or the given address) and
waits, with a deadline, for the ready line on stdout; ``HaregServer.stop()``
signals it and waits, bounded.  ``data_dir_processes()`` finds what still runs
with a path inside a data dir in its command line: the embedded etcd
(``--data-dir DIR/etcd/data``) once hareg is gone would be an orphan.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil
from cli_process import CommandRun, child_env, start_command

from hareg.processes.ports import free_port

# The console script as users run it (``python -m hareg`` if it is not installed).
_SCRIPT = Path(sys.executable).with_name("hareg")
HAREG = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hareg"]
START_TIMEOUT = 60.0
ORPHAN_TIMEOUT = 30.0


@dataclass(kw_only=True)
class HaregServer(CommandRun):
    """One ``hareg serve`` child process."""

    data_dir: Path
    what: str = "hareg serve"
    host_port: str = ""

    def wait_until_ready(self, timeout: float = START_TIMEOUT) -> None:
        super().wait_until_ready(timeout)
        self.host_port = self.url.removeprefix("http://")


def data_dir_processes(data_dir: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes with a path strictly inside ``data_dir`` in
    their command line: the embedded etcd (``--data-dir DIR/etcd/data``).
    hareg itself only names ``DIR``, so it is not matched."""
    inside = str(data_dir.resolve()) + os.sep
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(inside in arg for arg in p.info["cmdline"] or ()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_no_orphans(data_dir: Path, timeout: float = ORPHAN_TIMEOUT) -> None:
    """Poll (bounded) until no process under ``data_dir`` is alive; fail otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        left = data_dir_processes(data_dir)
        if not left:
            return
        if time.monotonic() >= deadline:
            details = []
            for p in left:
                try:
                    details.append(f"pid {p.pid}: {' '.join(p.cmdline())}")
                except psutil.Error:
                    details.append(f"pid {p.pid}")
            raise AssertionError(f"processes under {data_dir} outlived hareg: {details}")
        time.sleep(0.05)


def launch(
    data_dir: Path,
    *,
    listen: str | None = None,
    extra_args: Sequence[str] = (),
    wait_ready: bool = True,
    timeout: float = START_TIMEOUT,
) -> HaregServer:
    """Start ``hareg serve``; with ``wait_ready`` return once it printed its URL."""
    data_dir = data_dir.resolve()  # hareg creates it
    if listen is None:
        listen = f"127.0.0.1:{free_port()}"
    # Beside the data dir (or the nearest directory above it, when a test makes it unusable).
    log_dir = next(p for p in data_dir.parents if p.is_dir())
    stderr_path = log_dir / f"{data_dir.name}.hareg-{time.monotonic_ns()}.stderr"
    command = [*HAREG, "serve", "--listen", listen, "--data-dir", str(data_dir), *extra_args]
    server = HaregServer(
        proc=start_command(command, stderr_path, child_env()), data_dir=data_dir, stderr_path=stderr_path
    )
    if wait_ready:
        server.wait_until_ready(timeout)
    return server


class Launcher(Protocol):
    def __call__(
        self,
        data_dir: Path,
        *,
        listen: str | None = None,
        extra_args: Sequence[str] = (),
        wait_ready: bool = True,
        timeout: float = START_TIMEOUT,
    ) -> HaregServer: ...
