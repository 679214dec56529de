"""haproxy's retry policy, against a real haproxy and two backends: one that
drops every request it gets (a replica dying mid-request), one that answers.
A request that got no answer is re-sent to the other replica only when
running it twice is harmless."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hareg.cluster.haproxy import Backend, HaproxyError, HaproxyProcess, find_haproxy, render_config
from hareg.processes.ports import free_ports

READY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def _read_request(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(
        (int(v) for k, _, v in (h.partition(": ") for h in lines[1:]) if k.lower() == "content-length"), 0
    )
    if length:
        await reader.readexactly(length)
    return lines[0]


NOT_READY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_BODY = b'{"errors": [{"code": "UNAVAILABLE", "message": "the metadata store (etcd) is unavailable"}]}'
UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


@contextlib.asynccontextmanager
async def backend(
    port: int, seen: Counter[str], *, drop: bool, writable: bool = True, refuse: bool = False
) -> AsyncIterator[None]:
    """Answers /readyz (and /readyz?for=writes: 503 unless ``writable``); any
    other request is answered 200, or (``drop``) read and then the connection
    is closed without an answer, or (``refuse``) answered 503 as a replica
    that cannot reach etcd does.  ``seen`` counts the requests, a health
    check once it is answered."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            line = await _read_request(reader)
            method, path, _ = line.split(" ", 2)
            check = path.startswith("/readyz")
            if not check:
                seen[f"{method} {path}"] += 1
            if check and path.endswith("for=writes") and not writable:
                writer.write(NOT_READY)
            elif not check and (refuse or (not writable and method != "GET")):
                writer.write(UNAVAILABLE)
            elif check or not drop:
                writer.write(READY)
            await writer.drain()
            if check:
                seen[path] += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("method", "path", "resent"),
    [
        ("GET", "/v2/app/manifests/v1", True),
        ("HEAD", "/v2/app/blobs/sha256:x", True),
        ("PUT", "/v2/app/manifests/v1", True),  # a manifest PUT is idempotent
        ("POST", "/v2/app/blobs/uploads/", True),  # a new session, or a content-addressed blob
        ("POST", "/v2/app/blobs/uploads/?digest=sha256:x", True),  # a monolithic push
        ("PATCH", "/v2/app/blobs/uploads/u1", False),  # the chunk would be appended twice
        ("PUT", "/v2/app/blobs/uploads/u1?digest=sha256:x", False),  # the session is closed by the first
        ("DELETE", "/v2/app/manifests/v1", False),  # the second would answer 404
        ("DELETE", "/v2/app/blobs/uploads/u1", False),  # the second would answer BLOB_UPLOAD_UNKNOWN
        ("POST", "/hareg/v1/access/robots", False),  # the second would not hand out the first's secret
        ("PUT", "/hareg/v1/read-only", False),  # an admin request: never run twice
    ],
)
@pytest.mark.parametrize("failure", ["no answer", "503"])
async def test_only_requests_safe_to_run_twice_are_resent(
    tmp_path: Path, method: str, path: str, resent: bool, failure: str
) -> None:
    try:
        find_haproxy()
    except HaproxyError as exc:
        pytest.skip(str(exc))
    listen, dropping, answering = free_ports(3)
    seen: Counter[str] = Counter()
    answering_seen: Counter[str] = Counter()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_config(
            f"127.0.0.1:{listen}",
            # The dropping replica first: round robin sends the first request there.
            [Backend("dropping", f"127.0.0.1:{dropping}"), Backend("answering", f"127.0.0.1:{answering}")],
            check_interval="200ms",
        )
    )
    proxy = HaproxyProcess(config, listen_port=listen, log_file=tmp_path / "haproxy.log")
    failing = backend(dropping, seen, drop=failure == "no answer", refuse=failure == "503")
    async with failing, backend(answering, answering_seen, drop=False), proxy:
        async with asyncio.timeout(60):  # both servers pass their first health checks
            while not all(c["/readyz"] and c["/readyz?for=writes"] for c in (seen, answering_seen)):
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(20):
                r = await session.request(method, f"http://127.0.0.1:{listen}{path}", data=b"x" * 10)
                status = r.status
                await r.read()
    assert seen[f"{method} {path}"] == 1  # the failing replica got it once
    assert (status == 200) is resent, status
    if not resent:
        assert status == (503 if failure == "503" else 502), status  # the client sees the failure


async def test_writes_avoid_a_replica_that_cannot_write_and_reads_do_not(tmp_path: Path) -> None:
    """A replica cut off from etcd (its /readyz?for=writes answers 503) keeps
    getting pulls; pushes go to the others, and with none left they go to it
    anyway (a spare server), which answers its OCI error with Retry-After."""
    try:
        find_haproxy()
    except HaproxyError as exc:
        pytest.skip(str(exc))
    listen, cut, whole = free_ports(3)
    cut_seen: Counter[str] = Counter()
    whole_seen: Counter[str] = Counter()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        render_config(
            f"127.0.0.1:{listen}",
            [Backend("cut", f"127.0.0.1:{cut}"), Backend("whole", f"127.0.0.1:{whole}")],
            check_interval="200ms",
        )
    )
    proxy = HaproxyProcess(config, listen_port=listen, log_file=tmp_path / "haproxy.log")
    base = f"http://127.0.0.1:{listen}"
    async with backend(cut, cut_seen, drop=False, writable=False), proxy:
        async with backend(whole, whole_seen, drop=False):
            async with asyncio.timeout(60):  # checked, and the cut one found unfit for writes
                while not (cut_seen["/readyz?for=writes"] >= 2 and whole_seen["/readyz?for=writes"]):
                    await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as session:
                for _ in range(4):
                    async with session.get(f"{base}/v2/app/manifests/v1") as r:
                        assert r.status == 200
                    async with session.post(f"{base}/v2/app/blobs/uploads/") as r:
                        assert r.status == 200
            assert cut_seen["GET /v2/app/manifests/v1"] == 2 and whole_seen["GET /v2/app/manifests/v1"] == 2
            assert cut_seen["POST /v2/app/blobs/uploads/"] == 0
            assert whole_seen["POST /v2/app/blobs/uploads/"] == 4
        # The only writable replica is gone: writes reach the cut one's spare, which refuses them.
        async with asyncio.timeout(60):
            async with aiohttp.ClientSession() as session:
                while True:
                    async with session.post(f"{base}/v2/app/blobs/uploads/") as r:
                        if r.status == 503 and r.headers.get("Retry-After") == "1":
                            body = await r.json(content_type=None)
                            assert body["errors"][0]["code"] == "UNAVAILABLE"
                            break
                    await asyncio.sleep(0.1)
                async with session.get(f"{base}/v2/app/manifests/v1") as r:
                    assert r.status == 200  # reads still go to the cut replica
