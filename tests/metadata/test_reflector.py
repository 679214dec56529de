"""The reflector: one listing and one watch for every mirror, against a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import re

import aiohttp
import pytest
from background import background
from etcd3aio import Etcd3Client

from hareg.clock import SystemClock
from hareg.kv.base import Delete, Event, EventType, KeyValue, Put
from hareg.kv.etcd import EtcdKV
from hareg.metadata.reflector import Reflector
from hareg.processes.etcd import EtcdProcess


class Recorder:
    """A subscriber that keeps what it is handed (the protocol's plainest implementation)."""

    def __init__(self, *prefixes: bytes) -> None:
        self.prefixes = prefixes
        self.values: dict[bytes, bytes] = {}
        self.revision = 0
        self.resets = 0
        self.losses = 0
        self.events: list[tuple[EventType, bytes]] = []

    def listing(self) -> Recorder.Listing:
        return Recorder.Listing(self)

    class Listing:
        def __init__(self, recorder: Recorder) -> None:
            self.recorder = recorder
            self.kvs: list[KeyValue] = []

        def add(self, kvs: list[KeyValue]) -> None:
            assert all(kv.key.startswith(self.recorder.prefixes) for kv in kvs)
            self.kvs.extend(kvs)

        def done(self, revision: int) -> None:
            self.recorder.values = {kv.key: kv.value for kv in self.kvs}
            self.recorder.revision = revision
            self.recorder.resets += 1

    def apply(self, events: list[Event], revision: int) -> None:
        for event in events:
            assert event.kv.key.startswith(self.prefixes)
            self.events.append((event.type, event.kv.key))
            if event.type is EventType.DELETE:
                self.values.pop(event.kv.key, None)
            else:
                self.values[event.kv.key] = event.kv.value
        assert revision >= self.revision
        self.revision = revision

    def lost(self) -> None:
        self.losses += 1


def running(reflector: Reflector) -> contextlib.AbstractAsyncContextManager[None]:
    return background(reflector.run(), lambda: reflector.listed)


async def caught_up(reflector: Reflector, revision: int) -> None:
    async with asyncio.timeout(30):
        while reflector.revision < revision:
            reflector.request_progress()
            await asyncio.sleep(0.01)


async def watchers(etcd: EtcdProcess) -> int:
    """The watches etcd serves now (its own gauge)."""
    async with aiohttp.ClientSession() as session, session.get(f"{etcd.client_url}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^etcd_debugging_mvcc_watcher_total (\S+)$", text, re.MULTILINE)
    assert match is not None
    return int(float(match.group(1)))


async def test_one_listing_and_one_watch_feed_every_subscriber(own_etcd: EtcdProcess) -> None:
    kv = await EtcdKV.connect([own_etcd.client_url])
    try:
        await kv.txn([], [Put(b"/p/a/1", b"a1"), Put(b"/p/b/1", b"b1"), Put(b"/p/z/1", b"z1")])
        reflector = Reflector(kv, SystemClock())
        a, b = Recorder(b"/p/a/"), Recorder(b"/p/b/")
        reflector.subscribe(a)
        reflector.subscribe(b)
        before = await watchers(own_etcd)
        async with running(reflector):
            # One listing, at one revision, each subscriber handed its own keys.
            assert a.values == {b"/p/a/1": b"a1"} and b.values == {b"/p/b/1": b"b1"}
            assert a.revision == b.revision == reflector.revision
            result = await kv.txn(
                [],
                [Put(b"/p/a/2", b"a2"), Put(b"/p/b/2", b"b2"), Delete(b"/p/a/1"), Put(b"/p/z/2", b"z2")],
            )
            await caught_up(reflector, result.revision)
            # Events in etcd's order, each subscriber only its own.
            assert a.events == [(EventType.PUT, b"/p/a/2"), (EventType.DELETE, b"/p/a/1")]
            assert b.events == [(EventType.PUT, b"/p/b/2")]
            assert a.revision == b.revision == reflector.revision >= result.revision
            # Both mirrors ride on one watch.
            async with asyncio.timeout(30):
                while await watchers(own_etcd) != before + 1:
                    await asyncio.sleep(0.1)
        with pytest.raises(RuntimeError):
            reflector.subscribe(Recorder(b"/p/c/"))  # it would miss what was listed
    finally:
        await kv.close()


async def test_a_compacted_watch_is_lost_and_listed_again(
    kv: EtcdKV, key_prefix: bytes, etcd_url: str
) -> None:
    reflector = Reflector(kv, SystemClock(), retry_delay=0.05)
    mirror = Recorder(key_prefix + b"a/")
    reflector.subscribe(mirror)
    async with running(reflector):
        pass
    # While the reflector is stopped, history it has not seen is written and compacted.
    writes = [await kv.txn([], [Put(key_prefix + f"a/{i}".encode(), b"x")]) for i in range(3)]
    async with Etcd3Client([etcd_url.removeprefix("http://")]) as raw:
        assert raw.kv is not None
        await raw.kv.compact(writes[-1].revision)
    # Resuming from the compacted revision re-lists instead of skipping the gap.
    async with running(reflector):
        async with asyncio.timeout(30):
            while mirror.resets < 2 or not reflector.listed:
                await asyncio.sleep(0.01)
        assert mirror.losses == 1
        assert set(mirror.values) == {key_prefix + f"a/{i}".encode() for i in range(3)}
        assert mirror.revision >= writes[-1].revision
