"""Request limits: separate read and write limiters, bounded queues, 429 with
Retry-After, exempt probes, reconfiguration while running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import expect_error, push_blob, push_image, sha256, start_upload

from hareg.config.model import RequestLimits, RequestsConfig
from hareg.http.app import init_app
from hareg.http.keys import HttpSettings
from hareg.http.limits import LIMITS, Limiter, Rejected, RequestLimiters
from hareg.registry.policy import RequestClass
from hareg.registry.service import Registry

Client = TestClient[web.Request, web.Application]


# ------------------------------------------------------------------ the limiter alone


async def test_no_queue_rejects_at_once_when_every_slot_is_busy() -> None:
    limiter = Limiter("write", RequestLimits(max_running=1))
    await limiter.acquire()
    with pytest.raises(Rejected) as exc:
        await limiter.acquire()
    assert exc.value.reason == "queue_full" and limiter.rejected["queue_full"] == 1
    limiter.release()
    await limiter.acquire()  # the slot is free again
    assert limiter.running == 1


async def test_queued_requests_are_admitted_in_order() -> None:
    limiter = Limiter("read", RequestLimits(max_running=1, max_in_queue=3))
    await limiter.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert limiter.queued == 3 and limiter.running == 1
    for _ in range(3):
        limiter.release()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and limiter.running == 1 and limiter.queued == 0


async def test_a_full_queue_and_a_long_wait_are_rejected() -> None:
    limiter = Limiter("write", RequestLimits(max_running=1, max_in_queue=1, max_wait_in_queue=0.1))
    await limiter.acquire()
    queued = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    with pytest.raises(Rejected) as full:
        await limiter.acquire()
    assert full.value.reason == "queue_full"
    with pytest.raises(Rejected) as late:
        await queued
    assert late.value.reason == "timeout"
    assert limiter.rejected == {"queue_full": 1, "timeout": 1}
    assert limiter.queued == 0 and limiter.running == 1


async def test_unlimited_and_zero_wait_means_forever() -> None:
    unlimited = Limiter("read")
    for _ in range(1000):
        await unlimited.acquire()
    assert unlimited.running == 1000

    limiter = Limiter("write", RequestLimits(max_running=1, max_in_queue=1, max_wait_in_queue=0))
    await limiter.acquire()
    queued = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.3)
    assert not queued.done()
    limiter.release()
    await asyncio.wait_for(queued, 30)


async def test_a_client_leaving_the_queue_frees_its_place() -> None:
    limiter = Limiter("write", RequestLimits(max_running=1, max_in_queue=1))
    await limiter.acquire()
    queued = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert limiter.queued == 0
    limiter.release()
    assert limiter.running == 0


async def test_reconfiguring_admits_waiters_when_slots_open() -> None:
    limiters = RequestLimiters(RequestsConfig(write=RequestLimits(max_running=1, max_in_queue=5)))
    limiter = limiters.for_class(RequestClass.WRITE)
    assert limiter is limiters.write and limiters.for_class(RequestClass.READ) is limiters.read
    await limiter.acquire()
    waiting = [asyncio.create_task(limiter.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    limiters.configure(RequestsConfig(write=RequestLimits(max_running=3, max_in_queue=5)))
    await asyncio.sleep(0.01)
    assert sum(t.done() for t in waiting) == 2 and limiter.running == 3
    limiters.configure(RequestsConfig())  # unlimited: everyone in
    await asyncio.gather(*waiting)
    assert limiter.running == 4 and limiter.queued == 0


# ------------------------------------------------------------------ over HTTP


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.005)


def limited_app(registry: Registry, read: RequestLimits, write: RequestLimits) -> web.Application:
    return init_app(registry, HttpSettings(requests=RequestsConfig(read=read, write=write)))


@pytest.fixture
async def one_writer(registry: Registry) -> AsyncIterator[Client]:
    """Writes: 1 running, 0 queued.  Reads: unlimited."""
    app = limited_app(registry, RequestLimits(), RequestLimits(max_running=1, max_in_queue=0))
    async with TestClient(TestServer(app)) as c:
        yield c


class SlowBody:
    """A chunked request body that sends one piece, then waits to be released."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        yield b"x" * 1000
        self.started.set()
        await self.release.wait()
        yield b"y" * 1000


async def test_a_burst_of_pushes_gets_429_while_reads_go_on(one_writer: Client, registry: Registry) -> None:
    client = one_writer
    image = await push_image(client, "burst/app", "v1")
    location = await start_upload(client, "burst/app")
    # One push holds the only write slot: a chunk whose body is still arriving.
    slow = SlowBody()
    holder = asyncio.create_task(client.patch(location, data=slow.chunks()))
    await asyncio.wait_for(slow.started.wait(), 30)
    await until(lambda: one_writer.app[LIMITS].write.running == 1)

    blobs = [f"burst blob {i}".encode() * 100 for i in range(12)]
    pushes = [
        client.post("/v2/burst/app/blobs/uploads/", params={"digest": sha256(b)}, data=b) for b in blobs
    ]
    reads = [client.get("/v2/burst/app/manifests/v1") for _ in range(6)] + [
        client.get(f"/v2/burst/app/blobs/{d}") for d in image.blobs
    ]
    responses = await asyncio.gather(*pushes, *reads)
    for r in responses[: len(pushes)]:
        entry = await expect_error(r, 429, "TOOMANYREQUESTS")
        assert r.headers["Retry-After"] == "1"
        assert "1 write slots are busy (no queue)" in entry["message"]
        assert entry["detail"] == {"limit": "write", "reason": "queue_full"}
    for r in responses[len(pushes) :]:
        assert r.status == 200, await r.text()
    assert client.app[LIMITS].write.rejected["queue_full"] == len(pushes)

    slow.release.set()
    r = await holder
    assert r.status == 202, await r.text()
    assert client.app[LIMITS].write.running == 0
    # The slot is free again: a push goes through.
    await push_blob(client, "burst/app", blobs[0])


