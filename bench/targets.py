"""The registries a benchmark runs against, started and stopped here, and what
their processes cost.

Kinds of target (``parse_target``):

- ``hareg``: ``hareg serve`` on its embedded default (a private etcd child,
  filesystem blobs) in a temporary data dir;
- ``hareg-cluster``: ``hareg cluster up`` (etcd members, object store, N
  replicas, haproxy) in a temporary dir, read back from its ``cluster.json``;
- ``distribution``: CNCF distribution (Debian's ``docker-registry``) with
  filesystem storage in a temporary dir;
- ``distribution-cluster``: the high-availability setup a platform team would
  build from distribution instead of hareg: two ``docker-registry`` processes
  with the ``s3`` storage driver on one SeaweedFS bucket (started as the
  cluster starts it, :class:`hareg.processes.seaweedfs.SeaweedFSProcess`),
  the same ``http.secret``, blob GETs redirected to presigned URLs (the
  driver's default), behind haproxy (round robin);
- ``ceiling``: :mod:`bench.ceiling`, the smallest aiohttp + uvloop server
  answering the read routes with fixed bodies (the reference a Python replica
  is measured against; it serves the blobs the benchmark stages in its
  ``details["blobs_dir"]``);
- a URL (``http://host:port``): a registry someone else runs; no process figures.

With :class:`~bench.users.BenchUsers` (``--auth``), ``hareg`` gets their
``auth`` section (token auth) and distribution their htpasswd file (Basic);
``details["auth"]`` says which (``token`` or ``basic``).

Every process is bound to 127.0.0.1 on a free port, waited for with a deadline
(a ready line or a ``/v2/`` poll, never a sleep), stopped with SIGTERM and, past
a bounded wait, SIGKILL, together with any descendant it left behind.

A :class:`RunningTarget` names its processes by *role* (``hareg`` and its
``etcd``; ``replica``, ``etcd``, ``storage``, ``lb`` and ``supervisor`` for the
cluster; ``registry`` for distribution; ``registry``, ``storage`` and ``lb``
for the distribution cluster; ``ceiling`` for the ceiling); :class:`ResourceMeter` measures, per
role and per benchmark phase, CPU seconds (user + system, from /proc via
psutil) and peak RSS (the kernel's ``VmHWM``, reset at the start of a phase,
and a sampled sum over the role's processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.ceiling import READY_PREFIX as CEILING_READY_PREFIX
from bench.storage_raw import S3Endpoint
from bench.users import BenchUsers
from hareg.cluster.haproxy import HaproxyError, HaproxyProcess
from hareg.processes.seaweedfs import SeaweedFSError, SeaweedFSProcess

PROJECT_ROOT = Path(__file__).resolve().parents[1]
READY_PREFIX = "hareg registry listening on "
DISTRIBUTION_BINARY = "docker-registry"
KINDS = ("hareg", "hareg-cluster", "distribution", "distribution-cluster", "ceiling")
AUTH_KINDS = ("hareg", "distribution")  # the kinds --auth can start
MB = 1_000_000


class TargetError(RuntimeError):
    """A target could not be started (with the reason and the end of its log)."""


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # one of KINDS, or "url"
    name: str
    url: str = ""


def parse_target(text: str) -> TargetSpec:
    if text in KINDS:
        return TargetSpec(kind=text, name=text)
    if text.startswith(("http://", "https://")):
        return TargetSpec(kind="url", name=text, url=text.rstrip("/"))
    raise ValueError(f"target {text!r}: expected one of {', '.join(KINDS)} or an http(s):// URL")


def distribution_available() -> bool:
    return shutil.which(DISTRIBUTION_BINARY) is not None


def cluster_available() -> bool:
    """Whether this hareg has the ``cluster up`` command."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "hareg", "cluster", "up", "--help"],
            cwd=PROJECT_ROOT,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "--replicas" in out.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _child_env() -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as exc:
        return f"(no log: {exc})"


# -- processes by role ------------------------------------------------------

RoleMap = dict[str, list[psutil.Process]]


