"""A child process of the cluster supervisor that never outlives it.

``PR_SET_PDEATHSIG`` makes the kernel SIGKILL the child when the thread that
forked it dies, even when the supervisor itself is SIGKILLed.  That is a
property of the forking *thread*: children must be spawned from the event
loop's thread (never from ``asyncio.to_thread``), which is what ``spawn()``
being synchronous is for.

Children run in their own session, so a terminal's Ctrl-C reaches only the
supervisor, which then stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from hareg.child_process import with_pdeathsig

__all__ = ["ChildProcess", "log_tail", "pid_alive"]

_POLL = 0.05


def pid_alive(pid: int | None) -> bool:
    """``pid`` names a live process (not a zombie)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc: kill(0) said it exists
    # The state follows the command name, which is in parentheses.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            tail = deque(f, maxlen=lines)
    except OSError as exc:
        return f"(no log: {exc})"
    return b"".join(tail).decode(errors="replace")


class ChildProcess:
    """One command run as a child, its output appended to ``log_file``.

    ``spawn()`` may be called again after the child exited (a restart)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        log_file: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.log_file = log_file
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the live child; None before the first start and once it exited."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def last_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def spawn(self) -> int:
        """Start the child (from the event loop's thread: see the module doc); its pid."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"--- hareg cluster: starting {' '.join(self.command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                with_pdeathsig(self.command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                close_fds=True,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        return self._proc.pid

    def send_signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def wait(self, limit: float | None) -> int | None:
        """Wait (up to ``limit`` seconds; None: forever) for the child to exit; its code or None."""
        proc = self._proc
        if proc is None:
            return None
        deadline = None if limit is None else time.monotonic() + limit
        while proc.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(_POLL)
        return proc.returncode

    async def stop(self, grace: float = 10.0, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """``sig``, up to ``grace`` seconds to exit, then SIGKILL; reaped either way."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_signal(sig)
            self.send_signal(signal.SIGCONT)  # a paused child cannot handle the signal
            if await self.wait(grace) is None:
                await self.kill()
        return proc.returncode

    async def kill(self) -> int | None:
        """SIGKILL and reap."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await self.wait(None)
        return proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_file, lines)

    def __repr__(self) -> str:
        return f"ChildProcess({self.name!r}, pid={self.pid})"
