"""Roles under a lease of their own (membership, leadership), against a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import Put
from hareg.kv.etcd import EtcdKV
from hareg.metadata.roles import Leadership
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore


async def _names(reg: Registry) -> set[str]:
    assert reg.membership is not None
    return {m.replica for m in await reg.membership.members()}


async def test_replicas_register_leave_and_expire(kv: EtcdKV, etcd_url: str, tmp_path: Path) -> None:
    prefix = f"/members-{uuid.uuid4().hex[:10]}"
    kv_b = await EtcdKV.connect([etcd_url])
    regs = []
    try:
        for name, client in (("a", kv), ("b", kv_b)):
            reg = Registry(
                client,
                FilesystemBlobStore(tmp_path / name),
                SystemClock(),
                RandomIds(),
                prefix=prefix,
                replica=name,
                url=f"http://127.0.0.1:1/{name}",
                cache=False,
            )
            assert reg.membership is not None
            reg.membership.ttl = 2
            await reg.start()
            regs.append(reg)
        a, b = regs
        async with asyncio.timeout(30):
            while await _names(a) != {"a", "b"}:
                await asyncio.sleep(0.05)
        await a.stop()  # a clean stop leaves at once
        assert await _names(b) == {"b"}
        for task in b._tasks:  # a crash: no leave, the lease runs out
            task.cancel()
        async with asyncio.timeout(30):  # the 2-s lease, then etcd's expiry: a busy machine delays both
            while await _names(b):
                await asyncio.sleep(0.2)
    finally:
        for reg in regs:
            await reg.store.close()
        await kv_b.close()


async def test_one_leader_at_a_time_and_a_lapsed_one_is_fenced(kv: EtcdKV, key_prefix: bytes) -> None:
    key = key_prefix + b"leader"
    a = Leadership(kv, key, "a", SystemClock(), RandomIds(), ttl=2)
    b = Leadership(kv, key, "b", SystemClock(), RandomIds(), ttl=2)
    tasks = {role: asyncio.create_task(role.run()) for role in (a, b)}
    try:
        async with asyncio.timeout(30):
            while not (a.is_leader or b.is_leader):
                await asyncio.sleep(0.05)
        leader, other = (a, b) if a.is_leader else (b, a)
        assert not other.is_leader and await other.leader() == leader.identity
        fenced = await kv.txn(leader.fence(), [Put(key_prefix + b"work", b"1")])
        assert fenced.succeeded
        assert not (await kv.txn(other.fence(), [Put(key_prefix + b"work", b"2")])).succeeded
        # The leader stops refreshing (a pause): its lease lapses and the other takes over.
        tasks[leader].cancel()
        async with asyncio.timeout(45):
            while not other.is_leader:
                await asyncio.sleep(0.05)
        assert await leader.leader() == other.identity and other.terms == 1
        # Woken up, the old leader may still believe it leads; its fence says otherwise.
        leader._renewed = leader.clock.monotonic()
        assert leader.is_leader
        assert not (await kv.txn(leader.fence(), [Put(key_prefix + b"work", b"3")])).succeeded
        # A resignation deletes the key at once.
        tasks[other].cancel()
        await other.resign()
        assert not other.is_leader and await other.leader() is None
    finally:
        for task in tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
