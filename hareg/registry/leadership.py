"""Leader election through an etcd lease, with a fencing token.

Every replica campaigns; the one whose transaction creates the leader key
(under its own lease) leads until the lease lapses.  The key's value is a
token unique to that tenure, and the leader puts ``fence()`` — "the leader key
still holds my token" — into every transaction it must only make as leader.
A leader paused past its lease, or cut off from etcd, may still *believe* it
leads when it wakes, but its fenced transactions fail: another replica's
token is in the key, or none is.
"""

from __future__ import annotations

import logging

from hareg.clock import Clock
from hareg.ids import IdSource
from hareg.kv.base import KV, Compare, KVError, Op, Put, Target

log = logging.getLogger("hareg.leadership")


class Leadership:
    def __init__(
        self, kv: KV, key: bytes, identity: str, clock: Clock, ids: IdSource, *, ttl: int = 10
    ) -> None:
        self.kv = kv
        self.key = key
        self.identity = identity
        self.clock = clock
        self.ids = ids
        self.ttl = ttl
        self._token: bytes | None = None
        self._lease: int | None = None
        self._renewed = 0.0  # monotonic time of the last successful lease refresh
        self.terms = 0

    @property
    def is_leader(self) -> bool:
        """Whether this replica believes it leads (fence() is what makes acting on that safe)."""
        if self._token is None:
            return False
        return self.clock.monotonic() - self._renewed < self.ttl

    def fence(self) -> list[Compare]:
        token = self._token or b"\x00not-the-leader"
        return [Compare(self.key, Target.VALUE, Op.EQUAL, token)]

    async def leader(self) -> str | None:
        """The identity of the current leader, from etcd."""
        kv = await self.kv.get(self.key)
        return kv.value.decode().split("#", 1)[0] if kv else None

    def _step_down(self, why: str) -> None:
        if self._token is not None:
            log.warning("pruner leadership lost: %s", why, extra={"fields": {"replica": self.identity}})
        self._token = None
        self._lease = None

    async def _campaign(self) -> None:
        lease = await self.kv.grant_lease(self.ttl)
        token = f"{self.identity}#{self.ids.new_id()}".encode()
        result = await self.kv.txn([Compare.missing(self.key)], [Put(self.key, token, lease=lease)])
        if result.succeeded:
            self._token, self._lease = token, lease
            self._renewed = self.clock.monotonic()
            self.terms += 1
            log.info("pruner leadership acquired", extra={"fields": {"replica": self.identity}})
        else:
            await self.kv.revoke_lease(lease)

    async def run(self) -> None:
        while True:
            try:
                if self._lease is None:
                    await self._campaign()
                else:
                    remaining = await self.kv.refresh_lease(self._lease)
                    if remaining > 0:
                        self._renewed = self.clock.monotonic()
                    else:
                        self._step_down("lease expired")
            except KVError as exc:
                if self._lease is not None and not self.is_leader:
                    self._step_down(f"etcd unreachable for the lease TTL ({exc})")
            await self.clock.sleep(self.ttl / 3)

    async def resign(self) -> None:
        lease, self._lease = self._lease, None
        self._token = None
        if lease is not None:
            try:
                await self.kv.revoke_lease(lease)
            except KVError as exc:
                log.warning("could not resign pruner leadership: %s", exc)