@dataclass
class _ProcessCache:
    """psutil.Process objects by pid (their cpu_times stay comparable)."""

    procs: dict[int, psutil.Process] = field(default_factory=dict)

    def get(self, pid: int) -> psutil.Process | None:
        proc = self.procs.get(pid)
        if proc is not None and proc.is_running():
            return proc
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return None
        self.procs[pid] = proc
        return proc

    def tree(self, pid: int) -> list[psutil.Process]:
        """``pid`` and its live descendants."""
        root = self.get(pid)
        if root is None:
            return []
        found = [root]
        with contextlib.suppress(psutil.Error):
            for child in root.children(recursive=True):
                proc = self.get(child.pid)
                if proc is not None:
                    found.append(proc)
        return found


@dataclass
class RunningTarget:
    """A started (or external) registry: its URL, and how to find its processes."""

    spec: TargetSpec
    url: str
    details: dict[str, Any]
    _roles: Callable[[], RoleMap]
    _stop: Callable[[], object]
    stopped: bool = False
    s3: S3Endpoint | None = None  # its object store, for storage_raw (never in the JSON)

    @property
    def name(self) -> str:
        return self.spec.name

    def roles(self) -> RoleMap:
        return self._roles()

    def pids(self) -> dict[str, list[int]]:
        return {role: [p.pid for p in procs] for role, procs in self.roles().items()}

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._stop()


def _terminate(proc: subprocess.Popen[Any], timeout: float) -> int | None:
    """SIGTERM ``proc``, wait up to ``timeout``; SIGKILL it and whatever it left behind."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait(timeout=10)
    # Only processes this child started: kill by pid, never by name.
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
    psutil.wait_procs(descendants, timeout=10)
    return code


def _wait_ready_line(
    proc: subprocess.Popen[str], log: Path, timeout: float, what: str, prefix: str = READY_PREFIX
) -> str:
    """Read ``proc``'s stdout (in a thread) until the ready line; the URL on it."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True, name=f"{what}-stdout").start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TargetError(
                f"{what} not ready after {timeout:.0f}s; stdout {seen[-5:]}; log:\n{_tail(log)}"
            )
        try:
            line = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        if line is None:
            code = proc.wait(timeout=10)
            raise TargetError(f"{what} exited with {code} before it was ready; log:\n{_tail(log)}")
        seen.append(line)
        if line.startswith(prefix):
            return line[len(prefix) :].strip().rstrip("/")


def _start_ready(
    args: list[str],
    log: Path,
    timeout: float,
    what: str,
    stop_timeout: float,
    module: str = "hareg",
    prefix: str = READY_PREFIX,
) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m MODULE ARGS`` (stderr to ``log``) and wait for its ready line;
    the process and the URL it serves.  On failure it is stopped (``stop_timeout``)."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=PROJECT_ROOT,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        return proc, _wait_ready_line(proc, log, timeout, what, prefix)
    except BaseException:
        _terminate(proc, stop_timeout)
        raise


