"""Carries out a fault schedule against the simulated world, then heals it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from sim.etcd_model import EtcdCluster
from sim.faults import Fault
from sim.loop import SimLoop
from sim.network import Network
from sim.replica import Replica
from sim.storage_model import ObjectStore
from sim.trace import Trace


class Nemesis:
    def __init__(
        self,
        loop: SimLoop,
        net: Network,
        cluster: EtcdCluster,
        objects: ObjectStore,
        replicas: Sequence[Replica],
        trace: Trace,
    ) -> None:
        self.loop = loop
        self.net = net
        self.cluster = cluster
        self.objects = objects
        self.replicas = {r.name: r for r in replicas}
        self.trace = trace
        self.applied: dict[str, int] = {}
        self._timers: list[asyncio.TimerHandle] = []
        self._restarts: list[asyncio.Task[None]] = []
        # The window faults: a strength added at the start and taken away at the end.
        self._windows: dict[str, tuple[Callable[[float], None], Callable[[float], None]]] = {
            "loss": (net.add_loss, net.remove_loss),
            "delay": (net.add_delay, net.remove_delay),
            "lostreply": (cluster.add_lost_replies, cluster.remove_lost_replies),
            "timeout": (cluster.add_write_drops, cluster.remove_write_drops),
            "late": (cluster.add_late_writes, cluster.remove_late_writes),
            "storage": (objects.add_errors, objects.remove_errors),
        }

    def schedule(self, faults: Sequence[Fault]) -> None:
        for fault in faults:
            self._timers.append(self.loop.call_at(fault.at, self._start, fault))

    def _later(self, delay: float, action: str, fault: Fault) -> None:
        self._timers.append(self.loop.call_later(delay, self._end, action, fault))

    def _start(self, f: Fault) -> None:
        self.applied[f.kind] = self.applied.get(f.kind, 0) + 1
        self.trace.event("fault", kind=f.kind, what=f.describe())
        net, cluster = self.net, self.cluster
        if f.kind == "crash":
            replica = self.replicas[f.target]
            if replica.up:
                replica.crash()
                self._later(f.duration, "restart", f)
        elif f.kind == "pause":
            self.replicas[f.target].pause()
            self._later(f.duration, "resume", f)
        elif f.kind == "partition":
            net.isolate(f.target)
            self._later(f.duration, "unisolate", f)
        elif f.kind == "split":
            for a in f.target.split(","):
                for b in f.peer.split(","):
                    net.cut(a, b)
                    net.cut(b, a)
            self._later(f.duration, "unsplit", f)
        elif f.kind == "oneway":
            net.cut(f.target, f.peer)
            self._later(f.duration, "uncut", f)
        elif f.kind == "leader":
            cluster.start_election(f.duration, "fault")
        elif f.kind in self._windows:
            self._windows[f.kind][0](f.value)
            self._later(f.duration, f.kind, f)
        elif f.kind == "skew":
            self.replicas[f.target].clock.set_skew(f.value, f.value2)
        elif f.kind == "compact":
            cluster.set_aggressive_compaction(True)
            self._later(f.duration, "compact", f)
        elif f.kind == "watchdrop":
            cluster.break_watches("fault: watch streams dropped")
        elif f.kind == "disk" and cluster.lose_member(f.target):
            self._later(f.duration, "replace", f)

    def _end(self, action: str, f: Fault) -> None:
        self.trace.event("fault.end", kind=f.kind, what=f.describe())
        net, cluster = self.net, self.cluster
        if action == "restart":
            replica = self.replicas[f.target]
            self._restarts.append(self.loop.create_task(replica.start()))
        elif action == "resume":
            self.replicas[f.target].resume()
        elif action == "unisolate":
            net.unisolate(f.target)
        elif action == "unsplit":
            for a in f.target.split(","):
                for b in f.peer.split(","):
                    net.uncut(a, b)
                    net.uncut(b, a)
        elif action == "uncut":
            net.uncut(f.target, f.peer)
        elif action in self._windows:
            self._windows[action][1](f.value)
        elif action == "compact":
            cluster.set_aggressive_compaction(False)
        elif action == "replace":
            cluster.replace_member(f.target)

    async def heal(self) -> None:
        """End every fault: the network, etcd and storage behave, every replica runs."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.trace.event("heal")
        self.net.heal()
        self.cluster.heal()
        self.objects.heal()
        for task in self._restarts:
            if not task.done():
                await task
        for replica in self.replicas.values():
            replica.resume()
            if not replica.up:
                await replica.start()