async def test_a_natural_burst_only_ever_gets_201_or_429(one_writer: Client) -> None:
    blobs = [bytes([i]) * 300_000 for i in range(16)]
    responses = await asyncio.gather(
        *(one_writer.post("/v2/natural/blobs/uploads/", params={"digest": sha256(b)}, data=b) for b in blobs)
    )
    statuses = sorted(r.status for r in responses)
    assert set(statuses) <= {201, 429}, statuses
    assert 201 in statuses
    for r in responses:
        if r.status == 429:
            assert r.headers["Retry-After"] == "1"


async def test_a_queued_push_waits_its_turn_or_times_out(registry: Registry) -> None:
    app = limited_app(
        registry, RequestLimits(), RequestLimits(max_running=1, max_in_queue=1, max_wait_in_queue=0.3)
    )
    async with TestClient(TestServer(app)) as client:
        location = await start_upload(client, "queue/app")
        slow = SlowBody()
        holder = asyncio.create_task(client.patch(location, data=slow.chunks()))
        await asyncio.wait_for(slow.started.wait(), 30)
        await until(lambda: app[LIMITS].write.running == 1)

        # One waits in the queue (and times out); the next finds the queue full.
        loop = asyncio.get_running_loop()
        start = loop.time()
        queued = asyncio.create_task(client.post("/v2/queue/app/blobs/uploads/"))
        await until(lambda: app[LIMITS].write.queued == 1)
        full = await client.post("/v2/queue/app/blobs/uploads/")
        entry = await expect_error(full, 429, "TOOMANYREQUESTS")
        assert entry["detail"]["reason"] == "queue_full"
        timed_out = await queued
        assert loop.time() - start >= 0.3
        entry = await expect_error(timed_out, 429, "TOOMANYREQUESTS")
        assert entry["detail"]["reason"] == "timeout" and "waited 0.3s" in entry["message"]

        # Released while one is queued: that one goes through.
        queued = asyncio.create_task(client.post("/v2/queue/app/blobs/uploads/"))
        await until(lambda: app[LIMITS].write.queued == 1)
        slow.release.set()
        assert (await holder).status == 202
        r = await queued
        assert r.status == 202, await r.text()


async def test_reads_and_writes_are_limited_independently_and_probes_are_exempt(registry: Registry) -> None:
    app = limited_app(registry, RequestLimits(max_running=1), RequestLimits(max_running=1))
    async with TestClient(TestServer(app)) as client:
        limiters = app[LIMITS]
        await limiters.read.acquire()  # every read slot taken
        r = await client.get("/v2/")
        await expect_error(r, 429, "TOOMANYREQUESTS")
        r = await client.head("/v2/any/blobs/" + sha256(b"x"))
        assert r.status == 429 and r.headers["Retry-After"] == "1"
        r = await client.post("/v2/independent/blobs/uploads/")  # writes are not affected
        assert r.status == 202
        await limiters.write.acquire()  # every write slot taken too
        for path in ("/healthz", "/readyz", "/metrics", "/hareg/v1/status", "/hareg/v1/read-only"):
            r = await client.get(path)
            assert r.status == 200, (path, r.status)
        r = await client.put("/hareg/v1/read-only", json={"readOnly": False})
        assert r.status == 200
        r = await client.post("/hareg/v1/fsck")  # bounded on its own: one at a time
        assert r.status == 200
        r = await client.post("/v2/independent/blobs/uploads/")
        await expect_error(r, 429, "TOOMANYREQUESTS")
        limiters.read.release()
        limiters.write.release()
        r = await client.get("/v2/")
        assert r.status == 200


async def test_queue_and_rejections_are_metrics(registry: Registry) -> None:
    app = limited_app(registry, RequestLimits(), RequestLimits(max_running=1, max_in_queue=2))
    async with TestClient(TestServer(app)) as client:
        limiter = app[LIMITS].write
        await limiter.acquire()
        queued = [asyncio.create_task(client.post("/v2/m/blobs/uploads/")) for _ in range(2)]
        await until(lambda: limiter.queued == 2)
        r = await client.post("/v2/m/blobs/uploads/")
        assert r.status == 429
        text = await (await client.get("/metrics")).text()
        assert 'hareg_requests_queued{kind="write"} 2.0' in text
        assert 'hareg_requests_running{kind="write"} 1.0' in text
        assert 'hareg_requests_rejected_total{kind="write",reason="queue_full"} 1.0' in text
        assert 'hareg_requests_limit{kind="write",limit="maxInQueue"} 2.0' in text
        limiter.release()
        for r in await asyncio.gather(*queued):
            assert r.status == 202
        text = await (await client.get("/metrics")).text()
        assert 'hareg_requests_queued{kind="write"} 0.0' in text
