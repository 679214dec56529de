"""Network partitions between processes of this machine, made by the kernel:
iptables rules on the loopback interface.

Two cuts, combined into the benchmark's partition faults (:mod:`bench.faults`):

- ``inbound(port)``: ``INPUT -i lo -p tcp --dport PORT -j DROP``: nothing
  reaches the port any more (new connections and open ones alike);
- ``outbound(name, pid, ports)``: the process cannot reach those ports.  iptables
  tells processes apart only by cgroup, so the process is moved into a cgroup
  v2 of its own and ``OUTPUT -o lo -m cgroup --path CG --dport P -j DROP``
  drops what it sends from sockets opened from now on; a socket keeps the
  cgroup it was created in, so each connection it has open now gets
  ``OUTPUT -o lo --sport S --dport P -j DROP`` as well.

Every rule carries the comment ``hareg-bench-<pid>`` (the pid of the benchmark
that added it) and only rules with that comment are ever deleted; every
cgroup is named ``hareg-bench-<pid>-<name>``.  :meth:`Partitions.cleanup`
deletes this run's rules and cgroups (moving their processes back where they
were); :meth:`Partitions.guard` does so when its block ends, however it ends,
and turns SIGTERM into an exception so that holds for a killed run too.  A run
killed with SIGKILL cannot clean up: the next run removes rules and cgroups
whose benchmark pid is gone (:meth:`Partitions.remove_orphans`).

A loopback rule acts on every process of the machine that uses the port: cut
only ports of processes this run started.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

COMMENT_PREFIX = "hareg-bench-"
_COMMENT = re.compile(r"--comment\s+\"?" + re.escape(COMMENT_PREFIX) + r"(\d+)\"?")
_CGROUP_DIR = re.compile(re.escape(COMMENT_PREFIX) + r"(\d+)-")

Runner = Callable[[list[str]], str]


class PartitionError(RuntimeError):
    """iptables or the cgroup filesystem refused (the message says which and why)."""


def run_iptables(args: list[str]) -> str:
    """``iptables -w 10 ARGS``; its output, or PartitionError with its stderr."""
    try:
        done = subprocess.run(
            ["iptables", "-w", "10", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PartitionError(f"iptables {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise PartitionError(f"iptables {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def cgroup2_root(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on a
    hybrid host, ``/sys/fs/cgroup/unified``), or None."""
    try:
        for line in mounts.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        return None
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_connections(pid: int, ports: Iterable[int]) -> list[tuple[int, int]]:
    """(local port, remote port) of the TCP connections process ``pid`` has open
    to any of ``ports`` (its socket inodes matched against /proc/PID/net/tcp*)."""
    wanted = set(ports)
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    out: list[tuple[int, int]] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            local = int(cols[1].rsplit(":", 1)[1], 16)
            remote = int(cols[2].rsplit(":", 1)[1], 16)
            if remote in wanted:
                out.append((local, remote))
    return out


