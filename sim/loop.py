"""A deterministic asyncio event loop on virtual time.

``SimLoop`` is asyncio's own ``BaseEventLoop`` (so tasks, futures, timeouts,
locks and queues behave exactly as in production) with three changes:

* ``time()`` is a virtual clock.  When no callback is ready the loop does not
  wait: it jumps to the next timer.  Timers due at the same instant run in
  the order they were scheduled, so a run is a pure function of its inputs.
* There is no selector and no self-pipe: nothing can wake the loop from
  outside.  A loop with no ready callback and no timer is deadlocked, which
  raises ``SimulationDeadlock`` instead of hanging.
* Every way out of the simulation raises ``SimulationViolation`` at once:
  sockets, name resolution, executors (hence threads and ``to_thread``),
  subprocesses, signal handlers, pipes, ``call_soon_threadsafe``; and, while
  the loop runs, ``time.sleep``, starting a thread and creating any socket
  or subprocess through any API (an audit hook and two patches that are
  undone when the run ends).

Tasks carry an *owner* (the simulated process that created them, read from
the ``OWNER`` context variable when the task is created and inherited by the
tasks it creates), so a crash can cancel exactly one process's tasks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import gc
import heapq
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, NoReturn, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# The simulated process a task belongs to ("" for the simulator itself).
OWNER: contextvars.ContextVar[str] = contextvars.ContextVar("sim_owner", default="")

# Audit events that leave the simulation (CPython's audit event table).
_FORBIDDEN_AUDIT = (
    "socket.__new__",
    "socket.connect",
    "socket.bind",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "subprocess.Popen",
    "os.system",
    "os.posix_spawn",
    "os.fork",
    "os.exec",
    "os.spawn",
    "os.startfile",
)


class SimulationViolation(RuntimeError):
    """Simulated code tried to touch the real world (I/O, threads, wall clock)."""


class SimulationDeadlock(RuntimeError):
    """Nothing is ready and no timer is pending: the simulation cannot progress."""


def _running_sim_loop() -> SimLoop | None:
    loop = asyncio._get_running_loop()
    return loop if isinstance(loop, SimLoop) else None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _FORBIDDEN_AUDIT and _running_sim_loop() is not None:
        raise SimulationViolation(f"{event} inside the simulation")


@functools.cache
def _install_audit_hook() -> None:
    """Audit hooks cannot be removed, so the hook is installed once per process
    and does nothing unless a SimLoop is running in the calling thread."""
    sys.addaudithook(_audit)


def _refusal(what: str) -> Any:
    """A loop method that raises SimulationViolation (at the call, even for
    coroutine methods, so the offending line is in the traceback)."""

    def refuse(self: SimLoop, *args: Any, **kwargs: Any) -> NoReturn:
        raise SimulationViolation(f"{what} is not available inside the simulation")

    refuse.__name__ = f"refused_{what.split()[0]}"
    return refuse


class _NoSelector:
    """BaseEventLoop wants a selector to close; SimLoop never selects."""

    def close(self) -> None:
        pass


class SimLoop(asyncio.BaseEventLoop):
    """asyncio's event loop on virtual time, sealed off from real I/O."""

    # BaseEventLoop's internals this class works with (not in the type stubs).
    _ready: collections.deque[asyncio.Handle]
    _stopping: bool
    _asyncgens: Any

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self._now = start
        self._selector = _NoSelector()
        self._clock_resolution = 1e-9
        # Timers as (when, sequence, handle): ties run in the order they were
        # scheduled, and the heap compares tuples in C instead of calling
        # TimerHandle.__lt__ (the loop's own bookkeeping was a third of a run).
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._timer_seq = 0
        self._timers_cancelled = 0
        self.set_debug(False)
        self.steps = 0  # callbacks run (a cost measure)
        # Tasks by owner, in creation order (a dict keeps the order deterministic).
        self._owned: dict[str, dict[asyncio.Task[Any], None]] = {}
        super().set_task_factory(self._make_task)  # type: ignore[arg-type]
        # Exceptions escaping callbacks are simulator bugs: kept, and the run fails.
        self.errors: list[str] = []
        self.set_exception_handler(self._on_error)
        _install_audit_hook()

    # -- time ----------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if "handle" in context or isinstance(exc, SimulationViolation):
            self.errors.append(f"{context.get('message', '')}: {type(exc).__name__}: {exc}")
        # Otherwise: a future's exception nobody retrieved (the registry's own business).

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        self._check_closed()  # type: ignore[attr-defined]
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, timer))
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def call_soon(
        self, callback: Callable[[*Ts], object], *args: *Ts, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        # BaseEventLoop's version adds debug-mode checks through two more calls.
        self._check_closed()  # type: ignore[attr-defined]
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        if not handle._scheduled:  # type: ignore[attr-defined]
            return
        self._timers_cancelled += 1
        # Drop cancelled timers in bulk once they are most of the heap (every
        # request's timeout is cancelled when the reply comes).
        if self._timers_cancelled > 256 and 2 * self._timers_cancelled > len(self._timers):
            keep = []
            for entry in self._timers:
                if entry[2]._cancelled:
                    entry[2]._scheduled = False  # type: ignore[attr-defined]
                else:
                    keep.append(entry)
            heapq.heapify(keep)
            self._timers = keep
            self._timers_cancelled = 0

    def _run_once(self) -> None:
        """One iteration: run what is ready; with nothing ready, jump to the next
        timer (BaseEventLoop would wait on its selector here)."""
        ready, timers = self._ready, self._timers
        if not ready and not self._stopping:
            when = self.next_timer()
            if when is None:
                raise SimulationDeadlock(
                    f"deadlock at t={self._now:.6f}: no callback is ready and no timer is pending"
                )
            if when > self._now:
                self._now = when  # exactly the timer's time: no float drift
        end = self._now + self._clock_resolution
        while timers and timers[0][0] < end:
            timer = heapq.heappop(timers)[2]
            timer._scheduled = False  # type: ignore[attr-defined]
            if timer._cancelled:
                self._timers_cancelled -= 1
            else:
                ready.append(timer)
        n = len(ready)
        self.steps += n or 1
        for _ in range(n):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    def next_timer(self) -> float | None:
        """When the earliest pending timer fires (None if there is none)."""
        timers = self._timers
        while timers and timers[0][2]._cancelled:
            heapq.heappop(timers)[2]._scheduled = False  # type: ignore[attr-defined]
            self._timers_cancelled -= 1
        return timers[0][0] if timers else None

    # -- the pieces BaseEventLoop leaves to subclasses -------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        # An async generator dropped mid-iteration is closed on the loop (not
        # through call_soon_threadsafe, which the simulation forbids).
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon(self.create_task, agen.aclose())

    # -- task ownership ----------------------------------------------------------

    def _make_task(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        owner = context.get(OWNER) if context is not None else OWNER.get()
        if owner:
            tasks = self._owned.setdefault(owner, {})
            tasks[task] = None
            if len(tasks) > 512:  # forget finished tasks now and then (cheaper than a callback each)
                for done in [t for t in tasks if t.done()]:
                    del tasks[done]
        return task

    def set_task_factory(self, factory: Any) -> NoReturn:
        raise SimulationViolation("the simulation owns the task factory")

    def create_owned_task(
        self, owner: str, coro: Coroutine[Any, Any, T], name: str | None = None
    ) -> asyncio.Task[T]:
        """A task run as (and owned by) the simulated process ``owner``."""
        context = contextvars.copy_context()
        context.run(OWNER.set, owner)
        return self.create_task(coro, name=name, context=context)

    def cancel_owned(self, owner: str) -> int:
        """Cancel every live task of ``owner`` (a crash); returns how many."""
        tasks = self._owned.pop(owner, {})
        n = 0
        for task in list(tasks):
            if not task.done():
                task.cancel()
                n += 1
        return n

    # -- everything that would leave the simulation -------------------------------

    call_soon_threadsafe = _refusal("call_soon_threadsafe (threads)")
    run_in_executor = _refusal("run_in_executor (threads)")
    set_default_executor = _refusal("an executor")
    getaddrinfo = _refusal("name resolution")
    getnameinfo = _refusal("name resolution")
    create_connection = _refusal("a real connection")
    create_server = _refusal("a real server")
    create_unix_connection = _refusal("a real connection")
    create_unix_server = _refusal("a real server")
    create_datagram_endpoint = _refusal("a real socket")
    connect_accepted_socket = _refusal("a real socket")
    sock_connect = _refusal("a real socket")
    sock_accept = _refusal("a real socket")
    sock_recv = _refusal("a real socket")
    sock_recv_into = _refusal("a real socket")
    sock_recvfrom = _refusal("a real socket")
    sock_sendall = _refusal("a real socket")
    sock_sendto = _refusal("a real socket")
    sock_sendfile = _refusal("a real socket")
    sendfile = _refusal("sendfile")
    start_tls = _refusal("TLS on a real socket")
    connect_read_pipe = _refusal("a pipe")
    connect_write_pipe = _refusal("a pipe")
    subprocess_exec = _refusal("a subprocess")
    subprocess_shell = _refusal("a subprocess")
    add_reader = _refusal("a file descriptor")
    add_writer = _refusal("a file descriptor")
    add_signal_handler = _refusal("a signal handler")

    # -- running -------------------------------------------------------------------

    def run_until_complete(self, future: Any) -> Any:
        with _sealed():
            return super().run_until_complete(future)


def _refuse_sleep(real: Callable[[float], None]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if _running_sim_loop() is not None:
            raise SimulationViolation("time.sleep (wall clock) inside the simulation")
        real(seconds)

    return sleep


def _refuse_thread(real: Callable[[threading.Thread], None]) -> Callable[[threading.Thread], None]:
    def start(self: threading.Thread) -> None:
        if _running_sim_loop() is not None:
            raise SimulationViolation("starting a thread inside the simulation")
        real(self)

    return start


@contextlib.contextmanager
def _sealed() -> Iterator[None]:
    """While the loop runs: no wall-clock sleeps, no threads, and no cyclic GC
    (finalizers that run at GC-chosen moments would make runs differ); the
    cycles are collected once the run is over."""
    real_sleep, real_start = time.sleep, threading.Thread.start
    gc_was_enabled = gc.isenabled()
    time.sleep = _refuse_sleep(real_sleep)  # type: ignore[assignment]
    threading.Thread.start = _refuse_thread(real_start)  # type: ignore[method-assign,assignment]
    gc.disable()
    try:
        yield
    finally:
        time.sleep = real_sleep
        threading.Thread.start = real_start  # type: ignore[method-assign]
        if gc_was_enabled:
            gc.enable()


def run(main: Coroutine[Any, Any, T], start: float = 0.0) -> tuple[T, SimLoop]:
    """Run ``main`` to completion on a fresh SimLoop; returns its result and the
    (closed) loop, whose ``time()`` is the virtual time the run took."""
    loop = SimLoop(start)
    try:
        result = loop.run_until_complete(main)
    finally:
        _close(loop)
    return result, loop


def _close(loop: SimLoop) -> None:
    # Cancel what is left so no coroutine is left un-awaited, then close.
    with _sealed():
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(BaseException):
                super(SimLoop, loop).run_until_complete(_drain(pending))
    loop.close()


async def _drain(tasks: list[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
