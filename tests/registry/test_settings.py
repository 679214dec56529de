"""The cluster settings mirror, fed by a reflector, against a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from background import background

from hareg.clock import SystemClock
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.reflector import Reflector
from hareg.registry.settings import ClusterSettings


@contextlib.asynccontextmanager
async def replica(kv: EtcdKV, keys: Keys, name: str) -> AsyncIterator[ClusterSettings]:
    """A replica's settings, primed and followed as Registry.start() does."""
    reflector = Reflector(kv, SystemClock())
    settings = ClusterSettings(kv, reflector, keys, SystemClock(), replica=name)
    await settings.prime()
    assert settings.loaded
    async with background(reflector.run(), lambda: True):
        yield settings


async def test_a_switch_made_on_one_replica_reaches_the_others(kv: EtcdKV, key_prefix: bytes) -> None:
    keys = Keys(key_prefix.decode())
    async with replica(kv, keys, "a") as a, replica(kv, keys, "b") as b:
        assert not a.read_only and not b.read_only
        await a.set_read_only(True)
        assert a.read_only  # at once where it was made
        async with asyncio.timeout(10):
            while not b.read_only:
                await asyncio.sleep(0.01)
        assert b.describe()["changedBy"] == "a" and b.describe()["cluster"] is True
        # A replica started now reads the switch before it serves.
        async with replica(kv, keys, "c") as c:
            assert c.read_only
        await b.set_read_only(False)
        async with asyncio.timeout(10):
            while a.read_only:
                await asyncio.sleep(0.01)


async def test_a_listing_older_than_a_switch_made_here_does_not_undo_it(
    kv: EtcdKV, key_prefix: bytes
) -> None:
    """The reflector's first listing may be read before a switch made through
    this replica and handed over after it; the switch stands until the mirror
    has caught up with it."""
    keys = Keys(key_prefix.decode())
    settings = ClusterSettings(kv, Reflector(kv, SystemClock()), keys, SystemClock())
    listed = await settings.reflector.read()
    await settings.set_read_only(True)
    settings.reset({}, listed)  # the listing read before the switch arrives late
    assert settings.read_only
    written = await kv.get(keys.setting("read-only"))
    assert written is not None
    settings.apply([], written.mod_revision)  # the mirror reaches the switch's revision
    settings.reset({}, written.mod_revision)  # from now on a listing is the truth
    assert not settings.read_only
