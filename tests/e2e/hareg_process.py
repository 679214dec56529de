"""Running ``hareg serve`` as a child process, for the end-to-end tests.

``launch()`` starts it on a free 127.0.0.1 port (or the given address) and
waits, with a deadline, for the ready line on stdout; ``HaregServer.stop()``
signals it and waits, bounded.  ``data_dir_processes()`` finds what still runs
with a path inside a data dir in its command line: the embedded etcd
(``--data-dir DIR/etcd/data``) once hareg is gone would be an orphan.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

# The console script as users run it (``python -m hareg`` if it is not installed).
_SCRIPT = Path(sys.executable).with_name("hareg")
HAREG = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hareg"]
# The checkout under test, first on the child's path: it runs this tree's code
# whatever state the virtualenv's (editable) install of it is in.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "hareg registry listening on "
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
ORPHAN_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class HaregServer:
    """One ``hareg serve`` child process."""

    proc: subprocess.Popen[str]
    data_dir: Path
    stderr_path: Path
    url: str = ""
    host_port: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _stdout_closed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no stderr: {exc})"

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit code of a child expected to exit by itself (bounded wait)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"hareg (pid {self.pid}) still running after {timeout}s; stderr:\n{self.stderr()[-4000:]}"
            ) from None

    def stdout(self) -> str:
        """What the child printed on stdout so far; once it has exited, all of it."""
        deadline = time.monotonic() + 5.0
        while not self._stdout_closed:
            exited = self.proc.poll() is not None
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01) if exited else 0.0)
            except queue.Empty:
                if not exited or time.monotonic() >= deadline:
                    break
                continue
            if line is None:
                self._stdout_closed = True
            else:
                self.stdout_lines.append(line)
        return "\n".join(self.stdout_lines)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait (bounded) for the exit code; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"hareg (pid {self.pid}) ignored {sig.name} for {timeout}s; stderr:\n{self.stderr()[-4000:]}"
            ) from None


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


def _pump_stdout(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Drain the child's stdout (so it never blocks on a full pipe)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)


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
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [*HAREG, "serve", "--listen", listen, "--data-dir", str(data_dir), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    server = HaregServer(proc=proc, data_dir=data_dir, stderr_path=stderr_path)
    threading.Thread(target=_pump_stdout, args=(proc, server.lines), daemon=True).start()
    if wait_ready:
        wait_until_ready(server, timeout)
    return server


def wait_until_ready(server: HaregServer, timeout: float = START_TIMEOUT) -> None:
    """Wait (bounded) for the ready line; on failure kill the child and raise with its stderr."""
    proc = server.proc
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            line = server.lines.get(timeout=max(remaining, 0.01))
        except queue.Empty:
            proc.kill()
            proc.wait(timeout=10)
            raise RuntimeError(
                f"hareg serve not ready after {timeout}s; stdout {server.stdout_lines}; "
                f"stderr:\n{server.stderr()[-4000:]}"
            ) from None
        if line is None:
            server._stdout_closed = True
            code = proc.wait(timeout=10)
            raise RuntimeError(
                f"hareg serve exited with code {code} before it was ready; stdout {server.stdout_lines}; "
                f"stderr:\n{server.stderr()[-4000:]}"
            )
        server.stdout_lines.append(line)
        if line.startswith(READY_PREFIX):
            server.url = line[len(READY_PREFIX) :].strip()
            server.host_port = server.url.removeprefix("http://")
            return


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
