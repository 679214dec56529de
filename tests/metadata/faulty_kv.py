"""A KV wrapper that loses write replies, for the unknown-outcome tests
(invariant 7 of docs/invariants.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hareg.kv.base import Compare, Delete, KVUnknownOutcome, Put, TxnOp, TxnResult
from hareg.kv.etcd import EtcdKV


class UnknownOutcomeKV:
    """Delegates to a real KV; the next ``times`` write txns raise
    KVUnknownOutcome, after applying (``apply``) or without sending them, and
    after ``meanwhile`` (another client's race while the reply is lost).  A
    write txn is one that puts a key (or, with ``deletes``, deletes one)."""

    def __init__(
        self,
        inner: EtcdKV,
        *,
        apply: bool,
        times: int = 1,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
        deletes: bool = False,
    ) -> None:
        self.inner = inner
        self.apply = apply
        self.times = times
        self.meanwhile = meanwhile
        self.kinds: tuple[type, ...] = (Put, Delete) if deletes else (Put,)  # the txns that count as writes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        if self.times > 0 and any(isinstance(op, self.kinds) for op in success):
            self.times -= 1
            if self.apply:
                await self.inner.txn(compares, success, failure)
            if self.meanwhile is not None:
                await self.meanwhile()
            raise KVUnknownOutcome("simulated lost reply")
        return await self.inner.txn(compares, success, failure)
