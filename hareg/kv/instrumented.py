"""A KV decorator that times every call and reports its outcome.

``InstrumentedKV(inner, observe)`` implements the KV protocol by delegating to
``inner`` and calling ``observe(op, seconds, error)`` after each call, where
``error`` is None on success or the error's kind (``unavailable``,
``unknown_outcome``, ``compacted``, ``no_space``, ``timeout``, ``cancelled``, ``other``).
The server wraps the etcd adapter in it to feed ``hareg_etcd_*`` metrics; the
simulator uses its KV model unwrapped.  At log level Trace every call is also
logged (the operation, its first key and its duration; never a value).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from hareg.kv.base import (
    KV,
    Compare,
    KeyValue,
    KVCompacted,
    KVNoSpace,
    KVUnavailable,
    KVUnknownOutcome,
    RangeResult,
    TxnOp,
    TxnResult,
    WatchBatch,
)
from hareg.observability.logs import TRACE

__all__ = ["InstrumentedKV", "Observer", "error_kind"]

log = logging.getLogger("hareg.kv")

Observer = Callable[[str, float, str | None], None]
T = TypeVar("T")


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, KVUnknownOutcome):
        return "unknown_outcome"
    if isinstance(exc, KVUnavailable):
        return "unavailable"
    if isinstance(exc, KVCompacted):
        return "compacted"
    if isinstance(exc, KVNoSpace):
        return "no_space"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "other"


class InstrumentedKV:
    def __init__(self, inner: KV, observe: Observer) -> None:
        self.inner = inner
        self._observe = observe

    async def _call(self, op: str, key: bytes | None, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        error: str | None = None
        try:
            return await call
        except BaseException as exc:
            error = error_kind(exc)
            raise
        finally:
            elapsed = time.perf_counter() - start
            self._observe(op, elapsed, error)
            if log.isEnabledFor(TRACE):
                log.log(
                    TRACE,
                    "etcd %s",
                    op,
                    extra={
                        "fields": {
                            "etcd_op": op,
                            "etcd_key": key.decode(errors="replace") if key is not None else None,
                            "duration_ms": round(elapsed * 1000, 3),
                            "error": error,
                        }
                    },
                )

    async def get(self, key: bytes) -> KeyValue | None:
        return await self._call("get", key, self.inner.get(key))

    async def range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
    ) -> RangeResult:
        return await self._call(
            "range",
            start,
            self.inner.range(start, end, limit=limit, revision=revision, keys_only=keys_only),
        )

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        first = success[0].key if success else (compares[0].key if compares else None)
        return await self._call("txn", first, self.inner.txn(compares, success, failure))

    async def current_revision(self) -> int:
        return await self._call("current_revision", None, self.inner.current_revision())

    async def grant_lease(self, ttl: int) -> int:
        return await self._call("grant_lease", None, self.inner.grant_lease(ttl))

    async def refresh_lease(self, lease_id: int) -> int:
        return await self._call("refresh_lease", None, self.inner.refresh_lease(lease_id))

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call("revoke_lease", None, self.inner.revoke_lease(lease_id))

    async def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Passed through; a watch that ends with an error counts as one failed ``watch`` call."""
        started = time.perf_counter()
        inner = self.inner.watch(start, end, start_revision)
        try:
            async for batch in inner:
                yield batch
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            self._observe("watch", time.perf_counter() - started, error_kind(exc))
            raise
        finally:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()

    def request_watch_progress(self) -> None:
        self.inner.request_watch_progress()

    async def close(self) -> None:
        await self.inner.close()
