"""A real etcd connection with hooks that order a race exactly: a test can
hold a transaction until another request has committed, run a request right
after a transaction committed or a range was read, or keep a replica's watch from delivering the
events of some keys (a replica whose view of them lags).  Everything still goes to the real etcd; only the
timing is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from hareg.kv.base import KV, Compare, KeyValue, RangeResult, TxnOp, TxnResult, WatchBatch
from hareg.kv.instrumented import InstrumentedKV

TxnHook = Callable[[Sequence[Compare], Sequence[TxnOp]], Awaitable[None]]
RangeHook = Callable[[bytes, RangeResult], Awaitable[None]]
GetHook = Callable[[bytes], Awaitable[None]]


def _ignore(_op: str, _elapsed: float, _error: str | None) -> None:
    return None


class HookedKV(InstrumentedKV):
    def __init__(self, inner: KV) -> None:
        super().__init__(inner, _ignore)
        self.before_txn: TxnHook | None = None  # awaited before a txn is sent
        self.after_txn: TxnHook | None = None  # awaited after a txn committed (succeeded)
        self.frozen_watch_prefixes: list[bytes] = []  # events of keys there are never delivered
        self.after_range: RangeHook | None = None  # awaited after a range read, with its start key
        self.after_get: GetHook | None = None  # awaited after a single key was read, with the key
        # While cleared, the watch delivers nothing (a replica whose whole view lags).
        self.watch_gate = asyncio.Event()
        self.watch_gate.set()

    async def get(self, key: bytes) -> KeyValue | None:
        found = await super().get(key)
        if self.after_get is not None:
            await self.after_get(key)
        return found

    async def range(
        self, start: bytes, end: bytes, *, limit: int = 0, revision: int = 0, keys_only: bool = False
    ) -> RangeResult:
        result = await super().range(start, end, limit=limit, revision=revision, keys_only=keys_only)
        if self.after_range is not None:
            await self.after_range(start, result)
        return result

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        if self.before_txn is not None:
            await self.before_txn(compares, success)
        result = await super().txn(compares, success, failure)
        if result.succeeded and self.after_txn is not None:
            await self.after_txn(compares, success)
        return result

    async def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        frozen = tuple(self.frozen_watch_prefixes)
        async for batch in super().watch(start, end, start_revision):
            await self.watch_gate.wait()
            if frozen:  # this replica's view of those keys lags for good
                batch = WatchBatch(
                    [e for e in batch.events if not e.kv.key.startswith(frozen)], batch.revision
                )
            yield batch
