"""Replica membership under a lease, against a real etcd."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
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
