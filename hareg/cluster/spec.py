"""The local cluster's layout: names, ports, URLs and paths under ``--dir``.

Everything a cluster needs to come back the same after a restart of
``hareg cluster up`` on the same directory is kept in ``DIR/layout.json``
(mode 0600: it holds the generated secrets): etcd members must keep their peer
URLs (they are recorded in the members' data), SeaweedFS keeps its ports in
its own options file, and the shared ``httpSecret`` must not change under
uploads in flight.  Replica ports are kept too, so a replica comes back at the
URL it had; any port that is taken by then is chosen anew (except etcd's,
which cannot move: that is an error).

Files under DIR::

    cluster.json      what runs now (written by the supervisor, see supervisor.py)
    layout.json       this module's persisted layout
    supervisor.json   the supervisor's pid and desired state (read by status)
    hareg.yaml        the configuration every replica is started with (0600)
    auth/             copies of the files the auth section names (0600, see auth_files.py)
    pull-through/     copies of the files the pullThrough entries name (0600, see mirror_files.py)
    haproxy.cfg       the load balancer's configuration
    etcd/NAME/        each etcd member's data
    seaweedfs/        the object store's data
    blobs/            shared blob directory (``--storage filesystem`` only)
    replicas/NAME/    each replica's data dir
    logs/             one log file per process
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hareg.processes.ports import free_ports

__all__ = [
    "DEFAULT_ETCD_MEMBERS",
    "DEFAULT_PORT",
    "DEFAULT_REPLICAS",
    "HOST",
    "STORAGE_KINDS",
    "ClusterError",
    "ClusterLayout",
    "ClusterPaths",
    "EtcdMember",
    "ReplicaSlot",
    "StorageLayout",
    "load_or_create_layout",
    "port_free",
    "replica_name",
    "running_supervisor",
    "write_atomic",
    "write_json_atomic",
]

HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 5000
DEFAULT_REPLICAS: Final = 3
DEFAULT_ETCD_MEMBERS: Final = 3
STORAGE_KINDS: Final = ("seaweedfs", "filesystem")
LAYOUT_VERSION: Final = 1
# SeaweedFS listens on each HTTP port + 10000 for gRPC (hareg.processes.seaweedfs.GRPC_PORT_OFFSET).
_GRPC_OFFSET: Final = 10000
_PORT_ATTEMPTS: Final = 200


class ClusterError(Exception):
    """A clear, user-facing reason the local cluster cannot be started or read."""


def replica_name(index: int) -> str:
    """``replica-1``, ``replica-2``, ... (1-based)."""
    return f"replica-{index}"


def port_free(port: int, host: str = HOST) -> bool:
    """Nothing listens on ``host:port`` right now (a bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def running_supervisor(root: str | os.PathLike[str]) -> int | None:
    """The pid of a ``hareg cluster up`` that runs the cluster in ``root`` now, if any."""
    path = ClusterPaths(Path(root).resolve()).supervisor_json
    try:
        pid = json.loads(path.read_text()).get("pid")
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if int(pid) == os.getpid() or b"cluster" not in cmdline or b"up" not in cmdline:
        return None  # gone, or the pid now belongs to another program
    return int(pid)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new
    one, never a part: a temporary file in the same directory, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o644) -> None:
    """``data`` as JSON (indented, a final newline), written atomically."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), mode=mode)


@dataclass(frozen=True)
class ClusterPaths:
    """Where everything lives under the cluster directory."""

    root: Path

    @property
    def cluster_json(self) -> Path:
        return self.root / "cluster.json"

    @property
    def layout_json(self) -> Path:
        return self.root / "layout.json"

    @property
    def supervisor_json(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def replica_config(self) -> Path:
        return self.root / "hareg.yaml"

    @property
    def auth_dir(self) -> Path:
        return self.root / "auth"

    @property
    def mirror_dir(self) -> Path:
        return self.root / "pull-through"

    @property
    def haproxy_cfg(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def storage_dir(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    def etcd_dir(self, name: str) -> Path:
        return self.root / "etcd" / name

    def replica_dir(self, name: str) -> Path:
        return self.root / "replicas" / name

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass(frozen=True)
class EtcdMember:
    name: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"


@dataclass(frozen=True)
class ReplicaSlot:
    name: str
    port: int

    @property
    def listen(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass(frozen=True)
class StorageLayout:
    """The object store: SeaweedFS (``kind="seaweedfs"``) or, for machines
    without it, one directory shared by every replica (``kind="filesystem"``)."""

    kind: str
    bucket: str = "hareg"
    access_key: str = "hareg"
    secret_key: str = field(default="", repr=False)
    s3_port: int = 0
    master_port: int = 0
    volume_port: int = 0
    filer_port: int = 0
    admin_port: int = 0

    @property
    def http_ports(self) -> tuple[int, ...]:
        return (self.s3_port, self.master_port, self.volume_port, self.filer_port, self.admin_port)

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"


class _Ports:
    """Picks free 127.0.0.1 ports, never one already handed out."""

    def __init__(self, taken: Iterable[int] = ()) -> None:
        self.taken: set[int] = set(taken)

    def pick(self, *, grpc_offset: bool = False) -> int:
        """A free port; with ``grpc_offset``, one whose ``+ 10000`` twin is free too."""
        for _ in range(_PORT_ATTEMPTS):
            (port,) = free_ports(1)
            if grpc_offset and port + _GRPC_OFFSET > 65535:
                port -= _GRPC_OFFSET  # ephemeral ports are high: look 10000 lower
            twin = port + _GRPC_OFFSET
            if port in self.taken or (grpc_offset and (twin in self.taken or not port_free(twin))):
                continue
            if not port_free(port):
                continue
            self.taken.add(port)
            if grpc_offset:
                self.taken.add(twin)
            return port
        raise ClusterError("could not find a free TCP port on 127.0.0.1")

    def keep(self, port: int) -> int:
        self.taken.add(port)
        return port


@dataclass
class ClusterLayout:
    """The cluster's names, ports and secrets.  Replica ports are added as the
    cluster scales up (``slot()``); the rest is fixed once created."""

    paths: ClusterPaths
    lb_port: int
    etcd: tuple[EtcdMember, ...]
    etcd_token: str
    storage: StorageLayout
    http_secret: str = field(repr=False)
    replica_ports: dict[str, int] = field(default_factory=dict)

    @property
    def registry_url(self) -> str:
        return f"http://{HOST}:{self.lb_port}"

    @property
    def etcd_endpoints(self) -> list[str]:
        return [m.client_url for m in self.etcd]

    @property
    def initial_cluster(self) -> dict[str, str]:
        return {m.name: m.peer_url for m in self.etcd}

    def all_ports(self) -> set[int]:
        ports = {self.lb_port, *self.replica_ports.values()}
        for m in self.etcd:
            ports |= {m.client_port, m.peer_port}
        s = self.storage
        if s.kind == "seaweedfs":
            for p in s.http_ports:
                ports |= {p, p + _GRPC_OFFSET}
        return ports

    def slot(self, index: int) -> ReplicaSlot:
        """The ``index``-th replica (1-based); a new one gets a free port, saved at once."""
        name = replica_name(index)
        port = self.replica_ports.get(name)
        if port is None:
            port = _Ports(self.all_ports()).pick()
            self.replica_ports[name] = port
            self.save()
        return ReplicaSlot(name, port)

    def to_dict(self) -> dict[str, Any]:
        s = self.storage
        return {
            "version": LAYOUT_VERSION,
            "lb_port": self.lb_port,
            "etcd_token": self.etcd_token,
            "etcd": [
                {"name": m.name, "client_port": m.client_port, "peer_port": m.peer_port} for m in self.etcd
            ],
            "storage": {
                "kind": s.kind,
                "bucket": s.bucket,
                "access_key": s.access_key,
                "secret_key": s.secret_key,
                "s3_port": s.s3_port,
                "master_port": s.master_port,
                "volume_port": s.volume_port,
                "filer_port": s.filer_port,
                "admin_port": s.admin_port,
            },
            "http_secret": self.http_secret,
            "replica_ports": dict(self.replica_ports),
        }

    def save(self) -> None:
        write_json_atomic(self.paths.layout_json, self.to_dict(), mode=0o600)

    @classmethod
    def from_dict(cls, paths: ClusterPaths, data: Mapping[str, Any]) -> ClusterLayout:
        try:
            if data.get("version") != LAYOUT_VERSION:
                raise ClusterError(
                    f"{paths.layout_json} has layout version {data.get('version')!r}; "
                    f"this hareg reads version {LAYOUT_VERSION} (use a new --dir)"
                )
            st = data["storage"]
            return cls(
                paths=paths,
                lb_port=int(data["lb_port"]),
                etcd=tuple(
                    EtcdMember(str(m["name"]), int(m["client_port"]), int(m["peer_port"]))
                    for m in data["etcd"]
                ),
                etcd_token=str(data["etcd_token"]),
                storage=StorageLayout(
                    kind=str(st["kind"]),
                    bucket=str(st["bucket"]),
                    access_key=str(st["access_key"]),
                    secret_key=str(st["secret_key"]),
                    s3_port=int(st["s3_port"]),
                    master_port=int(st["master_port"]),
                    volume_port=int(st["volume_port"]),
                    filer_port=int(st["filer_port"]),
                    admin_port=int(st["admin_port"]),
                ),
                http_secret=str(data["http_secret"]),
                replica_ports={str(k): int(v) for k, v in dict(data.get("replica_ports", {})).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClusterError(
                f"{paths.layout_json} is damaged ({type(exc).__name__}: {exc}); use a new --dir"
            ) from None


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ClusterError(f"{what} {port} is not a TCP port; expected 1-65535")


def load_or_create_layout(
    root: str | os.PathLike[str],
    *,
    etcd_members: int = DEFAULT_ETCD_MEMBERS,
    port: int | None = None,
    storage: str = "seaweedfs",
) -> ClusterLayout:
    """The layout of the cluster in ``root``: read from ``root/layout.json``
    when the directory already holds a cluster (then ``etcd_members`` and
    ``storage`` must match it), made and saved otherwise.  ``port`` (the
    load balancer's) may change between runs; None keeps the saved one, or
    takes 5000 (a free port if 5000 is taken) for a new cluster."""
    if etcd_members < 1 or etcd_members % 2 == 0:
        raise ClusterError(
            f"--etcd-members {etcd_members} is not allowed; expected an odd number: 1, 3, 5 or 7"
        )
    if etcd_members > 7:
        raise ClusterError(f"--etcd-members {etcd_members} is too many; expected at most 7")
    if storage not in STORAGE_KINDS:
        raise ClusterError(
            f"--storage {storage!r} is not allowed; expected one of {', '.join(STORAGE_KINDS)}"
        )
    if port is not None:
        _check_port(port, "--port")
    paths = ClusterPaths(Path(root).resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o700)
    paths.logs.mkdir(exist_ok=True)

    if paths.layout_json.exists():
        try:
            data = json.loads(paths.layout_json.read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {paths.layout_json}: {exc}; use a new --dir") from None
        layout = ClusterLayout.from_dict(paths, data)
        if len(layout.etcd) != etcd_members:
            raise ClusterError(
                f"{paths.root} holds a cluster with {len(layout.etcd)} etcd members; "
                f"--etcd-members {etcd_members} cannot change that (use a new --dir)"
            )
        if layout.storage.kind != storage:
            raise ClusterError(
                f"{paths.root} holds a cluster with {layout.storage.kind} storage; "
                f"--storage {storage} cannot change that (use a new --dir)"
            )
        for m in layout.etcd:
            for p in (m.client_port, m.peer_port):
                if not port_free(p):
                    raise ClusterError(
                        f"port {p} of etcd member {m.name} is in use; is a cluster already running in "
                        f"{paths.root}? etcd members keep their ports, so it must be free"
                    )
        ports = _Ports(layout.all_ports() - {layout.lb_port, *layout.replica_ports.values()})
        if port is not None:
            layout.lb_port = port
        elif not port_free(layout.lb_port):
            layout.lb_port = ports.pick()
        ports.keep(layout.lb_port)
        for name, p in sorted(layout.replica_ports.items()):
            layout.replica_ports[name] = (
                ports.keep(p) if port_free(p) and p not in ports.taken else ports.pick()
            )
        layout.save()
        return layout

    ports = _Ports()
    if port is None:
        port = DEFAULT_PORT if port_free(DEFAULT_PORT) else ports.pick()
    ports.keep(port)
    members = tuple(EtcdMember(f"m{i}", ports.pick(), ports.pick()) for i in range(1, etcd_members + 1))
    if storage == "seaweedfs":
        store = StorageLayout(
            kind="seaweedfs",
            secret_key=secrets.token_hex(20),
            s3_port=ports.pick(grpc_offset=True),
            master_port=ports.pick(grpc_offset=True),
            volume_port=ports.pick(grpc_offset=True),
            filer_port=ports.pick(grpc_offset=True),
            admin_port=ports.pick(grpc_offset=True),
        )
    else:
        store = StorageLayout(kind="filesystem")
    layout = ClusterLayout(
        paths=paths,
        lb_port=port,
        etcd=members,
        etcd_token=f"hareg-{secrets.token_hex(8)}",
        storage=store,
        http_secret=secrets.token_hex(32),
    )
    layout.save()
    return layout
