"""The simulated network between clients, replicas, etcd members and storage.

Nodes are names: ``c<i>`` clients, ``r<i>`` replicas, ``e<i>`` etcd members,
``s3`` the object store, ``x`` another tenant of the etcd cluster.  A message
is a callback delivered after the link's latency, or never:

* a *cut* link (a partition, possibly one-way) refuses new sends at once
  (the sender sees a connection failure) and drops what is in flight;
* a *loss* window drops a fraction of messages silently (the sender times out);
* a *delay* window adds latency;
* a *paused* node (a stopped process) receives nothing until it resumes: its
  messages wait, in order, and are delivered then.

Messages of one stream (a watch) are delivered in the order sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable

from sim.loop import SimLoop
from sim.trace import Trace

# (min, max) one-way latency in seconds, by the kinds of the two ends.
_LATENCY: dict[str, tuple[float, float]] = {
    "cr": (0.0005, 0.003),
    "re": (0.0003, 0.0015),
    "ee": (0.0003, 0.001),
    "xe": (0.0003, 0.0015),
    "rs": (0.002, 0.010),
}
_LATENCY.update({k[::-1]: v for k, v in list(_LATENCY.items())})
_DEFAULT_LATENCY = (0.0005, 0.002)
_STREAM_GAP = 1e-6  # keeps deliveries of one stream strictly ordered in time


class Pending:
    """A reply someone waits for, with the caller's timeout.

    No timer runs while things go well: whoever loses the request or its reply
    (the network, a member holding it through an election, a fault) calls
    ``lost()``, which makes the wait end with ``TIMED_OUT`` at the deadline,
    when the caller's own timer would have fired."""

    TIMED_OUT = object()
    __slots__ = ("_loop", "_timer", "deadline", "fut")

    def __init__(self, loop: SimLoop, deadline: float) -> None:
        self._loop = loop
        self.deadline = deadline
        self.fut: asyncio.Future[object] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    def resolve(self, value: object) -> None:
        if not self.fut.done():
            self.fut.set_result(value)

    def lost(self) -> None:
        if self._timer is None and not self.fut.done():
            self._timer = self._loop.call_at(self.deadline, self.resolve, Pending.TIMED_OUT)


class Network:
    def __init__(self, loop: SimLoop, rng: random.Random, trace: Trace) -> None:
        self.loop = loop
        self.rng = rng
        self.trace = trace
        self._cuts: dict[tuple[str, str], int] = {}  # directed link -> how many faults cut it
        self._isolated: dict[str, int] = {}  # node -> how many faults isolate it
        self._loss: list[float] = []  # active loss windows (probabilities)
        self._delay: list[float] = []  # active delay windows (max extra seconds)
        # node -> deliveries held (with the context they were sent in)
        self._paused: dict[str, list[tuple[contextvars.Context, Callable[[], None]]]] = {}
        self._resumed: dict[str, asyncio.Future[None]] = {}
        self._streams: dict[object, float] = {}  # stream -> time of its last delivery
        # Streams that lost a message: like a TCP connection, nothing after the
        # loss reaches the other end (a later message must not skip a lost one).
        self._dead_streams: set[object] = set()
        self.sent = 0
        self.dropped = 0

    # -- state ----------------------------------------------------------------

    def is_cut(self, src: str, dst: str) -> bool:
        if not self._cuts and not self._isolated:
            return False
        return (src, dst) in self._cuts or src in self._isolated or dst in self._isolated

    def connected(self, a: str, b: str) -> bool:
        """Both directions work (what a TCP connection needs)."""
        return not self.is_cut(a, b) and not self.is_cut(b, a)

    def is_paused(self, node: str) -> bool:
        return node in self._paused

    def latency(self, src: str, dst: str) -> float:
        lo, hi = _LATENCY.get(src[0] + dst[0], _DEFAULT_LATENCY)
        delay = lo + (hi - lo) * self.rng.random()
        if self._delay:
            delay += max(self._delay) * self.rng.random()
        return delay

    # -- faults ---------------------------------------------------------------

    def cut(self, src: str, dst: str) -> None:
        self._cuts[(src, dst)] = self._cuts.get((src, dst), 0) + 1

    def uncut(self, src: str, dst: str) -> None:
        n = self._cuts.get((src, dst), 0) - 1
        if n > 0:
            self._cuts[(src, dst)] = n
        else:
            self._cuts.pop((src, dst), None)

    def isolate(self, node: str) -> None:
        self._isolated[node] = self._isolated.get(node, 0) + 1

    def unisolate(self, node: str) -> None:
        n = self._isolated.get(node, 0) - 1
        if n > 0:
            self._isolated[node] = n
        else:
            self._isolated.pop(node, None)

    def add_loss(self, p: float) -> None:
        self._loss.append(p)

    def remove_loss(self, p: float) -> None:
        if p in self._loss:
            self._loss.remove(p)

    def add_delay(self, extra: float) -> None:
        self._delay.append(extra)

    def remove_delay(self, extra: float) -> None:
        if extra in self._delay:
            self._delay.remove(extra)

    def pause(self, node: str) -> None:
        self._paused.setdefault(node, [])

    def resume(self, node: str) -> None:
        held = self._paused.pop(node, None)
        if held is None:
            return
        for context, deliver in held:
            self.loop.call_soon(deliver, context=context)
        fut = self._resumed.pop(node, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def heal(self) -> None:
        """End every network fault (pauses are the replicas' business)."""
        self._cuts.clear()
        self._isolated.clear()
        self._loss.clear()
        self._delay.clear()

    async def wait_running(self, node: str) -> None:
        """Return once ``node`` is not paused (a paused process makes no progress)."""
        while node in self._paused:
            fut = self._resumed.get(node)
            if fut is None or fut.done():
                fut = self._resumed[node] = self.loop.create_future()
            await asyncio.shield(fut)

    # -- sending ----------------------------------------------------------------

    def send(
        self,
        src: str,
        dst: str,
        deliver: Callable[[], None],
        *,
        stream: object | None = None,
        on_drop: Callable[[], None] | None = None,
        size: int = 0,
        extra: float = 0.0,
    ) -> bool:
        """Send a message; False (and nothing sent) if the link is cut right now.

        ``deliver`` runs at the destination after the latency, unless the
        message is lost (``on_drop`` then runs instead, at delivery time).
        ``size`` bytes add transfer time (about 1 GB/s), ``extra`` seconds the
        time the destination takes before it acts on the message."""
        if self.is_cut(src, dst):
            return False
        self.sent += 1
        lost = bool(self._loss) and self.rng.random() < max(self._loss)
        delay = self.latency(src, dst) + size * 1e-9 + extra
        when = self.loop.time() + delay
        if stream is not None:
            when = max(when, self._streams.get(stream, 0.0) + _STREAM_GAP)
            self._streams[stream] = when
        self.loop.call_at(when, self._arrive, src, dst, deliver, lost, on_drop, stream)
        return True

    def close_stream(self, stream: object) -> None:
        self._streams.pop(stream, None)
        self._dead_streams.discard(stream)

    def _arrive(
        self,
        src: str,
        dst: str,
        deliver: Callable[[], None],
        lost: bool,
        on_drop: Callable[[], None] | None,
        stream: object | None = None,
    ) -> None:
        if stream is not None and stream in self._dead_streams:
            lost = True
        if lost or self.is_cut(src, dst):
            if stream is not None and stream in self._streams:
                self._dead_streams.add(stream)
            self.dropped += 1
            if on_drop is not None:
                on_drop()
            return
        held = self._paused.get(dst)
        if held is not None:
            held.append((contextvars.copy_context(), deliver))
            return
        deliver()