def _poll_v2(
    url: str, exited: Callable[[], int | None], log: Path, timeout: float, what: str, *, auth: bool = False
) -> None:
    """Until ``/v2/`` answers 200 (with ``auth``: 401, the challenge); ``exited()``
    is the process's exit code once it has exited (``Popen.poll``)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        code = exited()
        if code is not None:
            raise TargetError(f"{what} exited with {code}; log:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if auth and exc.code == 401:
                return
            last = str(exc)
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)  # a readiness poll with a deadline, not a fixed wait
    raise TargetError(f"{what} not answering {url}/v2/ after {timeout:.0f}s ({last}); log:\n{_tail(log)}")


def _start_hareg(spec: TargetSpec, workdir: Path, timeout: float, users: BenchUsers | None) -> RunningTarget:
    data_dir = workdir / "data"
    log = workdir / "hareg.log"
    listen = f"127.0.0.1:{free_port()}"
    args = ["serve", "--listen", listen, "--data-dir", str(data_dir)]
    if users is not None:
        config = workdir / "hareg.yaml"
        config.write_text(yaml.safe_dump({"auth": users.hareg_auth()}))
        args += ["--config", str(config)]
    proc, url = _start_ready(args, log, timeout, "hareg serve", 10)
    cache = _ProcessCache()

    def roles() -> RoleMap:
        tree = cache.tree(proc.pid)
        etcd_roots = [p for p in tree[1:] if _name(p) == "etcd"]
        etcd: list[psutil.Process] = []
        for root in etcd_roots:
            etcd.extend(cache.tree(root.pid))
        etcd_pids = {p.pid for p in etcd}
        return {"hareg": [p for p in tree if p.pid not in etcd_pids], "etcd": etcd}

    return RunningTarget(
        spec=spec,
        url=url,
        details={
            "kind": "hareg",
            "storage": "filesystem",
            "etcd": "embedded",
            "log": str(log),
            "auth": "token" if users is not None else "none",
        },
        _roles=roles,
        _stop=lambda: _terminate(proc, 30),
    )


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:
        return ""


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
{storage}  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
"""
DISTRIBUTION_FILESYSTEM = "  filesystem:\n    rootdirectory: {root}\n"
# The s3 driver on the cluster's SeaweedFS.  2.8.2 has no ``forcepathstyle``
# (it ignores the key; later versions read it): a ``regionendpoint`` already
# makes it use path-style URLs.  Redirects (presigned GETs) are its default.
DISTRIBUTION_S3 = """\
  s3:
    region: {region}
    regionendpoint: {endpoint}
    bucket: {bucket}
    accesskey: {access_key}
    secretkey: {secret_key}
    forcepathstyle: true
    secure: false
    v4auth: true
"""
DISTRIBUTION_REPLICAS = 2


