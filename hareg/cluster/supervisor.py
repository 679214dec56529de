"""The local operator: starts a whole cluster, keeps it as configured, tears it down.

Start order, each step waiting for the previous one to be ready:

1. the etcd members, in parallel (each healthy means the cluster has a leader);
2. the object store (SeaweedFS; its S3 gateway accepts a PutObject);
3. the replicas, in parallel: ``hareg serve --etcd-endpoints <every member>
   --listen 127.0.0.1:PORT --replica replica-N --config DIR/hareg.yaml``,
   each ready when ``/readyz`` answers 200;
4. haproxy, ready when the registry URL's ``/readyz`` answers 200.

Then ``DIR/cluster.json`` is written (atomically: a temporary file renamed)::

    {"registry": "http://127.0.0.1:5000",
     "replicas": [{"name": "replica-1", "url": "http://127.0.0.1:41234", "pid": 1234}, ...],
     "etcd": [{"name": "m1", "client_url": "http://127.0.0.1:40001", "pid": 1200}, ...],
     "storage": {"url": "http://127.0.0.1:38333", "pid": 1210},
     "lb": {"pid": 1250}}

and rewritten whenever a pid changes (a restart, or ``null`` once a process
is gone).  ``DIR/supervisor.json`` holds the supervisor's own pid and the
desired state, for ``hareg cluster status``.

The monitor loop (every 0.1 s) honours ``managementState``:

- Managed: a replica that dies is started again at once (then with a backoff
  of 1, 2, 4, ... 10 s while it keeps dying within 10 s of its start);
  ``replicas`` are kept running (scaling up or down, haproxy reloaded with the
  new set); a dead haproxy is restarted too.
- Unmanaged: nothing is started or stopped; what dies is reported.
- Removed: the replicas are stopped; etcd, the object store and haproxy stay.

SIGHUP re-reads the configuration file: ``managementState``, ``replicas``,
and any other change, a changed file the ``auth`` section names included (a
rolling restart of the replicas with the new configuration and copies).  In
Managed it also starts again any etcd member or object store that is down
(the supervisor never restarts those on its own: chaos tests stop them on
purpose).  SIGINT or SIGTERM stop everything in reverse
order (haproxy, replicas, object store, etcd), bounded, SIGKILL for what
does not stop in time, and remove cluster.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from hareg.cluster.auth_files import read_auth_files
from hareg.cluster.desired import DesiredState, load_desired, write_replica_config
from hareg.cluster.haproxy import Backend, HaproxyError, HaproxyProcess, render_config
from hareg.cluster.mirror_files import read_mirror_files
from hareg.cluster.replica import ReplicaError, ReplicaProcess, probe_ready
from hareg.cluster.spec import HOST, ClusterError, ClusterLayout, write_json_atomic
from hareg.config.model import ConfigError
from hareg.processes.etcd import EtcdProcess

__all__ = ["Supervisor", "SupervisorOptions"]

log = logging.getLogger("hareg.cluster")

MONITOR_INTERVAL = 0.1
QUICK_DEATH = 10.0  # a replica that dies sooner than this after its start is crash-looping
MAX_BACKOFF = 10.0
STOP_GRACE = 10.0


class _Store(Protocol):
    """The object store process (SeaweedFSProcess's shape)."""

    @property
    def s3_url(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def running(self) -> bool: ...
    async def start(self, startup_timeout: float | None = None) -> None: ...
    async def stop(self, grace: float | None = None) -> int | None: ...
    def log_tail(self, lines: int = 30) -> str: ...


@dataclass
class SupervisorOptions:
    layout: ClusterLayout
    config_file: Path | None = None
    replicas: int | None = None  # --replicas: wins over the file at startup
    python: str = sys.executable
    etcd_binary: str | None = None
    haproxy_binary: str | None = None
    weed_binary: str | None = None
    startup_timeout: float = 90.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    # Where relative paths in the configuration (the auth section's files) start.
    cwd: Path = field(default_factory=Path.cwd)


def _pid(proc: EtcdProcess | _Store | None) -> int | None:
    return proc.pid if proc is not None and proc.running else None


class Supervisor:
    """Run with ``await Supervisor(options, on_ready=print).run()``; it returns
    after SIGINT/SIGTERM (or ``request_stop()``) once everything is stopped."""

    def __init__(self, options: SupervisorOptions, *, on_ready: Callable[[str], None] = print) -> None:
        self.options = options
        self.layout = options.layout
        self.paths = options.layout.paths
        self.on_ready = on_ready
        self.desired: DesiredState = load_desired(options.config_file, options.env, replicas=options.replicas)
        read_auth_files(self.desired.config.auth, options.cwd)  # a bad file is refused before anything starts
        read_mirror_files(self.desired.config.pull_through, options.cwd)  # (pullThrough's password, CA)
        self.etcd = [
            EtcdProcess(
                m.name,
                self.paths.etcd_dir(m.name),
                client_port=m.client_port,
                peer_port=m.peer_port,
                initial_cluster=self.layout.initial_cluster,
                cluster_token=self.layout.etcd_token,
                binary=options.etcd_binary,
                log_file=self.paths.log(f"etcd-{m.name}"),
            )
            for m in self.layout.etcd
        ]
        self.storage: _Store | None = self._make_storage()
        self.lb = HaproxyProcess(
            self.paths.haproxy_cfg,
            listen_port=self.layout.lb_port,
            log_file=self.paths.log("haproxy"),
            binary=options.haproxy_binary,
        )
        self.replicas: dict[str, ReplicaProcess] = {}
        self._stop = asyncio.Event()
        self._reload = False
        self._phase = "Starting"
        self._busy: set[str] = set()  # replicas a background task is stopping or restarting
        self._leaving: set[str] = set()  # replicas being scaled away: already out of haproxy
        self._next_start: dict[str, float] = {}
        self._seen_pids: dict[str, int | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._roll: asyncio.Task[None] | None = None
        self._heal: asyncio.Task[None] | None = None
        self._lb_next_start = 0.0
        self._lb_failures = 0
        self._lb_lock = asyncio.Lock()
        self._published: dict[str, Any] | None = None
        self._published_state: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- construction ------------------------------------------------------

    def _make_storage(self) -> _Store | None:
        store = self.layout.storage
        if store.kind != "seaweedfs":
            return None
        from hareg.processes.seaweedfs import SeaweedFSProcess

        return SeaweedFSProcess(
            self.paths.storage_dir,
            s3_port=store.s3_port,
            master_port=store.master_port,
            volume_port=store.volume_port,
            filer_port=store.filer_port,
            admin_port=store.admin_port,
            bucket=store.bucket,
            access_key=store.access_key,
            secret_key=store.secret_key,
            binary=self.options.weed_binary,
            log_file=self.paths.log("seaweedfs"),
        )

    def _new_replica(self, index: int) -> ReplicaProcess:
        slot = self.layout.slot(index)
        return ReplicaProcess(
            slot,
            config_file=self.paths.replica_config,
            data_dir=self.paths.replica_dir(slot.name),
            etcd_endpoints=self.layout.etcd_endpoints,
            log_file=self.paths.log(slot.name),
            env=self.options.env,
            python=self.options.python,
        )

    # -- control -----------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload = True

    async def run(self) -> None:
        """Start the cluster, supervise it until asked to stop, tear it down."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig, handler in (
            (signal.SIGINT, self.request_stop),
            (signal.SIGTERM, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        self.paths.cluster_json.unlink(missing_ok=True)  # a stale one would mislead whoever waits for it
        self._session = aiohttp.ClientSession()
        try:
            self._write_state()
            starting = asyncio.create_task(self._start())
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stop requested while starting")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return
            stopping.cancel()
            starting.result()  # a startup error
            self._phase = "Running"
            self._publish()
            self._write_state()
            self.on_ready(self.layout.registry_url)
            await self._monitor()
        finally:
            self._phase = "Stopping"
            with contextlib.suppress(OSError):
                self._write_state()
            try:
                await self._teardown()
            finally:
                await self._session.close()
                for sig in installed:
                    loop.remove_signal_handler(sig)

    # -- startup -----------------------------------------------------------

    async def _start(self) -> None:
        timeout = self.options.startup_timeout
        log.info("starting %d etcd members", len(self.etcd))
        results = await asyncio.gather(
            *(m.start(startup_timeout=timeout) for m in self.etcd), return_exceptions=True
        )
        for member, result in zip(self.etcd, results, strict=True):
            if isinstance(result, BaseException):
                raise ClusterError(f"etcd member {member.name} did not start: {result}") from result
            log.info("etcd member %s ready at %s (pid %s)", member.name, member.client_url, member.pid)

        if self.storage is not None:
            log.info("starting SeaweedFS")
            try:
                await self.storage.start(startup_timeout=timeout)
            except Exception as exc:
                raise ClusterError(f"SeaweedFS did not start: {exc}") from exc
            log.info("SeaweedFS ready at %s (pid %s)", self.storage.s3_url, self.storage.pid)
        else:
            self.paths.blobs_dir.mkdir(exist_ok=True)

        try:
            write_replica_config(self.desired.config, self.layout, self.options.cwd)
        except ConfigError as exc:
            raise ClusterError(f"the replicas' generated configuration is invalid:\n{exc}") from exc
        count = self.desired.replicas if self.desired.management_state != "Removed" else 0
        for index in range(1, self.desired.replicas + 1):
            replica = self._new_replica(index)
            self.replicas[replica.name] = replica
            if index <= count:
                replica.spawn()
        started = [r for r in self.replicas.values() if r.running]
        log.info("starting %d replicas", len(started))
        assert self._session is not None
        session = self._session
        results = await asyncio.gather(
            *(r.wait_ready(session, timeout) for r in started), return_exceptions=True
        )
        for replica, result in zip(started, results, strict=True):
            if isinstance(result, BaseException):
                raise ClusterError(str(result)) from result
            log.info("replica %s ready at %s (pid %s)", replica.name, replica.url, replica.pid)

        await self.lb.write_config(self._haproxy_config())
        try:
            await self.lb.start(startup_timeout=timeout)
        except HaproxyError as exc:
            raise ClusterError(str(exc)) from exc
        if started:
            await self._wait_registry(timeout)
        log.info("haproxy ready at %s (pid %s)", self.layout.registry_url, self.lb.pid)

    async def _wait_registry(self, limit: float) -> None:
        assert self._session is not None
        deadline = time.monotonic() + limit
        while not await probe_ready(self._session, self.layout.registry_url, probe_timeout=1.0):
            if not self.lb.running:
                raise ClusterError(f"haproxy exited while starting:\n{self.lb.log_tail()}")
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{self.layout.registry_url}/readyz did not answer 200 through haproxy in {limit:.0f}s"
                )
            await asyncio.sleep(0.1)

    def _haproxy_config(self) -> str:
        backends = [Backend(r.name, r.slot.listen) for r in self._ordered() if r.name not in self._leaving]
        return render_config(f"{HOST}:{self.layout.lb_port}", backends)

    def _ordered(self) -> list[ReplicaProcess]:
        return sorted(self.replicas.values(), key=lambda r: int(r.name.rsplit("-", 1)[1]))

    # -- the monitor -------------------------------------------------------

    async def _monitor(self) -> None:
        while not self._stop.is_set():
            if self._reload:
                self._reload = False
                await self._apply_reload()
            try:
                await self._reconcile()
            except (HaproxyError, ClusterError, OSError) as exc:
                log.error("reconcile failed (trying again): %s", exc)
            except Exception:  # a bug must not take the whole cluster down with the supervisor
                log.exception("reconcile failed (trying again)")
            try:
                self._publish()
                self._write_state()
            except OSError as exc:
                log.error("cannot write %s: %s", self.paths.cluster_json, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MONITOR_INTERVAL):
                    await self._stop.wait()

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reconcile(self) -> None:
        state = self.desired.management_state
        now = time.monotonic()
        for replica in list(self.replicas.values()):
            name = replica.name
            if name in self._busy:
                continue
            pid = replica.pid
            if pid is None and self._seen_pids.get(name) is not None:
                self._on_replica_death(replica, now)
            self._seen_pids[name] = pid
            if pid is None and state == "Managed" and now >= self._next_start.get(name, 0.0):
                self._start_replica(replica)
        if state == "Managed":
            await self._scale(self.desired.replicas)
            if self.lb.running:
                if now >= self._lb_next_start + QUICK_DEATH:
                    self._lb_failures = 0
            elif now >= self._lb_next_start:
                self._lb_failures += 1
                self._lb_next_start = now + min(2.0 ** (self._lb_failures - 1), MAX_BACKOFF)
                log.warning("haproxy exited with code %s; starting it again", self.lb.returncode)
                self.lb.spawn()
        elif state == "Removed":
            for replica in self.replicas.values():
                if replica.running and replica.name not in self._busy:
                    log.info("managementState is Removed: stopping %s", replica.name)
                    self._begin_stop(replica, forget=False)

    def _on_replica_death(self, replica: ReplicaProcess, now: float) -> None:
        quick = replica.uptime < QUICK_DEATH
        replica.quick_failures = replica.quick_failures + 1 if quick else 1
        delay = 0.0 if replica.quick_failures <= 1 else min(2.0 ** (replica.quick_failures - 2), MAX_BACKOFF)
        self._next_start[replica.name] = now + delay
        action = {
            "Managed": f"starting it again in {delay:.0f}s" if delay else "starting it again",
            "Unmanaged": "managementState is Unmanaged: leaving it down",
            "Removed": "managementState is Removed",
        }[self.desired.management_state]
        log.warning(
            "replica %s (pid %s) exited with code %s; %s; last lines of its log:\n%s",
            replica.name,
            self._seen_pids.get(replica.name),
            replica.returncode,
            action,
            replica.log_tail(10),
        )

    def _start_replica(self, replica: ReplicaProcess) -> None:
        pid = replica.spawn()
        self._seen_pids[replica.name] = pid
        log.info("started replica %s (pid %s) at %s", replica.name, pid, replica.url)

    def _begin_stop(self, replica: ReplicaProcess, *, forget: bool) -> None:
        self._busy.add(replica.name)  # at once: the next reconcile must not touch it
        self._spawn_task(self._stop_replica(replica, forget=forget))

    async def _stop_replica(self, replica: ReplicaProcess, *, forget: bool) -> None:
        try:
            if forget:  # out of haproxy first, so that no new request reaches it
                self._leaving.add(replica.name)
                await self._update_lb()
            await replica.stop(STOP_GRACE)
            self._seen_pids[replica.name] = None
            log.info("stopped replica %s", replica.name)
        finally:
            self._busy.discard(replica.name)
            self._leaving.discard(replica.name)
            if forget and self.replicas.get(replica.name) is replica:
                del self.replicas[replica.name]
                self._seen_pids.pop(replica.name, None)

    async def _scale(self, count: int) -> None:
        changed = False
        for index in range(1, count + 1):
            name = f"replica-{index}"
            if name not in self.replicas:
                replica = self._new_replica(index)
                self.replicas[name] = replica
                self._start_replica(replica)
                changed = True
        for replica in self._ordered():
            index = int(replica.name.rsplit("-", 1)[1])
            if index > count and replica.name not in self._busy:
                log.info("scaling down to %d replicas: stopping %s", count, replica.name)
                self._begin_stop(replica, forget=True)
        if changed:
            await self._update_lb()

    async def _update_lb(self) -> None:
        async with self._lb_lock:
            text = self._haproxy_config()
            try:
                current = self.paths.haproxy_cfg.read_text()
            except OSError:
                current = None
            if text != current:
                await self.lb.write_config(text)
                self.lb.reload()
                log.info("haproxy reloaded with %d replicas", len(self.replicas) - len(self._leaving))

    # -- SIGHUP ------------------------------------------------------------

    async def _apply_reload(self) -> None:
        path = self.options.config_file
        log.info("SIGHUP: reading %s", path or "the configuration (no --config file: defaults)")
        try:
            desired = load_desired(path, self.options.env, previous=self.desired)
            changed = write_replica_config(desired.config, self.layout, self.options.cwd)
        except ConfigError as exc:
            log.error("SIGHUP: the configuration is invalid, keeping the current one:\n%s", exc)
            return
        old = self.desired
        self.desired = desired
        if (old.management_state, old.replicas) != (desired.management_state, desired.replicas):
            log.info(
                "SIGHUP: managementState %s -> %s, replicas %d -> %d",
                old.management_state,
                desired.management_state,
                old.replicas,
                desired.replicas,
            )
        if desired.management_state != "Managed":
            return
        if changed and old.management_state == "Managed":  # otherwise they start with the new one
            log.info("SIGHUP: the replicas' configuration changed: rolling restart")
            if self._roll is not None:
                self._roll.cancel()
            self._roll = self._spawn_task(self._rolling_restart())
        if self._heal is None or self._heal.done():
            # In the background: the monitor goes on restarting replicas meanwhile.
            self._heal = self._spawn_task(self._heal_infrastructure())

    async def _heal_infrastructure(self) -> None:
        dead = [m for m in self.etcd if not m.running]
        for member in dead:
            log.info("SIGHUP: etcd member %s is down; starting it again", member.name)
        if dead:
            results = await asyncio.gather(
                *(m.start(startup_timeout=self.options.startup_timeout) for m in dead), return_exceptions=True
            )
            for member, result in zip(dead, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("etcd member %s did not start: %s", member.name, result)
        if self.storage is not None and not self.storage.running:
            log.info("SIGHUP: SeaweedFS is down; starting it again")
            try:
                await self.storage.start(startup_timeout=self.options.startup_timeout)
            except Exception as exc:
                log.error("SeaweedFS did not start: %s", exc)

    async def _rolling_restart(self) -> None:
        assert self._session is not None
        for replica in self._ordered():
            if self.desired.management_state != "Managed" or replica.name in self._busy:
                continue
            self._busy.add(replica.name)
            try:
                await replica.stop(STOP_GRACE)
                self._start_replica(replica)
                try:
                    await replica.wait_ready(self._session, self.options.startup_timeout)
                except ReplicaError as exc:
                    log.error("rolling restart: %s", exc)
            finally:
                self._busy.discard(replica.name)

    # -- cluster.json ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What cluster.json says: every process and its pid (None: not running)."""
        storage_url = self.storage.s3_url if self.storage is not None else self.paths.blobs_dir.as_uri()
        return {
            "registry": self.layout.registry_url,
            "replicas": [{"name": r.name, "url": r.url, "pid": r.pid} for r in self._ordered()],
            "etcd": [{"name": m.name, "client_url": m.client_url, "pid": _pid(m)} for m in self.etcd],
            "storage": {"url": storage_url, "pid": _pid(self.storage)},
            "lb": {"pid": self.lb.pid},
        }

    def _publish(self) -> None:
        snap = self.snapshot()
        if snap != self._published:
            write_json_atomic(self.paths.cluster_json, snap)
            self._published = snap

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "phase": self._phase,
            "managementState": self.desired.management_state,
            "replicas": self.desired.replicas,
            "registry": self.layout.registry_url,
            "config": str(self.options.config_file) if self.options.config_file else None,
        }
        if state != self._published_state:
            write_json_atomic(self.paths.supervisor_json, state)
            self._published_state = state

    # -- teardown ----------------------------------------------------------

    async def _etcd_leader(self) -> EtcdProcess | None:
        """The member that leads now, if one can say so within a second."""
        if self._session is None or self._session.closed:
            return None

        async def status(member: EtcdProcess) -> tuple[str, str] | None:
            assert self._session is not None
            try:
                async with self._session.post(
                    f"{member.client_url}/v3/maintenance/status",
                    json={},
                    timeout=aiohttp.ClientTimeout(total=1.0),
                ) as resp:
                    data = await resp.json(content_type=None)
                return str(data["header"]["member_id"]), str(data["leader"])
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError, TypeError):
                return None

        running = [m for m in self.etcd if m.running]
        for member, answer in zip(running, await asyncio.gather(*(status(m) for m in running)), strict=True):
            if answer is not None and answer[0] == answer[1]:
                return member
        return None

    async def _stop_etcd(self) -> None:
        """Followers first, then the leader: a leader stopped while its
        followers run hands its leadership over, and waits (seconds) for the
        handover when they are stopping too."""
        leader = await self._etcd_leader()
        followers = [m for m in self.etcd if m is not leader]
        await asyncio.gather(*(m.stop(grace=STOP_GRACE) for m in followers), return_exceptions=True)
        if leader is not None:
            with contextlib.suppress(Exception):
                await leader.stop(grace=STOP_GRACE)

    async def _teardown(self) -> None:
        """Reverse order, every step bounded; SIGKILL for whatever lingers."""
        log.info("stopping the cluster")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        started = time.monotonic()
        await self.lb.stop(5.0)
        await asyncio.gather(*(r.stop(STOP_GRACE) for r in self.replicas.values()), return_exceptions=True)
        log.info("stopped haproxy and the replicas (%.1fs)", time.monotonic() - started)
        if self.storage is not None:
            with contextlib.suppress(Exception):
                await self.storage.stop(5.0)
        await self._stop_etcd()
        log.info("stopped the object store and etcd (%.1fs)", time.monotonic() - started)
        for path in (self.paths.cluster_json, self.paths.supervisor_json):
            path.unlink(missing_ok=True)
        log.info("cluster stopped")
