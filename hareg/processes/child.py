"""Child processes that never outlive hareg: the launcher and the lifecycle
that etcd, SeaweedFS, the cluster's replicas and haproxy share.

``with_pdeathsig(argv)`` wraps a command so the kernel SIGKILLs the child
when its parent dies, even by SIGKILL: a fresh interpreter sets
PR_SET_PDEATHSIG (the setting survives execve), checks that the parent is
still the one that started it, then becomes the program (same pid).

Not a preexec_fn: that forces a plain fork() in the parent, which runs the
pthread_atfork handlers of every library loaded there; gRPC's (grpc.aio is
loaded wherever EtcdKV is) intermittently aborted the child with SIGABRT
before it could exec.  Without preexec_fn, subprocess uses vfork/exec.

PR_SET_PDEATHSIG is a property of the *thread* that started the child: call
``spawn()``/``start()`` from a thread that lives as long as the child should
(the event loop's thread, never ``asyncio.to_thread``), which is why
``spawn()`` is synchronous.

:class:`ChildProcess` is the shared lifecycle: spawn with the output appended
to a log file, wait until a readiness probe succeeds (failing early, with the
log's tail, if the child exits), stop (a signal, a grace period, then
SIGKILL), kill, pause/resume.  A subclass supplies ``command()`` and, where it
has one, ``probe()``; the rest is optional.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

__all__ = ["ChildProcess", "Probe", "pid_alive", "with_pdeathsig"]

_PDEATHSIG_TRAMPOLINE = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("hareg: prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):
    sys.exit("hareg: the parent died before the child started")
os.execv(sys.argv[2], sys.argv[2:])
"""

_POLL_INTERVAL = 0.05
_PAUSE_LIMIT = 2.0  # how long pause() waits for every thread to stop
_FAILED_START_GRACE = 2.0  # a child that failed to start gets this long to exit cleanly

# probe(limit): one readiness check of at most ``limit`` seconds -> (ready?,
# what it saw: the detail of the error if time runs out).
Probe = Callable[[float], Awaitable[tuple[bool, str]]]


