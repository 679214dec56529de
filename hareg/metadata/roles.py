"""Roles a replica holds through a key under an etcd lease of its own.

A role's key is written under a fresh lease (``grant_lease`` then one
transaction, with the role's compares) and kept by refreshing the lease every
third of its TTL.  The key disappears by itself within the TTL after the
replica stops refreshing (kill -9, a pause, a partition), so a role is never
held by a dead replica for longer than that.  A lease that etcd reports
expired, or that could not be refreshed for a whole TTL, is dropped and the
role taken again.

Two roles use it:

- ``Membership``: every replica keeps a record of itself, so ``members()``
  is the set of replicas alive now.
- ``Leadership``: the replica whose transaction creates the key leads until
  its lease lapses.  The key's value is a token unique to that tenure, and
  the leader puts ``fence()`` — "the leader key still holds my token" — into
  every transaction it must only make as leader.  A leader paused past its
  lease, or cut off from etcd, may still *believe* it leads when it wakes,
  but its fenced transactions fail: another replica's token is in the key,
  or none is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hareg import __version__
from hareg.clock import Clock
from hareg.ids import IdSource
from hareg.kv.base import KV, Compare, KVError, Op, Put, Target
from hareg.metadata.keys import Keys
from hareg.metadata.records import MemberRecord, decode, encode

__all__ = ["Leadership", "LeasedRole", "Membership"]


class LeasedRole:
    """A key kept under this replica's own lease; subclasses say what it holds
    (``_value``), when it may be taken (``_compares``) and what to log."""

    def __init__(self, kv: KV, key: bytes, clock: Clock, *, ttl: int, log: logging.Logger) -> None:
        self.kv = kv
        self.key = key
        self.clock = clock
        self.ttl = ttl
        self.log = log
        self.lease: int | None = None
        self._renewed = 0.0  # monotonic time of the last grant or refresh etcd confirmed

    @property
    def held(self) -> bool:
        """The key is ours and the lease was confirmed within its TTL (etcd counts
        the TTL from before our confirmation arrived, so it cannot have lapsed)."""
        return self.lease is not None and self.clock.monotonic() - self._renewed < self.ttl

    def _value(self) -> bytes:
        raise NotImplementedError

    def _compares(self) -> Sequence[Compare]:
        return ()

    def _taken(self, value: bytes) -> None:
        """The key now holds ``value`` under our lease."""

    def _dropped(self, why: str) -> None:
        """The lease was given up (expired, unreachable or resigned)."""

    async def _take(self) -> bool:
        """Write the key under a new lease; False if the compares did not hold."""
        lease = await self.kv.grant_lease(self.ttl)
        value = self._value()
        result = await self.kv.txn(list(self._compares()), [Put(self.key, value, lease=lease)])
        if not result.succeeded:
            await self.kv.revoke_lease(lease)
            return False
        self.lease = lease
        self._renewed = self.clock.monotonic()
        self._taken(value)
        return True

    def _drop(self, why: str) -> None:
        if self.lease is not None:
            self.lease = None
            self._dropped(why)

    async def run(self) -> None:
        """Take the role, then keep the lease alive; take it again after it lapses."""
        while True:
            try:
                if self.lease is None:
                    await self._take()
                elif await self.kv.refresh_lease(self.lease) > 0:
                    self._renewed = self.clock.monotonic()
                else:
                    self._drop("lease expired")
                    continue  # take it again at once
            except KVError as exc:
                self.log.warning("%s: etcd did not answer: %s", type(self).__name__.lower(), exc)
                if self.lease is not None and not self.held:
                    self._drop(f"etcd unreachable for the lease TTL ({exc})")
            await self.clock.sleep(self.ttl / 3)

    async def release(self) -> None:
        """Give the role up now (a clean stop): revoking the lease deletes the key."""
        lease = self.lease
        self._drop("released")
        if lease is not None:
            try:
                await self.kv.revoke_lease(lease)
            except KVError as exc:  # it will expire by itself
                self.log.warning(
                    "could not revoke the lease of %s: %s", self.key.decode(errors="replace"), exc
                )


class Membership(LeasedRole):
    """Replica membership: each replica keeps its record under its own lease."""

    def __init__(self, kv: KV, keys: Keys, clock: Clock, replica: str, url: str, *, ttl: int = 10) -> None:
        super().__init__(kv, keys.member(replica), clock, ttl=ttl, log=logging.getLogger("hareg.membership"))
        self.keys = keys
        self.replica = replica
        self.url = url

    def _value(self) -> bytes:
        return encode(MemberRecord(self.replica, self.url, self.clock.now(), __version__))

    def _taken(self, value: bytes) -> None:
        self.log.info("registered replica", extra={"fields": {"replica": self.replica, "lease": self.lease}})

    async def leave(self) -> None:
        await self.release()

    async def members(self) -> list[MemberRecord]:
        result = await self.kv.range(*self.keys.members())
        return [decode(MemberRecord, kv.value) for kv in result.kvs]


class Leadership(LeasedRole):
    """Leader election with a fencing token; ``name`` says what is led (for logs)."""

    def __init__(
        self,
        kv: KV,
        key: bytes,
        identity: str,
        clock: Clock,
        ids: IdSource,
        *,
        ttl: int = 10,
        name: str = "leadership",
    ) -> None:
        super().__init__(kv, key, clock, ttl=ttl, log=logging.getLogger("hareg.leadership"))
        self.identity = identity
        self.ids = ids
        self.name = name
        self._token: bytes | None = None
        self.terms = 0

    @property
    def is_leader(self) -> bool:
        """Whether this replica believes it leads (fence() is what makes acting on that safe)."""
        return self._token is not None and self.held

    def fence(self) -> list[Compare]:
        token = self._token or b"\x00not-the-leader"
        return [Compare(self.key, Target.VALUE, Op.EQUAL, token)]

    async def confirm(self) -> bool:
        """Whether this replica still leads, as etcd says now (a linearizable
        read of the key): for work that no transaction can fence, such as
        defragmenting an etcd member, checked before each step."""
        token = self._token
        if token is None or not self.held:
            return False
        current = await self.kv.get(self.key)
        return current is not None and current.value == token

    async def leader(self) -> str | None:
        """The identity of the current leader, from etcd."""
        kv = await self.kv.get(self.key)
        return kv.value.decode().split("#", 1)[0] if kv else None

    def _value(self) -> bytes:
        return f"{self.identity}#{self.ids.new_id()}".encode()

    def _compares(self) -> Sequence[Compare]:
        return [Compare.missing(self.key)]

    def _taken(self, value: bytes) -> None:
        self._token = value
        self.terms += 1
        self.log.info("%s acquired", self.name, extra={"fields": {"replica": self.identity}})

    def _dropped(self, why: str) -> None:
        self._token = None
        if why != "released":
            self.log.warning("%s lost: %s", self.name, why, extra={"fields": {"replica": self.identity}})

    async def resign(self) -> None:
        await self.release()
