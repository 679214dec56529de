"""A long-running ``hareg`` command run as a child process by the tests
(``hareg serve`` in tests/e2e, ``hareg cluster up`` in tests/cluster).

stderr goes to a file; stdout is read line by line on a thread (so the child
never blocks on a full pipe); ``wait_until_ready()`` waits, bounded, for the
line that announces the registry's URL; ``stop()`` signals and waits, bounded.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
READY_PREFIX = "hareg registry listening on "
STOP_TIMEOUT = 30.0


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with unbuffered output and the
    checkout under test first on the path: the child runs this tree's code
    whatever state the virtualenv's (editable) install of it is in."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_command(command: Sequence[str], stderr_path: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """``command`` started with stdin closed, stdout piped, stderr to ``stderr_path``."""
    with open(stderr_path, "w") as err:
        return subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)  # end of stdout


@dataclass(kw_only=True)
class CommandRun:
    """One running command; its stdout is drained from the moment it exists."""

    what: str  # names the command in errors: "hareg serve"
    proc: subprocess.Popen[str]
    stderr_path: Path
    url: str = ""  # from the ready line
    stdout_lines: list[str] = field(default_factory=list)
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stdout_closed: bool = False

    def __post_init__(self) -> None:
        threading.Thread(target=_pump, args=(self.proc, self.lines), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no stderr: {exc})"

    def stdout(self) -> str:
        """What the child printed on stdout so far; once it has exited, all of it."""
        deadline = time.monotonic() + 30.0  # the reader thread reaches end of file
        while not self.stdout_closed:
            exited = self.proc.poll() is not None
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01) if exited else 0.0)
            except queue.Empty:
                if not exited or time.monotonic() >= deadline:
                    break
                continue
            if line is None:
                self.stdout_closed = True
            else:
                self.stdout_lines.append(line)
        return "\n".join(self.stdout_lines)

    def wait_until_ready(self, timeout: float) -> None:
        """Wait (bounded) for the ready line and take ``url`` from it; on
        failure kill the child and raise RuntimeError with its output."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise RuntimeError(
                    f"{self.what} not ready after {timeout}s; stdout {self.stdout_lines}; "
                    f"stderr:\n{self.stderr()[-6000:]}"
                ) from None
            if line is None:
                self.stdout_closed = True
                code = self.proc.wait(timeout=30)
                raise RuntimeError(
                    f"{self.what} exited with code {code} before it was ready; stdout {self.stdout_lines}; "
                    f"stderr:\n{self.stderr()[-6000:]}"
                )
            self.stdout_lines.append(line)
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                return

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit code of a child expected to exit by itself (bounded wait)."""
        return self._wait(timeout, "still running")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait (bounded) for the exit code; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self._wait(timeout, f"ignored {sig.name}")

    def _wait(self, timeout: float, failure: str) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(
                f"{self.what} (pid {self.pid}) {failure} for {timeout}s; stderr:\n{self.stderr()[-4000:]}"
            ) from None
