"""A real etcd child process: the embedded default of ``hareg serve`` (no
endpoints configured), the members of the local cluster, and the tests.

The child is bound to 127.0.0.1 only, logs to a file, and never outlives its
parent: ``PR_SET_PDEATHSIG`` makes the kernel SIGKILL it when the thread that
started it dies, even if the parent itself is SIGKILLed.  Call ``start()``
from a thread that lives as long as etcd should (the event loop's thread, not
a short-lived worker thread).  Stop, kill, pause and resume come from
:class:`hareg.processes.child.ChildProcess`.

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
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from hareg.processes.child import ChildProcess, locate
from hareg.processes.ports import HOST, free_ports

__all__ = [
    "EtcdError",
    "EtcdNotFound",
    "EtcdProcess",
    "EtcdStartError",
    "find_etcd",
]


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
    found = locate(name)
    if found is None:
        raise EtcdNotFound(name)
    return found


class EtcdProcess(ChildProcess):
    """One etcd member run as a child process.

    ``initial_cluster`` maps member names to peer URLs; by default the member
    forms a single-member cluster of its own.  ``start()`` returns once the
    member answers ``/health`` with ``{"health": "true"}``.  Starting again on
    the same data dir (after ``stop()`` or ``kill()``) restarts the member with
    its data.
    """

    error = EtcdError
    start_error = EtcdStartError

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
        super().__init__(
            f"etcd member {name}", Path(log_file) if log_file is not None else self.data_dir / "etcd.log"
        )

    # -- addresses ---------------------------------------------------------

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

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
            # A member cut off from its peers campaigns in vain; without
            # pre-vote each campaign raises its term, and when it comes back
            # that term deposes the healthy leader: a second election, and
            # writes without a leader again (the availability benchmark's
            # etcd_member_partition window showed it at every heal).
            "--pre-vote=true",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *self.extra_args,
        ]

    # -- lifecycle ---------------------------------------------------------

    async def start(self, startup_timeout: float | None = None, *, wait_healthy: bool = True) -> None:
        """Launch etcd and (by default) wait until it reports healthy.

        Raises EtcdStartError, with the tail of etcd's log, if it exits or is
        not healthy within ``startup_timeout`` seconds (it is then stopped)."""
        if wait_healthy:
            await super().start(startup_timeout)
        else:
            self.spawn()

    def spawn(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # etcd warns about (and 3.5+ refuses) looser modes
        return super().spawn()

    async def probe(self, limit: float) -> tuple[bool, str]:
        """``/health`` answers ``{"health": "true"}``, a NOSPACE alarm aside: a
        member at its space quota serves reads, deletes and the maintenance
        that frees space, so a restart must not wait for the alarm to go."""
        return await asyncio.to_thread(self._health_once, limit)

    def _health_once(self, timeout: float) -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(f"{self.client_url}/health?exclude=NOSPACE", timeout=timeout) as resp:
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
