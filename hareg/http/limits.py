"""Request limits (``requests.read`` and ``requests.write``), as in OpenShift's registry.

Two independent limiters: reads (GET, HEAD, OPTIONS) and writes (every other
method).  Each lets ``maxRunning`` requests run at once; a request that finds
every slot taken waits, first come first served, in a queue of at most
``maxInQueue`` places for at most ``maxWaitInQueue``.  A request that finds
the queue full, or waits longer, is answered ``429 TOOMANYREQUESTS`` with
``Retry-After``.  The semantics of 0 are those of OpenShift's limiter
(a channel of ``maxRunning`` slots and one of ``maxInQueue`` places):

* ``maxRunning: 0`` — no limit at all (the other two must then be 0 too);
* ``maxInQueue: 0`` — no waiting room: with every slot busy, 429 at once;
* ``maxWaitInQueue: 0`` — a queued request waits as long as it takes.

A request holds its slot until its response is completely sent, so a
limit on reads bounds the blob bytes being streamed at once.  Health,
readiness, metrics, ``/hareg/v1/status`` and ``/hareg/v1/read-only`` are
exempt: a saturated replica can still be probed, scraped and switched to
read-only; so is ``/hareg/v1/fsck``, which runs for as long as reading the
whole blob store takes and admits one check at a time on its own.
Everything else (the ``/hareg/v1/`` extensions too) is limited.

Limits are per replica and can be changed while running (SIGHUP):
``configure`` applies new limits at once (waiters are admitted if slots
opened; requests already running keep their slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator

from aiohttp import web

from hareg.config.model import RequestLimits, RequestsConfig
from hareg.http.base import Handler
from hareg.http.observe import send_now
from hareg.observability.logs import TRACE
from hareg.registry import policy
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.policy import RequestClass

__all__ = [
    "LIMITS",
    "Limiter",
    "Rejected",
    "RequestLimiters",
    "run_limited",
]

log = logging.getLogger("hareg.limits")

# Which requests are reads, writes or exempt is the service layer's rule
# (hareg/registry/policy.py: request_class); this module holds the limiters.
RETRY_AFTER = "1"


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "queue_full" or "timeout"


class Limiter:
    """``max_running`` slots and a bounded FIFO queue in front of them."""

    def __init__(self, kind: str, limits: RequestLimits | None = None) -> None:
        self.kind = kind
        self.limits = limits or RequestLimits()
        self.running = 0
        self.rejected: dict[str, int] = {"queue_full": 0, "timeout": 0}
        self._waiters: deque[asyncio.Future[None]] = deque()

    # The limits, as the metrics collector reads them.
    @property
    def max_running(self) -> int:
        return self.limits.max_running

    @property
    def max_in_queue(self) -> int:
        return self.limits.max_in_queue

    @property
    def max_wait_in_queue(self) -> float:
        return self.limits.max_wait_in_queue

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def configure(self, limits: RequestLimits) -> None:
        self.limits = limits
        self._admit()

    def _has_slot(self) -> bool:
        return self.limits.max_running == 0 or self.running < self.limits.max_running

    def _admit(self) -> None:
        while self._waiters and self._has_slot():
            fut = self._waiters.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed; raises Rejected."""
        if self._has_slot() and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.limits.max_in_queue:
            self.rejected["queue_full"] += 1
            raise Rejected("queue_full")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "request queued", extra={"fields": {"limiter": self.kind, "queued": self.queued}})
        try:
            await asyncio.wait((fut,), timeout=self.limits.max_wait_in_queue or None)
        except asyncio.CancelledError:  # the client went away while queued
            if fut.done() and not fut.cancelled():
                self.release()  # a slot was handed over just now: pass it on
            else:
                self._drop(fut)
            raise
        if fut.done():
            return  # admitted: _admit counted the slot as running
        self._drop(fut)
        self.rejected["timeout"] += 1
        raise Rejected("timeout")

    def _drop(self, fut: asyncio.Future[None]) -> None:
        fut.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)

    def release(self) -> None:
        self.running -= 1
        self._admit()


class RequestLimiters:
    """The read and the write limiter of one replica."""

    def __init__(self, config: RequestsConfig | None = None) -> None:
        config = config or RequestsConfig()
        self.read = Limiter("read", config.read)
        self.write = Limiter("write", config.write)

    def configure(self, config: RequestsConfig) -> None:
        self.read.configure(config.read)
        self.write.configure(config.write)

    def for_class(self, kind: RequestClass) -> Limiter | None:
        """The limiter a request of this class waits for; None: it is exempt."""
        if kind is RequestClass.EXEMPT:
            return None
        return self.read if kind is RequestClass.READ else self.write

    def __iter__(self) -> Iterator[Limiter]:
        return iter((self.read, self.write))


LIMITS = web.AppKey("limits", RequestLimiters)


def _too_many(limiter: Limiter, reason: str) -> RegistryError:
    limits = limiter.limits
    if reason == "timeout":
        why = f"waited {limits.max_wait_in_queue:g}s in the {limiter.kind} queue without getting a slot"
    elif limits.max_in_queue == 0:
        why = f"all {limits.max_running} {limiter.kind} slots are busy (no queue)"
    else:
        why = f"all {limits.max_running} {limiter.kind} slots are busy and the queue of {limits.max_in_queue} is full"
    return RegistryError(
        ErrorCode.TOOMANYREQUESTS,
        f"too many requests: {why}; retry later",
        detail={"limit": limiter.kind, "reason": reason},
        headers={"Retry-After": RETRY_AFTER},
    )


async def run_limited(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler`` in a slot of the request's limiter (the last admission check)."""
    limiter = request.app[LIMITS].for_class(policy.request_class(request.method, request.path))
    if limiter is None:
        return await handler(request)
    try:
        await limiter.acquire()
    except Rejected as exc:
        log.debug("request rejected", extra={"fields": {"limiter": limiter.kind, "reason": exc.reason}})
        raise _too_many(limiter, exc.reason) from None
    try:
        response = await handler(request)
        # Hold the slot until the response is sent (aiohttp would send it after we return).
        await send_now(request, response)
        return response
    finally:
        limiter.release()
