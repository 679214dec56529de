"""The object-store model passes the shared BlobStore driver suite (the one every
real driver passes), plus the faults it injects."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest
from storage.driver_suite import BlobStoreSuite, chunks_of, collect, digest_of

from hareg.storage.base import StorageUnavailable
from sim.loop import SimLoop, run
from sim.network import Network
from sim.storage_model import ObjectStore, SimBlobStore
from sim.trace import Trace


def _model(loop: asyncio.AbstractEventLoop, epoch: float) -> tuple[Network, ObjectStore, SimBlobStore]:
    trace = Trace(loop.time)
    net = Network(loop, random.Random(1), trace)  # type: ignore[arg-type]
    server = ObjectStore(loop, random.Random(2), trace, epoch=epoch)  # type: ignore[arg-type]
    return net, server, SimBlobStore(server, net, "r0", timeout=60.0)


class TestSimulatedObjectStore(BlobStoreSuite):
    large_size = 8 * 1024 * 1024

    @pytest.fixture
    async def store(self) -> AsyncIterator[SimBlobStore]:
        # The suite runs on pytest's event loop: the model's latencies are real
        # milliseconds there, and its clock is the wall clock.
        loop = asyncio.get_running_loop()
        _, _, client = _model(loop, time.time() - loop.time())
        yield client
        await client.close()


def test_errors_and_partitions_are_storage_unavailable() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        net, server, store = _model(loop, 0.0)
        server.add_errors(1.0)
        with pytest.raises(StorageUnavailable):
            await store.upload_start("u1")
        assert server.stats["errors_500"] + server.stats["errors_503"] == 1
        server.remove_errors(1.0)
        await store.upload_start("u1")
        net.isolate("s3")
        with pytest.raises(StorageUnavailable):
            await store.stat(digest_of(b"x"))
        net.unisolate("s3")
        net.cut("s3", "r0")  # the write lands, the reply does not
        with pytest.raises(StorageUnavailable):
            await store.upload_write("u1", 0, chunks_of(b"data"))
        net.uncut("s3", "r0")
        assert await store.upload_size("u1") == 4
        digest = digest_of(b"data")
        assert await store.upload_commit("u1", digest, 4) == 4
        assert await collect(store.read(digest)) == b"data"
        assert await store.presign(digest, 60) is None and store.local_path(digest) is None

    run(main())
