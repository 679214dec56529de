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
    write txn is one that puts a key (or, with ``deletes``, deletes one).

    ``late``: a lost txn that was not applied is held, as a request stuck in a
    frozen member's socket, and applies (its compares judged then) when
    ``deliver`` is called, or with ``deliver_before_next_write`` just before
    the next write txn goes through."""

    def __init__(
        self,
        inner: EtcdKV,
        *,
        apply: bool,
        times: int = 1,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
        deletes: bool = False,
        late: bool = False,
        deliver_before_next_write: bool = False,
    ) -> None:
        self.inner = inner
        self.apply = apply
        self.times = times
        self.meanwhile = meanwhile
        self.kinds: tuple[type, ...] = (Put, Delete) if deletes else (Put,)  # the txns that count as writes
        self.late = late
        self.deliver_before_next_write = deliver_before_next_write
        self.held: list[tuple[Sequence[Compare], Sequence[TxnOp], Sequence[TxnOp]]] = []
        self.writes = 0  # write txns asked for, lost ones included

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        write = any(isinstance(op, self.kinds) for op in success)
        self.writes += write
        if write and self.held and self.deliver_before_next_write:
            await self.deliver()
        if self.times > 0 and write:
            self.times -= 1
            if self.apply:
                await self.inner.txn(compares, success, failure)
            elif self.late:
                self.held.append((compares, success, failure))
            if self.meanwhile is not None:
                await self.meanwhile()
            raise KVUnknownOutcome("simulated lost reply")
        return await self.inner.txn(compares, success, failure)

    async def deliver(self) -> list[TxnResult]:
        """Apply the held txns now, in order: what a late request does."""
        held, self.held = self.held, []
        return [await self.inner.txn(*txn) for txn in held]
