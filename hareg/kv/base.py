"""The narrow async key-value interface the metadata layer is written against.

It is the subset of etcd's API hareg needs (MVCC revisions, range reads,
transactions with compares, leases, watches), so that the same metadata code
runs on the real etcd adapter and on the simulator's etcd model.

Error contract (invariant 7 of docs/invariants.md depends on it):

* ``KVUnavailable``: the operation was certainly *not* applied (the request
  never reached a leader, or was rejected before apply).  Safe to retry.
* ``KVUnknownOutcome``: the operation may or may not have been applied (a
  timeout or a lost reply after the request was sent).  The caller must verify
  before reporting success, and must never report it as success unverified.
* ``KVRejected``: etcd looked at the request and refused it as it is (too
  large, too many operations in one transaction, a key given twice, ...).
  Nothing was applied, and sending it again will not help: not a retry.
* ``KVCompacted``: a watch or a read at an old revision asked for history that
  was compacted away; the caller re-lists from the current revision.
* ``KVNoSpace``: etcd's space quota is exhausted (its ``NOSPACE`` alarm is
  raised).  The write was certainly *not* applied, and none will be until
  space is freed and the alarm disarmed; reads still work.  Not a retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class KVError(Exception):
    """Base class of every error the KV interface raises."""


class KVUnavailable(KVError):
    """The store could not be reached; the operation was not applied."""


class KVUnknownOutcome(KVError):
    """The operation may or may not have been applied."""


class KVRejected(KVError):
    """etcd refused the request itself; nothing was applied and a retry fails alike.

    ``too_big``: the refusal is about the request's size (bytes, operations,
    a duplicate key), which the request's content decides."""

    def __init__(self, message: str, *, too_big: bool = False) -> None:
        super().__init__(message)
        self.too_big = too_big


class KVNoSpace(KVError):
    """etcd refused a write because its database is at its space quota
    ("mvcc: database space exceeded", the NOSPACE alarm): nothing was applied."""


class KVCompacted(KVError):
    """The requested revision has been compacted away."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class Alarm:
    """An active etcd alarm: ``kind`` is ``"NOSPACE"`` or ``"CORRUPT"``."""

    member_id: int
    kind: str


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One etcd member's own report (etcd's Maintenance.Status)."""

    address: str
    member_id: int
    leader_id: int
    db_size: int  # bytes the database file takes
    db_size_in_use: int  # bytes of it in use; the rest a defragmentation gives back
    db_size_quota: int  # the member's --quota-backend-bytes; 0 where etcd does not say (before 3.5)


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # store revision at which the read was served
    more: bool = False  # more keys exist beyond ``limit``
    count: int = 0  # total keys in the range (ignoring limit)


class Target(Enum):
    VERSION = "version"
    CREATE = "create"
    MOD = "mod"
    VALUE = "value"


class Op(Enum):
    EQUAL = "="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn guard.  With ``range_end`` it must hold for every key in
    ``[key, range_end)``; on an empty range, version/create/mod compare as 0.
    A VALUE compare on a missing key is always false (as in etcd)."""

    key: bytes
    target: Target
    op: Op
    value: int | bytes
    range_end: bytes | None = None

    # Constructors for the common guards, so call sites read as sentences.
    @staticmethod
    def exists(key: bytes) -> Compare:
        return Compare(key, Target.VERSION, Op.GREATER, 0)

    @staticmethod
    def missing(key: bytes) -> Compare:
        return Compare(key, Target.VERSION, Op.EQUAL, 0)

    @staticmethod
    def mod_revision_is(key: bytes, revision: int) -> Compare:
        return Compare(key, Target.MOD, Op.EQUAL, revision)

    @staticmethod
    def range_empty(start: bytes, end: bytes) -> Compare:
        return Compare(start, Target.VERSION, Op.EQUAL, 0, range_end=end)

    @staticmethod
    def range_unchanged_since(start: bytes, end: bytes, revision: int) -> Compare:
        """No key in the range was created or modified after ``revision``
        (deletions are not seen: pair with a read of the range if they matter)."""
        return Compare(start, Target.MOD, Op.LESS, revision + 1, range_end=end)


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    range_end: bytes | None = None


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    range_end: bytes | None = None
    limit: int = 0


TxnOp = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per executed op: a RangeResult for Get, the number of deleted
    # keys for Delete, None for Put.
    responses: list[RangeResult | int | None] = field(default_factory=list)


class EventType(Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    kv: KeyValue  # for DELETE: key and mod_revision (the deletion revision) only


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events of one or more revisions, in order.  ``revision`` is the store
    revision the watcher has seen up to (also sent with no events, as a
    progress notification)."""

    events: list[Event]
    revision: int


def prefix_end(prefix: bytes) -> bytes:
    """The exclusive end of the key range that starts with ``prefix``."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"


class KV(Protocol):
    """Linearizable key-value store with MVCC revisions (etcd semantics)."""

    async def get(self, key: bytes) -> KeyValue | None:
        """Linearizable read of one key."""
        ...

    async def range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
    ) -> RangeResult:
        """Keys in ``[start, end)`` in byte order; ``revision`` 0 means now."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """Atomic: if every compare holds run ``success`` else ``failure``.

        Never retried internally once sent: a timeout raises KVUnknownOutcome.
        """
        ...

    async def current_revision(self) -> int:
        """The store's revision, by a linearizable (quorum) read."""
        ...

    async def grant_lease(self, ttl: int) -> int:
        """A new lease id that expires ``ttl`` seconds after its last refresh."""
        ...

    async def refresh_lease(self, lease_id: int) -> int:
        """Keep a lease alive; returns the remaining TTL, or 0 if it has expired."""
        ...

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys (no error if already gone)."""
        ...

    def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Events in ``[start, end)`` from ``start_revision`` on, resuming after
        disconnects without gaps; raises KVCompacted when history is gone."""
        ...

    def request_watch_progress(self) -> None:
        """Ask every open watch for a progress report now (etcd's
        WatchProgressRequest): an idle watch then yields an empty WatchBatch
        with the store's current revision, so a cache can tell it is caught
        up without waiting for a write.  Best effort; never raises."""
        ...

    async def close(self) -> None: ...


class Maintenance(Protocol):
    """etcd's maintenance calls, beside the KV interface (the real etcd adapter
    has them; the simulator's model does not need them)."""

    async def alarms(self) -> list[Alarm]:
        """The cluster's active alarms."""
        ...

    async def disarm(self, alarm: Alarm) -> None:
        """Deactivate ``alarm`` (no error if it is no longer active)."""
        ...

    async def member_statuses(self) -> list[MemberStatus]:
        """Each member's status, asked of the member itself; a member that
        does not answer is left out."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop the history before ``revision`` (physically, before returning);
        no error if it is compacted already."""
        ...

    async def defragment(self, address: str, timeout: float) -> None:  # noqa: ASYNC109 (a deadline of its own)
        """Defragment the one member at ``address`` (it answers nothing else
        meanwhile), within ``timeout`` seconds."""
        ...