@dataclass
class Partitions:
    """The rules and cgroups of one benchmark run (``owner``: its pid)."""

    owner: int = field(default_factory=os.getpid)
    iptables: Runner = run_iptables
    cgroup_root: Path | None = field(default_factory=cgroup2_root)
    rules: list[tuple[str, ...]] = field(default_factory=list)
    # cgroup name -> {pid: the cgroup v2 path it came from}
    _moved: dict[str, dict[int, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def comment(self) -> str:
        return f"{COMMENT_PREFIX}{self.owner}"

    def unavailable(self) -> str | None:
        """Why partitions cannot be made here, or None."""
        if os.geteuid() != 0:
            return "iptables rules need root"
        if shutil.which("iptables") is None:
            return "iptables is not installed"
        if self.cgroup_root is None:
            return "no cgroup v2 hierarchy is mounted (needed to cut one process)"
        try:
            self.iptables(["-S", "OUTPUT"])
        except PartitionError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------- the cuts

    def _add(self, chain: str, spec: list[str]) -> tuple[str, ...]:
        rule = (chain, *spec, "-m", "comment", "--comment", self.comment, "-j", "DROP")
        with self._lock:
            self.iptables(["-I", *rule])
            self.rules.append(rule)
        return rule

    def inbound(self, port: int) -> list[tuple[str, ...]]:
        """Drop every packet to ``port`` on the loopback interface."""
        return [self._add("INPUT", ["-i", "lo", "-p", "tcp", "--dport", str(port)])]

    def outbound(self, name: str, pid: int, ports: Iterable[int]) -> list[tuple[str, ...]]:
        """Drop what process ``pid`` sends to ``ports`` (see the module's docstring)."""
        ports = sorted(set(ports))
        group = self._enter(name, pid)
        rules = [
            self._add("OUTPUT", ["-o", "lo", "-p", "tcp", "-m", "cgroup", "--path", group,
                                 "-m", "multiport", "--dports", ",".join(map(str, ports))])
        ]  # fmt: skip
        for local, remote in open_connections(pid, ports):
            rules.append(
                self._add("OUTPUT", ["-o", "lo", "-p", "tcp", "--sport", str(local), "--dport", str(remote)])
            )
        return rules

    def remove(self, rules: Iterable[tuple[str, ...]]) -> list[str]:
        """Delete these rules (added by this object); the errors, if any."""
        errors = []
        for rule in rules:
            with self._lock:
                if rule not in self.rules:
                    continue
                try:
                    self.iptables(["-D", *rule])
                except PartitionError as exc:
                    errors.append(str(exc))
                    continue
                self.rules.remove(rule)
        return errors

    # -------------------------------------------------------------- cgroups

    def _enter(self, name: str, pid: int) -> str:
        """Move ``pid`` into this run's cgroup ``name``; the path iptables matches."""
        if self.cgroup_root is None:
            raise PartitionError("no cgroup v2 hierarchy is mounted")
        group = f"{self.comment}-{name}"
        path = self.cgroup_root / group
        try:
            path.mkdir(exist_ok=True)
            origin = "/"
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    origin = line[3:] or "/"
            with self._lock:
                moved = self._moved.setdefault(group, {})
                if pid not in moved and origin != f"/{group}":
                    moved[pid] = origin
            (path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            raise PartitionError(f"cannot move pid {pid} into cgroup {path}: {exc}") from exc
        return group

    def _leave_cgroups(self) -> list[str]:
        errors = []
        assert self.cgroup_root is not None
        with self._lock:
            moved, self._moved = self._moved, {}
        for group, pids in moved.items():
            for pid, origin in pids.items():
                if _pid_alive(pid):
                    with contextlib.suppress(OSError):  # it may have exited meanwhile
                        (self.cgroup_root / origin.lstrip("/") / "cgroup.procs").write_text(f"{pid}\n")
            errors += _rmdir(self.cgroup_root / group)
        return errors

    # -------------------------------------------------------------- cleanup

    def listed(self) -> list[tuple[int, tuple[str, ...]]]:
        """(owner pid, rule) of every rule with a ``hareg-bench-<pid>`` comment."""
        out = []
        for chain in ("INPUT", "OUTPUT"):
            for line in self.iptables(["-S", chain]).splitlines():
                m = _COMMENT.search(line)
                if m and line.startswith("-A "):
                    out.append((int(m.group(1)), tuple(shlex.split(line)[1:])))
        return out

    def cleanup(self) -> list[str]:
        """Delete every rule of this run (also ones the bookkeeping missed) and its cgroups."""
        errors = self.remove(list(self.rules))
        try:
            for owner, rule in self.listed():
                if owner == self.owner:
                    try:
                        self.iptables(["-D", *rule])
                    except PartitionError as exc:
                        errors.append(str(exc))
        except PartitionError as exc:
            errors.append(str(exc))
        if self.cgroup_root is not None:
            errors += self._leave_cgroups()
            for path in self.cgroup_root.glob(f"{self.comment}-*"):
                errors += _rmdir(path)
        return errors

    def remove_orphans(self) -> int:
        """Delete rules and cgroups of benchmark runs whose pid is gone; how many rules."""
        n = 0
        for owner, rule in self.listed():
            if owner != self.owner and not _pid_alive(owner):
                with contextlib.suppress(PartitionError):
                    self.iptables(["-D", *rule])
                    n += 1
        if self.cgroup_root is not None:
            for path in self.cgroup_root.glob(f"{COMMENT_PREFIX}*"):
                m = _CGROUP_DIR.match(path.name)
                if m and int(m.group(1)) != self.owner and not _pid_alive(int(m.group(1))):
                    _rmdir(path, evacuate_to=self.cgroup_root)
        return n

    @contextlib.contextmanager
    def guard(self, log: Callable[[str], None] = print) -> Iterator[Partitions]:
        """Clean up when the block ends, however it ends (what could not be
        cleaned up is logged); SIGTERM ends the block with SystemExit."""
        previous: object = None
        in_main = threading.current_thread() is threading.main_thread()

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        if in_main:
            previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield self
        finally:
            errors = self.cleanup()
            if in_main:
                signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
            for error in errors:
                log(f"bench: cleaning up partitions: {error}")


def _rmdir(path: Path, evacuate_to: Path | None = None) -> list[str]:
    """Remove a cgroup directory (its processes moved to ``evacuate_to`` first, if given)."""
    if not path.exists():
        return []
    if evacuate_to is not None:
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (evacuate_to / "cgroup.procs").write_text(f"{pid}\n")
    try:
        path.rmdir()
    except OSError as exc:
        return [f"cannot remove cgroup {path}: {exc}"]
    return []