def with_pdeathsig(argv: Sequence[str]) -> list[str]:
    """``argv`` (its first item an executable path) wrapped so that the child
    is SIGKILLed when this process (more precisely: the calling thread) dies.
    Linux; elsewhere ``argv`` is returned unchanged."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_TRAMPOLINE, str(os.getpid()), *argv]


def _proc_state(stat_path: str) -> bytes | None:
    """The state letter of a /proc ``stat`` file; None if it cannot be read."""
    try:
        with open(stat_path, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The state follows the command name, which is in parentheses (and may hold any byte).
    fields = stat.rsplit(b")", 1)[-1].split()
    return fields[0] if fields else None


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
    state = _proc_state(f"/proc/{pid}/stat")
    return state not in (b"Z", b"X")  # None (no /proc): kill(0) said it exists


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is in state T (stopped) or gone (Linux /proc;
    True where /proc is missing)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return all(_proc_state(f"/proc/{pid}/task/{tid}/stat") in (None, b"T", b"t", b"Z", b"X") for tid in tids)


def locate(name: str) -> str | None:
    """The absolute path of an executable: ``name`` itself if it is a path
    (contains a separator) to one, else ``name`` looked up on PATH; None if
    there is none."""
    if os.sep in name:
        return os.path.abspath(name) if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


class ChildProcess:
    """One program run as a child of this process, its output appended to
    ``log_path``.  ``spawn()``/``start()`` may be called again once it exited
    (a restart).

    Subclasses set the class attributes below, implement ``command()`` and,
    if readiness means more than "still running", ``probe()``.
    """

    error: ClassVar[type[Exception]] = RuntimeError
    """Raised on misuse: spawning a running child, pausing a dead one."""
    start_error: ClassVar[type[Exception]] = RuntimeError
    """Raised when the child exits while starting or is not ready in time."""
    new_session: ClassVar[bool] = False
    """False: the child stays in our process group, so a terminal's Ctrl-C
    reaches it too.  True: only we get it, and stop our children in order."""
    startup_timeout: ClassVar[float] = 30.0
    """``start()``'s default deadline, in seconds."""
    stop_grace: ClassVar[float] = 10.0
    """``stop()``'s default time between the signal and SIGKILL, in seconds."""
    probe_timeout: ClassVar[float] = 1.0
    """The longest one ``probe()`` call may take, in seconds."""

    def __init__(self, label: str, log_path: Path, *, cwd: Path | None = None) -> None:
        self.label = label  # names the child in errors: "etcd member m1", "haproxy"
        self.log_path = log_path
        self.cwd = cwd
        self.started_at = 0.0  # time.monotonic() of the last spawn
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what a subclass supplies ------------------------------------------

    def command(self) -> list[str]:
        """The command line (its first item an executable path)."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment; None: this process's."""
        return None

    async def probe(self, limit: float) -> tuple[bool, str]:
        """One readiness check that takes at most ``limit`` seconds: (ready?,
        what it saw).  By default a child is ready once it runs."""
        return True, "running"

    def _after_exit(self) -> None:
        """Clean up after the child once it has exited and been reaped (called
        by every ``stop()``/``kill()`` of a started child, so idempotent)."""

    # -- state -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The pid of the live child (it may be paused); None before the first
        start and once it exited."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """The child exists and has not exited (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code of the last child (negative: the signal that ended it);
        None while it runs or before the first start."""
        return self._proc.returncode if self._proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the child's log."""
        try:
            with open(self.log_path, "rb") as f:
                tail = deque(f, maxlen=lines)
        except OSError as e:
            return f"(no log: {e})"
        return b"".join(tail).decode(errors="replace")

    # -- lifecycle ---------------------------------------------------------

    def spawn(self) -> int:
        """Start the child without waiting for it (from the event loop's
        thread: see the module doc); its pid."""
        if self.running:
            raise self.error(f"{self.label} is already running (pid {self.pid})")
        command = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- hareg: starting {' '.join(command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                with_pdeathsig(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.cwd,
                close_fds=True,
                start_new_session=self.new_session,
            )
        self.started_at = time.monotonic()
        return self._proc.pid

    async def start(self, startup_timeout: float | None = None) -> None:
        """``spawn()``, then ``wait_until_ready()``.  On failure (or
        cancellation) the child is stopped before the error propagates."""
        self.spawn()
        try:
            await self.wait_until_ready(startup_timeout)
        except BaseException:
            await self.stop(_FAILED_START_GRACE)
            raise

    async def wait_until_ready(
        self, startup_timeout: float | None = None, probe: Probe | None = None
    ) -> None:
        """Poll ``probe`` (default: ``self.probe``) until it reports ready.

        Raises ``start_error``, with the tail of the log, as soon as the child
        exits, or once ``startup_timeout`` seconds (default: the class's)
        have passed."""
        timeout = self.startup_timeout if startup_timeout is None else startup_timeout
        check = self.probe if probe is None else probe
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise self.start_error(
                    f"{self.label} exited with code {self.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            ok, seen = await check(min(self.probe_timeout, max(0.1, deadline - time.monotonic())))
            if ok:
                return
            if time.monotonic() >= deadline:
                raise self.start_error(
                    f"{self.label} not ready after {timeout:.1f}s ({seen}); "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    def send_signal(self, sig: signal.Signals) -> None:
        """``sig`` to the child if it runs (a no-op otherwise)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def wait(self, limit: float | None) -> int | None:
        """Wait (up to ``limit`` seconds; None: forever) for the child to exit;
        its exit code, or None if it still runs or never started."""
        proc = self._proc
        if proc is None:
            return None
        deadline = None if limit is None else time.monotonic() + limit
        while proc.poll() is None:  # polled: no SIGCHLD handler, usable from any loop
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(_POLL_INTERVAL)
        return proc.returncode

    async def stop(self, grace: float | None = None, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """``sig``, up to ``grace`` seconds (default: the class's) to exit,
        then SIGKILL; reaped either way.  The exit code (None if it was never
        started).  Stopping a stopped child does nothing."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.send_signal(sig)
            self.send_signal(signal.SIGCONT)  # a paused child cannot handle the signal
            if await self.wait(self.stop_grace if grace is None else grace) is None:
                return await self.kill()
        self._after_exit()
        return self._proc.returncode

    async def kill(self) -> int | None:
        """SIGKILL (a crash) and reap.  The exit code (None if never started)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.send_signal(signal.SIGKILL)
            await self.wait(None)
        self._after_exit()
        return self._proc.returncode

    def pause(self) -> None:
        """SIGSTOP: the child keeps its sockets but answers nothing (a hung node).

        Returns once every thread of the child is stopped (a signal takes
        effect only when a thread next enters the kernel: under load, a
        request sent right after kill(2) could otherwise still be answered)."""
        pid = self._signal_running(signal.SIGSTOP)
        deadline = time.monotonic() + _PAUSE_LIMIT
        while not _all_threads_stopped(pid) and time.monotonic() < deadline:
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        self._signal_running(signal.SIGCONT)

    def _signal_running(self, sig: signal.Signals) -> int:
        if self._proc is None or self._proc.poll() is not None:
            raise self.error(f"{self.label} is not running")
        self._proc.send_signal(sig)
        return self._proc.pid

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.label!r}, pid={self.pid}, {state})"
