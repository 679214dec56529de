"""A 1 GiB blob through a running ``hareg serve``, monolithic and chunked, with
the registry's memory watched: bodies must be streamed and hashed on the way,
never held whole.  The bytes are generated on the fly (never held by the test
either) and pulled back streaming to check their sha256."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp
import psutil
import pytest

from .hareg_process import HaregServer

MiB = 1024 * 1024
BLOB_SIZE = 1024 * MiB
PIECE = MiB  # what the generator yields at a time
PATCH_SIZE = 64 * MiB
RSS_LIMIT = 100 * MiB
SAMPLE_INTERVAL = 0.1
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_read=60)

pytestmark = pytest.mark.slow


class BlobSource:
    """1 GiB of deterministic, incompressible bytes: a random 1 MiB block with
    the seed and the piece number stamped on each copy, so no two pieces match."""

    def __init__(self, seed: int, size: int = BLOB_SIZE) -> None:
        assert size % PIECE == 0
        self.seed = seed
        self.size = size
        self._block = os.urandom(PIECE)

    def piece(self, i: int) -> bytes:
        return self.seed.to_bytes(8, "big") + i.to_bytes(8, "big") + self._block[16:]

    async def chunks(self, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """``length`` bytes from ``start`` (both multiples of PIECE)."""
        end = self.size if length is None else start + length
        for i in range(start // PIECE, end // PIECE):
            yield self.piece(i)

    def digest(self) -> str:
        h = hashlib.sha256()
        for i in range(self.size // PIECE):
            h.update(self.piece(i))
        return "sha256:" + h.hexdigest()


@dataclass
class RssMonitor:
    """Samples one process's RSS every SAMPLE_INTERVAL seconds on a thread."""

    pid: int
    baseline: int = 0
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        proc = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    @contextmanager
    def watching(self) -> Iterator[RssMonitor]:
        self.baseline = self.peak = psutil.Process(self.pid).memory_info().rss
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def describe(self, what: str) -> str:
        return (
            f"{what}: hareg RSS baseline {self.baseline / MiB:.1f} MiB, peak {self.peak / MiB:.1f} MiB, "
            f"growth {self.growth / MiB:.1f} MiB ({self.samples} samples)"
        )


async def pull_digest(http: aiohttp.ClientSession, url: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        assert int(r.headers["Content-Length"]) == BLOB_SIZE
        async for chunk in r.content.iter_chunked(4 * MiB):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


@pytest.fixture
async def warmed_up(hareg_server: HaregServer) -> HaregServer:
    """One small push first, so lazily created pools and buffers are in the baseline."""
    data = os.urandom(4 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with aiohttp.ClientSession(hareg_server.url, timeout=REQUEST_TIMEOUT) as http:
        async with http.post(f"/v2/e2e/warmup/blobs/uploads/?digest={digest}", data=data) as r:
            assert r.status == 201, await r.text()
        async with http.get(f"/v2/e2e/warmup/blobs/{digest}") as r:
            assert await r.read() == data
    return hareg_server


async def test_monolithic_1gib(
    warmed_up: HaregServer, record_property: Callable[[str, object], None]
) -> None:
    server = warmed_up
    source = BlobSource(seed=1)
    digest = source.digest()
    monitor = RssMonitor(server.pid)
    async with aiohttp.ClientSession(server.url, timeout=REQUEST_TIMEOUT) as http:
        with monitor.watching():
            async with http.post(
                f"/v2/e2e/large/mono/blobs/uploads/?digest={digest}",
                data=source.chunks(),
                headers={"Content-Length": str(BLOB_SIZE), "Content-Type": "application/octet-stream"},
            ) as r:
                assert r.status == 201, await r.text()
                assert r.headers["Docker-Content-Digest"] == digest
        print(monitor.describe("monolithic POST of 1 GiB"))
        record_property("rss_growth_monolithic_mib", round(monitor.growth / MiB, 1))
        assert monitor.samples >= 5
        assert monitor.growth < RSS_LIMIT, monitor.describe("monolithic POST")

        async with http.head(f"/v2/e2e/large/mono/blobs/{digest}") as r:
            assert r.status == 200
            assert int(r.headers["Content-Length"]) == BLOB_SIZE
        pull_monitor = RssMonitor(server.pid)
        with pull_monitor.watching():
            assert await pull_digest(http, f"/v2/e2e/large/mono/blobs/{digest}") == (digest, BLOB_SIZE)
        print(pull_monitor.describe("pull of 1 GiB"))
        assert pull_monitor.growth < RSS_LIMIT, pull_monitor.describe("pull")


async def test_chunked_1gib(warmed_up: HaregServer, record_property: Callable[[str, object], None]) -> None:
    server = warmed_up
    source = BlobSource(seed=2)
    hasher = hashlib.sha256()

    async def hashed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            hasher.update(chunk)
            yield chunk

    monitor = RssMonitor(server.pid)
    async with aiohttp.ClientSession(server.url, timeout=REQUEST_TIMEOUT) as http:
        with monitor.watching():
            async with http.post("/v2/e2e/large/chunked/blobs/uploads/") as r:
                assert r.status == 202, await r.text()
                location = urljoin(server.url, r.headers["Location"])
            for start in range(0, BLOB_SIZE, PATCH_SIZE):
                end = start + PATCH_SIZE - 1
                async with http.patch(
                    location,
                    data=hashed(source.chunks(start, PATCH_SIZE)),
                    headers={
                        "Content-Range": f"{start}-{end}",
                        "Content-Length": str(PATCH_SIZE),
                        "Content-Type": "application/octet-stream",
                    },
                ) as r:
                    assert r.status == 202, await r.text()
                    assert r.headers["Range"] == f"0-{end}"
                    location = urljoin(server.url, r.headers["Location"])
            digest = "sha256:" + hasher.hexdigest()
            async with http.put(location, params={"digest": digest}) as r:
                assert r.status == 201, await r.text()
                assert r.headers["Docker-Content-Digest"] == digest
        print(monitor.describe(f"chunked upload of 1 GiB in {BLOB_SIZE // PATCH_SIZE} PATCHes"))
        record_property("rss_growth_chunked_mib", round(monitor.growth / MiB, 1))
        assert monitor.samples >= 5
        assert monitor.growth < RSS_LIMIT, monitor.describe("chunked upload")

        assert await pull_digest(http, f"/v2/e2e/large/chunked/blobs/{digest}") == (digest, BLOB_SIZE)
