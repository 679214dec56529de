"""Runtime access state in etcd: role grants and robot accounts.

What ``hareg access grant|revoke|robot`` changes (the configuration's own
bindings are not here: they come with the file).  Reads are linearizable
like tag reads: ``view()`` passes the read barrier once and answers from the
cache, so a grant or revoke acknowledged by any replica is seen by the next
request every replica admits.

Writes are not refused by the cluster read-only switch: an operator must be
able to revoke access (or create the robot account that will restore the
registry) while pushes are frozen.  A write whose reply was lost is verified
by reading back its own value (a write id in the record), never by "the key
exists", which another grant of the same binding would satisfy as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hareg.kv.base import Compare, Delete, Get, KVUnknownOutcome, Put, RangeResult, TxnOp
from hareg.metadata.barrier import Freshness
from hareg.metadata.errors import Contended, MetadataError
from hareg.metadata.records import GrantRecord, RobotRecord, decode, encode
from hareg.metadata.writes import StoreBase
from hareg.plants import planted

__all__ = ["MAX_GRANTS", "MAX_ROBOTS", "AccessMetadata", "AccessView", "MissingSubject", "TooMany"]

# Bounds on what cluster-admins can store (every replica mirrors all of it and
# checks every binding on every request).
MAX_GRANTS: Final = 10_000
MAX_ROBOTS: Final = 1_000


class MissingSubject(MetadataError):
    """A grant to a robot account that does not exist (any more)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: the robot account does not exist")


class TooMany(MetadataError):
    """The store already holds the maximum number of grants or robot accounts."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"at most {limit} {what} can be stored; remove some first")
        self.what = what
        self.limit = limit


@dataclass(frozen=True, slots=True)
class AccessView:
    """The runtime grants (and one robot account, if asked for) as of one
    linearizable read.  ``version`` identifies the grants: the same number
    means the same grants (None: read from etcd, derive anew)."""

    grants: tuple[GrantRecord, ...]
    version: int | None
    robot: RobotRecord | None = None
    # False: read from the cache while etcd was unreachable (the grants as the
    # replica last heard of them; a revoke made meanwhile is not in them).
    current: bool = True


class AccessMetadata(StoreBase):
    async def access_view(self, robot: str | None = None) -> AccessView:
        """The grants, and robot account ``robot``, once the cache reflects
        every change acknowledged before this call (etcd when it cannot)."""
        cache, barrier = self.cache, self.barrier
        if cache is not None and barrier is not None:
            # PLANTED BUG "access-no-barrier" (simulator only): the cache taken as current unsynced.
            unsynced = planted("access-no-barrier") and cache.ready
            freshness = Freshness.CURRENT if unsynced else await barrier.sync()
            if freshness is Freshness.CURRENT and not unsynced:
                barrier.lend()  # the request's next read needs no sync of its own
            if freshness is not Freshness.UNCACHED:
                return AccessView(
                    cache.grants(),
                    cache.access_version,
                    cache.robot(robot) if robot else None,
                    current=freshness is Freshness.CURRENT,
                )
        start, end = self.keys.grants()
        ops: list[TxnOp] = [Get(start, end)]
        if robot:
            ops.append(Get(self.keys.robot(robot)))
        result = await self.kv.txn([], ops)
        found = result.responses
        assert isinstance(found[0], RangeResult)
        grants = tuple(decode(GrantRecord, kv.value) for kv in found[0].kvs)
        record = None
        if robot:
            assert isinstance(found[1], RangeResult)
            record = decode(RobotRecord, found[1].kvs[0].value) if found[1].kvs else None
        return AccessView(grants, None, record)

    async def list_robots(self) -> list[tuple[str, RobotRecord]]:
        result = await self._range_all(self.keys.robots())
        return [(self.keys.strip("a", kv.key), decode(RobotRecord, kv.value)) for kv in result.kvs]

    # ------------------------------------------------------------------ writes

    async def add_grant(
        self, subject: str, role: str, pattern: str, by: str, *, robot: str | None = None
    ) -> bool:
        """Bind ``role`` on ``pattern`` to ``subject``; False if it was already.
        ``robot``: the subject is that robot account, which must exist when
        the grant commits (so a grant racing the account's deletion cannot
        outlive it and pass to a later account of the same name)."""
        key = self.keys.grant(subject, role, pattern)
        record = GrantRecord(subject, role, pattern, self.clock.now(), by, self.ids.new_id())
        needs = [Compare.exists(self.keys.robot(robot))] if robot else []
        return await self._create(key, encode(record), "grants", self.keys.grants(), MAX_GRANTS, needs)

    async def remove_grant(self, subject: str, role: str, pattern: str) -> bool:
        """Unbind it; False if there was no such grant."""
        return await self._remove(self.keys.grant(subject, role, pattern))

    async def add_robot(self, name: str, secret_sha256: str, by: str) -> bool:
        """Create robot account ``name``; False if one of that name exists."""
        record = RobotRecord(secret_sha256, self.clock.now(), by, self.ids.new_id())
        return await self._create(
            self.keys.robot(name), encode(record), "robot accounts", self.keys.robots(), MAX_ROBOTS
        )

    async def remove_robot(self, name: str, subject: str) -> bool:
        """Delete robot account ``name`` and every grant to its ``subject``, in
        one transaction; False if there was no such account."""
        start, end = self.keys.grants_of(subject)
        return await self._remove(self.keys.robot(name), also=[Delete(start, end)])

    async def _create(
        self,
        key: bytes,
        value: bytes,
        what: str,
        span: tuple[bytes, bytes],
        limit: int,
        needs: Sequence[Compare] = (),
    ) -> bool:
        if self.barrier is not None:
            self.barrier.take_back()
        for _ in range(self.max_retries):
            self._check_writable()
            if await self._get(key) is not None:
                return False
            stored = await self.kv.range(span[0], span[1], keys_only=True)
            if len(stored.kvs) >= limit:
                raise TooMany(what, limit)
            try:
                done = await self.kv.txn([Compare.missing(key), *needs], [Put(key, value)])
            except KVUnknownOutcome:
                # Done if our own record (its write id) is there.  Otherwise the
                # outcome stays unknown: never sent again, since "missing" holds
                # again once a revoke deletes the key, so a first attempt that
                # arrives late could apply after its re-send, bringing back a
                # grant revoked after our answer (docs/consistency.md).
                found = await self._get(key)
                if found is not None and found.value == value:
                    return True
                raise
            if done.succeeded:
                return True
            if needs and await self._get(key) is None:
                raise MissingSubject(what)
        raise Contended(what)

    async def _remove(self, key: bytes, also: Sequence[TxnOp] = ()) -> bool:
        self._check_writable()
        if self.barrier is not None:
            self.barrier.take_back()
        try:
            result = await self.kv.txn([Compare.exists(key)], [Delete(key), *also])
        except KVUnknownOutcome:
            # Gone is what was asked for, whoever removed it; an unknown
            # outcome that left it in place is reported as such.
            if await self._get(key) is not None:
                raise
            return True
        return result.succeeded
