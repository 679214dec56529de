"""A real etcd child process: the embedded default of ``hareg serve`` (no
endpoints configured), the members of the local cluster, and the tests.

The child is bound to 127.0.0.1 only, logs to a file, and never outlives its
parent: ``PR_SET_PDEATHSIG`` makes the kernel SIGKILL it when the thread that
started it dies, even if the parent itself is SIGKILLed.  Call ``start()``
from a thread that lives as long as etcd should (the event loop's thread, not
a short-lived worker thread).

Several members form one cluster when each is given the same
``initial_cluster`` mapping and they are started concurrently (a member only
reports healthy once the cluster has a leader)::

    ports = free_ports(6)
    cluster = {f"m{i}": f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)}
    members = [
        EtcdProcess(f"m{i}", root / f"m{i}", client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                    initial_cluster=cluster)
        for i in range(3)
    ]
    await asyncio.gather(*(m.start() for m in members))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from hareg.child_process import with_pdeathsig

__all__ = [
    "EtcdError",
    "EtcdNotFound",
    "EtcdProcess",
    "EtcdStartError",
    "find_etcd",
    "free_port",
    "free_ports",
]

HOST = "127.0.0.1"
_POLL_INTERVAL = 0.05


class EtcdError(RuntimeError):
    """Base class of the errors raised while managing an etcd process."""


class EtcdNotFound(EtcdError):
    """The etcd binary could not be found."""

    def __init__(self, binary: str) -> None:
        super().__init__(
            f"etcd binary {binary!r} not found on PATH. hareg runs an embedded etcd when no etcd "
            "endpoints are configured: install it (Debian/Ubuntu: `apt-get install etcd-server`) or "
            "pass its location with --etcd-binary PATH (or configure external etcd endpoints)."
        )
        self.binary = binary


class EtcdStartError(EtcdError):
    """etcd exited or did not become healthy in time."""


def find_etcd(binary: str | os.PathLike[str] | None = None) -> str:
    """The absolute path of the etcd binary: ``binary`` if given (a path or a
    name looked up on PATH), else ``etcd`` on PATH.  Raises EtcdNotFound."""
    name = os.fspath(binary) if binary is not None else "etcd"
    if os.sep in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return os.path.abspath(name)
        raise EtcdNotFound(name)
    found = shutil.which(name)
    if found is None:
        raise EtcdNotFound(name)
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 right now.

    All sockets are held open until every port is chosen, so the ports are
    distinct; another process may still take one before it is used."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One TCP port that is free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is in state T (stopped) or gone (Linux /proc;
    True where /proc is missing)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"T", b"t", b"Z", b"X"):
            return False
    return True


class EtcdProcess:
    """One etcd member run as a child process.

    ``initial_cluster`` maps member names to peer URLs; by default the member
    forms a single-member cluster of its own.  ``start()`` returns once the
    member answers ``/health`` with ``{"health": "true"}``.  Starting again on
    the same data dir (after ``stop()`` or ``kill()``) restarts the member with
    its data.
    """

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike[str],
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: Mapping[str, str] | None = None,
        cluster_token: str = "hareg-etcd",
        binary: str | os.PathLike[str] | None = None,
        auto_compaction_retention: str = "10m",
        auto_compaction_mode: str = "periodic",
        progress_notify_interval: str = "100ms",
        max_txn_ops: int = 4096,
        max_request_bytes: int = 8 * 1024 * 1024,
        quota_backend_bytes: int = 0,
        extra_args: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.binary = find_etcd(binary)
        if client_port is None or peer_port is None:
            ports = free_ports(2)
            client_port = ports[0] if client_port is None else client_port
            peer_port = ports[1] if peer_port is None else peer_port
        self.client_port = client_port
        self.peer_port = peer_port
        self.initial_cluster = dict(initial_cluster) if initial_cluster else {name: self.peer_url}
        if self.initial_cluster.get(name) != self.peer_url:
            raise ValueError(f"initial_cluster must map {name!r} to this member's peer URL {self.peer_url}")
        self.cluster_token = cluster_token
        self.auto_compaction_retention = auto_compaction_retention
        self.auto_compaction_mode = auto_compaction_mode
        self.progress_notify_interval = progress_notify_interval
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.quota_backend_bytes = quota_backend_bytes
        self.extra_args = list(extra_args)
        self.log_path = Path(log_file) if log_file is not None else self.data_dir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener (the gRPC target)."""
        return f"{HOST}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The child exists and has not exited (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def command(self) -> list[str]:
        """The etcd command line."""
        cluster = ",".join(f"{n}={url}" for n, url in self.initial_cluster.items())
        return [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            cluster,
            "--initial-cluster-token",
            self.cluster_token,
            "--initial-cluster-state",
            "new",
            "--max-txn-ops",
            str(self.max_txn_ops),
            "--max-request-bytes",
            str(self.max_request_bytes),
            "--quota-backend-bytes",
            str(self.quota_backend_bytes),
            "--auto-compaction-mode",
            self.auto_compaction_mode,
            "--auto-compaction-retention",
            self.auto_compaction_retention,
            "--experimental-watch-progress-notify-interval",
            self.progress_notify_interval,
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *self.extra_args,
        ]

    # -- lifecycle ---------------------------------------------------------

    async def start(self, *, startup_timeout: float = 30.0, wait_healthy: bool = True) -> None:
        """Launch etcd and (by default) wait until it reports healthy.

        Raises EtcdStartError, with the tail of etcd's log, if it exits or is
        not healthy within ``startup_timeout`` seconds (it is then stopped)."""
        if self.running:
            raise EtcdError(f"etcd member {self.name} is already running (pid {self.pid})")
        self._spawn()
        if wait_healthy:
            try:
                await self.wait_healthy(startup_timeout=startup_timeout)
            except BaseException:
                await self.stop(grace=2.0)
                raise

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # etcd warns about (and 3.5+ refuses) looser modes
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- hareg: starting {' '.join(self.command())}\n".encode())
            log.flush()
            # start_new_session=False: etcd stays in our process group, so a
            # terminal's Ctrl-C reaches it too; PR_SET_PDEATHSIG covers SIGKILL.
            self._proc = subprocess.Popen(
                with_pdeathsig(self.command()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=False,
                close_fds=True,
            )

    async def wait_healthy(self, *, startup_timeout: float = 30.0) -> None:
        """Poll ``/health`` until etcd reports ``{"health": "true"}``."""
        deadline = time.monotonic() + startup_timeout
        last = "no answer yet"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise EtcdStartError(
                    f"etcd member {self.name} exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            ok, last = await asyncio.to_thread(
                self._health_once, min(1.0, max(0.05, deadline - time.monotonic()))
            )
            if ok:
                return
            if time.monotonic() >= deadline:
                raise EtcdStartError(
                    f"etcd member {self.name} not healthy after {startup_timeout:.1f}s ({last}); "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    def _health_once(self, timeout: float) -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:  # 503 carries a body too
            body = e.read()
        except (OSError, ValueError) as e:
            return False, str(e)
        try:
            health = json.loads(body).get("health")
        except (ValueError, AttributeError):
            return False, f"unexpected /health answer {body[:200]!r}"
        return health == "true", f"/health: {body.decode(errors='replace').strip()}"

    async def stop(self, *, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL.  Returns the
        exit code (None if it was never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a paused etcd cannot handle SIGTERM
            if await self._wait_exit(grace) is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await self._wait_exit(None)
        return proc.returncode

    async def kill(self) -> int | None:
        """SIGKILL (a crash) and reap.  Returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await self._wait_exit(None)
        return proc.returncode

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its sockets but answers nothing (a hung node).

        Returns once every thread of etcd is stopped (a signal takes effect
        only when a thread next enters the kernel: under load, a request sent
        right after kill(2) could otherwise still be answered)."""
        self._signal(signal.SIGSTOP)
        assert self._proc is not None
        deadline = time.monotonic() + 2.0
        while not _all_threads_stopped(self._proc.pid) and time.monotonic() < deadline:
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise EtcdError(f"etcd member {self.name} is not running")
        assert self._proc is not None
        self._proc.send_signal(sig)

    async def _wait_exit(self, limit: float | None) -> int | None:
        proc = self._proc
        assert proc is not None
        deadline = None if limit is None else time.monotonic() + limit
        while proc.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(_POLL_INTERVAL)
        return proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of etcd's log."""
        try:
            with open(self.log_path, "rb") as f:
                tail = deque(f, maxlen=lines)
        except OSError as e:
            return f"(no log: {e})"
        return b"".join(tail).decode(errors="replace")

    async def __aenter__(self) -> EtcdProcess:
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
        return f"EtcdProcess(name={self.name!r}, client={self.client_url}, pid={self.pid}, {state})"