def _distribution_version() -> str:
    try:
        out = subprocess.run([DISTRIBUTION_BINARY, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or out.stderr.strip() or "unknown"


def _distribution_binary() -> str:
    binary = shutil.which(DISTRIBUTION_BINARY)
    if binary is None:
        raise TargetError(f"{DISTRIBUTION_BINARY} not found (apt-get install docker-registry)")
    return binary


def _run_distribution(
    binary: str, config: Path, log: Path, timeout: float, what: str, *, auth: bool = False
) -> subprocess.Popen[bytes]:
    """``docker-registry serve CONFIG``, once its ``/v2/`` answers; stopped on failure."""
    # 2.8.2 crashes at start when AWS_CA_BUNDLE is set (even for plain-HTTP endpoints).
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    port = yaml.safe_load(config.read_text())["http"]["addr"].rsplit(":", 1)[1]
    try:
        _poll_v2(f"http://127.0.0.1:{port}", proc.poll, log, timeout, what, auth=auth)
    except BaseException:
        _terminate(proc, 10)
        raise
    return proc


def _start_distribution(
    spec: TargetSpec, workdir: Path, timeout: float, users: BenchUsers | None
) -> RunningTarget:
    binary = _distribution_binary()
    port = free_port()
    config = workdir / "config.yml"
    storage = DISTRIBUTION_FILESYSTEM.format(root=workdir / "storage")
    text = DISTRIBUTION_CONFIG.format(storage=storage, port=port)
    config.write_text(text + (users.distribution_auth() if users is not None else ""))
    log = workdir / "distribution.log"
    proc = _run_distribution(binary, config, log, timeout, "distribution", auth=users is not None)
    cache = _ProcessCache()
    return RunningTarget(
        spec=spec,
        url=f"http://127.0.0.1:{port}",
        details={
            "kind": "distribution",
            "storage": "filesystem",
            "version": _distribution_version(),
            "auth": "basic" if users is not None else "none",
        },
        _roles=lambda: {"registry": cache.tree(proc.pid)},
        _stop=lambda: _terminate(proc, 30),
    )


def distribution_haproxy_config(bind: str, servers: list[str]) -> str:
    """haproxy in front of the distribution registries: round robin, a
    ``/v2/`` health check, the timeouts of hareg's cluster
    (:func:`hareg.cluster.haproxy.render_config`), a request whose connection
    failed sent to the other registry."""
    lines = [
        "global",
        "    maxconn 4096",
        "    hard-stop-after 10s",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 10m",
        "    timeout server 10m",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 60s",
        "    timeout check 2s",
        "    retries 3",
        "    option redispatch 1",
        "frontend registry",
        f"    bind {bind}",
        "    default_backend registries",
        "backend registries",
        "    balance roundrobin",
        "    option httpchk GET /v2/",
        "    http-check expect status 200",
        "    default-server check inter 1s fastinter 500ms rise 1 fall 2",
    ]
    lines += [f"    server registry{i} {address}" for i, address in enumerate(servers, 1)]
    return "\n".join(lines) + "\n"


def _run_child(coro: Coroutine[Any, Any, object]) -> None:
    """A :class:`~hareg.processes.child.ChildProcess` coroutine on a loop of its
    own, on this thread (the children's PR_SET_PDEATHSIG belongs to it)."""
    asyncio.run(coro)


def _start_distribution_cluster(spec: TargetSpec, workdir: Path, timeout: float) -> RunningTarget:
    """SeaweedFS, ``DISTRIBUTION_REPLICAS`` registries on its bucket, haproxy;
    on failure whatever was started is stopped again (last first)."""
    binary = _distribution_binary()
    with contextlib.ExitStack() as undo:
        try:
            store = SeaweedFSProcess(workdir / "seaweedfs", log_file=workdir / "seaweedfs.log")
            _run_child(store.start(startup_timeout=timeout))
        except SeaweedFSError as exc:
            raise TargetError(f"SeaweedFS: {exc}") from exc
        undo.callback(lambda: _run_child(store.stop()))
        storage = DISTRIBUTION_S3.format(
            region=store.region,
            endpoint=store.s3_url,
            bucket=store.bucket,
            access_key=store.access_key,
            secret_key=store.secret_key,
        )
        # One secret on every registry: an upload begun on one is continued on another.
        secret = secrets.token_hex(32)
        registries: list[subprocess.Popen[bytes]] = []
        addresses: list[str] = []
        for i in range(1, DISTRIBUTION_REPLICAS + 1):
            port = free_port()
            config = workdir / f"registry{i}.yml"
            text = DISTRIBUTION_CONFIG.format(storage=storage, port=port)
            config.write_text(text + f"  secret: {secret}\n")
            proc = _run_distribution(binary, config, workdir / f"registry{i}.log", timeout, f"registry {i}")
            undo.callback(_terminate, proc, 30)
            registries.append(proc)
            addresses.append(f"127.0.0.1:{port}")
        lb_port = free_port()
        lb_config = workdir / "haproxy.cfg"
        lb_config.write_text(distribution_haproxy_config(f"127.0.0.1:{lb_port}", addresses))
        try:
            lb = HaproxyProcess(lb_config, listen_port=lb_port, log_file=workdir / "haproxy.log")
            _run_child(lb.start(startup_timeout=timeout))
        except HaproxyError as exc:
            raise TargetError(str(exc)) from exc
        undo.callback(lambda: _run_child(lb.stop()))
        url = f"http://127.0.0.1:{lb_port}"
        _poll_v2(url, lambda: lb.returncode, lb.log_path, timeout, "haproxy")
        teardown = undo.pop_all()
    cache = _ProcessCache()

    def roles() -> RoleMap:
        return {
            "registry": [p for r in registries for p in cache.tree(r.pid)],
            "storage": cache.tree(store.pid) if store.pid is not None else [],
            "lb": cache.tree(lb.pid) if lb.pid is not None else [],
        }

    return RunningTarget(
        spec=spec,
        url=url,
        details={
            "kind": "distribution-cluster",
            "storage": "seaweedfs",
            "replicas": DISTRIBUTION_REPLICAS,
            "registries": [f"http://{a}" for a in addresses],
            "s3_url": store.s3_url,
            "version": _distribution_version(),
            "dir": str(workdir),
            "auth": "none",
        },
        _roles=roles,
        _stop=teardown.close,
        s3=S3Endpoint(store.s3_url, store.bucket, store.access_key, store.secret_key, store.region),
    )


def _start_ceiling(spec: TargetSpec, workdir: Path, timeout: float) -> RunningTarget:
    blobs = workdir / "blobs"
    blobs.mkdir()
    log = workdir / "ceiling.log"
    args = ["--listen", f"127.0.0.1:{free_port()}", "--blobs", str(blobs)]
    proc, url = _start_ready(args, log, timeout, "ceiling", 10, "bench.ceiling", CEILING_READY_PREFIX)
    cache = _ProcessCache()
    return RunningTarget(
        spec=spec,
        url=url,
        details={"kind": "ceiling", "blobs_dir": str(blobs), "log": str(log)},
        _roles=lambda: {"ceiling": cache.tree(proc.pid)},
        _stop=lambda: _terminate(proc, 10),
    )


@dataclass
class _ClusterFile:
    """``cluster.json``, re-read at most once a second (the supervisor restarts replicas)."""

    path: Path
    doc: dict[str, Any] = field(default_factory=dict)
    read_at: float = -1e9

    def get(self) -> dict[str, Any]:
        if time.monotonic() - self.read_at >= 1.0:
            with contextlib.suppress(OSError, ValueError):
                self.doc = json.loads(self.path.read_text())
            self.read_at = time.monotonic()
        return self.doc


def _start_cluster_once(
    spec: TargetSpec, workdir: Path, timeout: float, replicas: int, storage: str
) -> RunningTarget:
    cluster_dir = workdir / f"cluster-{storage}"
    log = workdir / f"cluster-{storage}.log"
    cmd = ["cluster", "up", "--dir", str(cluster_dir)]
    cmd += ["--replicas", str(replicas), "--port", str(free_port()), "--storage", storage]
    proc, url = _start_ready(cmd, log, timeout, f"hareg cluster up (storage {storage})", 60)
    cache = _ProcessCache()
    cluster_file = _ClusterFile(cluster_dir / "cluster.json")

    def pids_of(entries: Any) -> list[psutil.Process]:
        found: list[psutil.Process] = []
        for entry in entries if isinstance(entries, list) else [entries]:
            pid = entry.get("pid") if isinstance(entry, dict) else None
            if isinstance(pid, int):
                found.extend(cache.tree(pid))
        return found

    def roles() -> RoleMap:
        doc = cluster_file.get()
        supervisor = cache.get(proc.pid)
        return {
            "replica": pids_of(doc.get("replicas", [])),
            "etcd": pids_of(doc.get("etcd", [])),
            "storage": pids_of(doc.get("storage", {})),
            "lb": pids_of(doc.get("lb", {})),
            "supervisor": [supervisor] if supervisor is not None else [],
        }

    return RunningTarget(
        spec=spec,
        url=url,
        details={
            "kind": "hareg-cluster",
            "storage": storage,
            "replicas": replicas,
            "log": str(log),
            "dir": str(cluster_dir),
            "cluster_json": str(cluster_dir / "cluster.json"),
            "supervisor_pid": proc.pid,
        },
        _roles=roles,
        _stop=lambda: _terminate(proc, 60),
    )


def _start_cluster(
    spec: TargetSpec, workdir: Path, timeout: float, replicas: int, storage: str
) -> RunningTarget:
    """``storage`` is ``seaweedfs``, ``filesystem`` or ``auto`` (SeaweedFS, and the
    shared directory if the cluster cannot start with it)."""
    if storage != "auto":
        return _start_cluster_once(spec, workdir, timeout, replicas, storage)
    try:
        return _start_cluster_once(spec, workdir, timeout, replicas, "seaweedfs")
    except TargetError as exc:
        target = _start_cluster_once(spec, workdir, timeout, replicas, "filesystem")
        target.details["storage_fallback"] = str(exc).splitlines()[-1][:300]
        return target


@contextlib.contextmanager
def started(
    spec: TargetSpec,
    *,
    base_dir: Path | None = None,
    timeout: float = 90.0,
    cluster_replicas: int = 2,
    cluster_storage: str = "auto",
    keep: bool = False,
    users: BenchUsers | None = None,
) -> Iterator[RunningTarget]:
    """Start ``spec`` in a fresh temporary directory; stop it and remove the directory on exit.
    With ``users``, the target authenticates them (``hareg`` and ``distribution`` only)."""
    if users is not None and spec.kind not in AUTH_KINDS:
        raise TargetError(f"{spec.name}: --auth starts only {' and '.join(AUTH_KINDS)}")
    if spec.kind == "url":
        yield RunningTarget(spec=spec, url=spec.url, details={"kind": "url"}, _roles=dict, _stop=lambda: None)
        return
    workdir = Path(tempfile.mkdtemp(prefix=f"hareg-bench-{spec.kind}-", dir=base_dir))
    try:
        if spec.kind == "hareg":
            target = _start_hareg(spec, workdir, timeout, users)
        elif spec.kind == "distribution":
            target = _start_distribution(spec, workdir, timeout, users)
        elif spec.kind == "distribution-cluster":
            target = _start_distribution_cluster(spec, workdir, timeout)
        elif spec.kind == "hareg-cluster":
            target = _start_cluster(spec, workdir, timeout, cluster_replicas, cluster_storage)
        elif spec.kind == "ceiling":
            target = _start_ceiling(spec, workdir, timeout)
        else:
            raise ValueError(f"unknown target kind {spec.kind!r}")
        try:
            yield target
        finally:
            target.stop()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# -- resources --------------------------------------------------------------


def _cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system + t.children_user + t.children_system)


def _hwm_bytes(pid: int) -> int | None:
    """The kernel's peak RSS (``VmHWM``) of ``pid``."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5; needs to own the process)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class RoleUsage:
    cpu_s: float
    peak_rss_mb: float  # the largest sampled sum of RSS over the role's processes
    max_process_peak_rss_mb: float  # the largest VmHWM of any one process in the role
    processes: int

    def as_dict(self) -> dict[str, float]:
        return {
            "cpu_s": round(self.cpu_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "max_process_peak_rss_mb": round(self.max_process_peak_rss_mb, 1),
            "processes": self.processes,
        }


class ResourceMeter:
    """CPU seconds and peak RSS per role between :meth:`start` and :meth:`stop`.

    A daemon thread samples RSS every ``interval`` seconds (bounded by the
    phase); CPU is the difference of cumulative per-process CPU times, so a
    process that exits mid-phase loses its share (the cluster restarts none
    during a throughput run)."""

    def __init__(self, target: RunningTarget, interval: float = 0.1) -> None:
        self.target = target
        self.interval = interval
        self._cpu0: dict[int, float] = {}
        self._peak_sum: dict[str, int] = {}
        self._roles_seen: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hwm_reset = True

    def start(self) -> None:
        roles = self.target.roles()
        self._cpu0 = {}
        for procs in roles.values():
            for proc in procs:
                cpu = _cpu_seconds(proc)
                if cpu is not None:
                    self._cpu0[proc.pid] = cpu
                self.hwm_reset = _reset_hwm(proc.pid) and self.hwm_reset
        self._peak_sum = {role: 0 for role in roles}
        self._roles_seen = {role: set() for role in roles}
        self._sample(roles)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="resource-meter")
        self._thread.start()

    def _sample(self, roles: RoleMap) -> None:
        for role, procs in roles.items():
            total = 0
            for proc in procs:
                try:
                    total += int(proc.memory_info().rss)
                except psutil.Error:
                    continue
                self._roles_seen.setdefault(role, set()).add(proc.pid)
            self._peak_sum[role] = max(self._peak_sum.get(role, 0), total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(self.target.roles())

    def stop(self) -> dict[str, RoleUsage]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        roles = self.target.roles()
        self._sample(roles)
        usage: dict[str, RoleUsage] = {}
        for role, procs in roles.items():
            cpu = 0.0
            hwm = 0
            for proc in procs:
                now = _cpu_seconds(proc)
                if now is not None:
                    cpu += now - self._cpu0.get(proc.pid, now)
                peak = _hwm_bytes(proc.pid) if self.hwm_reset else None
                if peak is None:
                    with contextlib.suppress(psutil.Error):
                        peak = int(proc.memory_info().rss)
                hwm = max(hwm, peak or 0)
            usage[role] = RoleUsage(
                cpu_s=cpu,
                peak_rss_mb=max(self._peak_sum.get(role, 0), hwm if len(procs) == 1 else 0) / MB,
                max_process_peak_rss_mb=max(hwm, 0) / MB,
                processes=len(self._roles_seen.get(role, set())),
            )
        return usage
