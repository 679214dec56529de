"""Replica membership: each replica keeps a record under its own etcd lease.

The record disappears by itself within the lease TTL after a replica dies
(kill -9 included), so ``members()`` is the set of replicas alive now.
"""

from __future__ import annotations

import logging

from hareg import __version__
from hareg.clock import Clock
from hareg.kv.base import KV, KVError, Put
from hareg.metadata.keys import Keys
from hareg.metadata.records import MemberRecord, decode, encode

log = logging.getLogger("hareg.membership")


class Membership:
    def __init__(self, kv: KV, keys: Keys, clock: Clock, replica: str, url: str, *, ttl: int = 10) -> None:
        self.kv = kv
        self.keys = keys
        self.clock = clock
        self.replica = replica
        self.url = url
        self.ttl = ttl
        self.lease: int | None = None
        self.registered = False

    async def _register(self) -> None:
        self.lease = await self.kv.grant_lease(self.ttl)
        record = MemberRecord(self.replica, self.url, self.clock.now(), __version__)
        await self.kv.txn([], [Put(self.keys.member(self.replica), encode(record), lease=self.lease)])
        self.registered = True
        log.info("registered replica", extra={"fields": {"replica": self.replica, "lease": self.lease}})

    async def run(self) -> None:
        """Register, then keep the lease alive; re-register after it expires."""
        while True:
            try:
                if self.lease is None or not self.registered:
                    await self._register()
                remaining = await self.kv.refresh_lease(self.lease) if self.lease else 0
                if remaining <= 0:
                    self.registered = False  # expired (etcd was unreachable too long)
                    continue
            except KVError as exc:
                log.warning("membership lease refresh failed: %s", exc)
            await self.clock.sleep(self.ttl / 3)

    async def leave(self) -> None:
        if self.lease is not None:
            try:
                await self.kv.revoke_lease(self.lease)
            except KVError as exc:  # it will expire by itself
                log.warning("could not revoke membership lease: %s", exc)
            self.lease = None
            self.registered = False

    async def members(self) -> list[MemberRecord]:
        result = await self.kv.range(*self.keys.members())
        return [decode(MemberRecord, kv.value) for kv in result.kvs]
