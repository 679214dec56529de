"""``hareg serve`` as a user runs it: the ready line, clean shutdown on SIGINT
and SIGTERM, data kept across restarts, clear startup errors, and an embedded
etcd that never outlives the registry (not even a SIGKILLed one)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import MemberRecord, decode
from hareg.processes.ports import free_port

from .hareg_process import Launcher, data_dir_processes, wait_no_orphans

TRACEBACK = "Traceback (most recent call last)"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _etcd_children(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if "etcd" in c.name()]


def test_prints_url_and_serves(hareg_launcher: Launcher, tmp_path: Path) -> None:
    port = free_port()
    server = hareg_launcher(tmp_path / "data", listen=f"127.0.0.1:{port}")
    assert server.url == f"http://127.0.0.1:{port}"
    assert server.stdout_lines == [f"hareg registry listening on http://127.0.0.1:{port}"]
    etcd = _etcd_children(server.pid)
    assert len(etcd) == 1, "one embedded etcd child expected"
    assert any(str(tmp_path / "data") in arg for arg in etcd[0].cmdline())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200")
    assert b"Docker-Distribution-API-Version: registry/2.0" in reply
    assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(hareg_launcher: Launcher, tmp_path: Path, sig: signal.Signals) -> None:
    server = hareg_launcher(tmp_path / "data")
    etcd = _etcd_children(server.pid)
    assert etcd, "the embedded etcd should be running"
    assert server.stop(sig) == 0, server.stderr()
    # The etcd child is stopped (and reaped) before hareg exits: nothing to wait for.
    assert not data_dir_processes(server.data_dir)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in etcd)
    assert TRACEBACK not in server.stderr()
    assert "KeyboardInterrupt" not in server.stderr()


async def test_restart_keeps_content(hareg_launcher: Launcher, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    blob = os.urandom(100_000)
    blob_digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": blob_digest,
                    "size": len(blob),
                }
            ],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()

    first = hareg_launcher(data_dir)
    async with aiohttp.ClientSession(first.url) as http:
        for data, digest in ((blob, blob_digest), (config, config_digest)):
            async with http.post(f"/v2/keep/me/blobs/uploads/?digest={digest}", data=data) as r:
                assert r.status == 201, await r.text()
        async with http.put(
            "/v2/keep/me/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST}
        ) as r:
            assert r.status == 201, await r.text()
            assert r.headers["Docker-Content-Digest"] == manifest_digest
    assert first.stop(signal.SIGTERM) == 0, first.stderr()
    wait_no_orphans(data_dir)

    second = hareg_launcher(data_dir)
    async with aiohttp.ClientSession(second.url) as http:
        async with http.get("/v2/keep/me/manifests/v1", headers={"Accept": OCI_MANIFEST}) as r:
            assert r.status == 200, await r.text()
            assert await r.read() == manifest
            assert r.headers["Docker-Content-Digest"] == manifest_digest
        async with http.get(f"/v2/keep/me/blobs/{blob_digest}") as r:
            assert r.status == 200
            assert await r.read() == blob
        async with http.get("/v2/keep/me/tags/list") as r:
            assert (await r.json())["tags"] == ["v1"]
        async with http.get("/v2/_catalog") as r:
            assert "keep/me" in (await r.json())["repositories"]
    assert second.stop(signal.SIGTERM) == 0, second.stderr()


async def test_sigterm_during_upload_then_resume(hareg_launcher: Launcher, tmp_path: Path) -> None:
    """A stopping replica does not wait forever for a stalled upload, and what
    it had received can be resumed after a restart (no sticky state)."""
    data_dir = tmp_path / "data"
    piece = 64 * 1024
    content = os.urandom(64 * piece)  # 4 MiB
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    sent = 0
    half_sent = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        nonlocal sent
        for offset in range(0, len(content), piece):
            sent = offset + piece
            if sent >= len(content) // 2:  # after about 1.6 s of trickling
                half_sent.set()
            yield content[offset : offset + piece]
            await asyncio.sleep(0.05)

    first = hareg_launcher(data_dir)
    async with aiohttp.ClientSession(first.url) as http:
        async with http.post("/v2/resume/me/blobs/uploads/") as r:
            assert r.status == 202, await r.text()
            location = r.headers["Location"]
        patch = asyncio.ensure_future(http.patch(location, data=trickle()))
        await asyncio.wait_for(half_sent.wait(), 60)
        started = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait_exit, 30.0)
        took = time.monotonic() - started
        with contextlib.suppress(aiohttp.ClientError):
            (await patch).release()
    assert code == 0, first.stderr()
    assert took < 20, f"hareg took {took:.1f}s to stop with an upload in flight"
    wait_no_orphans(data_dir)

    second = hareg_launcher(data_dir)
    async with aiohttp.ClientSession(second.url) as http:
        async with http.get(location) as r:
            assert r.status == 204, await r.text()
            received = int(r.headers["Range"].split("-")[1]) + 1 if r.headers["Range"] != "0-0" else 0
        assert received <= sent
        async with http.patch(
            location,
            data=content[received:],
            headers={"Content-Range": f"{received}-{len(content) - 1}"},
        ) as r:
            assert r.status == 202, await r.text()
            location = r.headers["Location"]
        async with http.put(location, params={"digest": digest}) as r:
            assert r.status == 201, await r.text()
        async with http.get(f"/v2/resume/me/blobs/{digest}") as r:
            assert await r.read() == content
    assert second.stop() == 0


def test_missing_etcd_binary(hareg_launcher: Launcher, tmp_path: Path) -> None:
    server = hareg_launcher(
        tmp_path / "data", extra_args=["--etcd-binary", "/nonexistent/etcd"], wait_ready=False
    )
    assert server.wait_exit() == 1
    stderr = server.stderr()
    assert "apt-get install etcd-server" in stderr
    assert "/nonexistent/etcd" in stderr
    assert TRACEBACK not in stderr
    assert "listening" not in server.stdout()


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", "127.0.0.1:"])
def test_malformed_listen_address(hareg_launcher: Launcher, tmp_path: Path, listen: str) -> None:
    server = hareg_launcher(tmp_path / "data", listen=listen, wait_ready=False)
    assert server.wait_exit() == 1
    stderr = server.stderr()
    assert TRACEBACK not in stderr
    assert re.search(r"listen address .* must be HOST:PORT", stderr), stderr
    assert listen in stderr


def test_listen_address_unavailable(hareg_launcher: Launcher, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = hareg_launcher(tmp_path / "busy", listen=f"127.0.0.1:{port}", wait_ready=False)
        assert server.wait_exit() == 1
    stderr = server.stderr()
    assert f"cannot listen on 127.0.0.1:{port}" in stderr, stderr
    assert TRACEBACK not in stderr
    # The etcd it had already started is stopped, not orphaned.
    wait_no_orphans(server.data_dir)

    # An address this host does not have (TEST-NET-1, never configured locally);
    # not a loopback address, so serving it without authentication is said outright.
    config = tmp_path / "no-auth.yaml"
    config.write_text("auth:\n  disabled: true\n")
    server = hareg_launcher(
        tmp_path / "foreign", listen="192.0.2.1:5000", extra_args=["--config", str(config)], wait_ready=False
    )
    assert server.wait_exit() == 1
    stderr = server.stderr()
    assert "cannot listen on 192.0.2.1:5000" in stderr, stderr
    assert TRACEBACK not in stderr
    wait_no_orphans(server.data_dir)


def test_unusable_data_dir(hareg_launcher: Launcher, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = hareg_launcher(blocker / "data", wait_ready=False)
    assert server.wait_exit() == 1
    stderr = server.stderr()
    assert TRACEBACK not in stderr
    assert f"cannot use directory {blocker}/data" in stderr, stderr
    assert "Not a directory" in stderr


def test_sigkill_does_not_orphan_etcd(hareg_launcher: Launcher, tmp_path: Path) -> None:
    server = hareg_launcher(tmp_path / "data")
    etcd = _etcd_children(server.pid)
    assert len(etcd) == 1
    server.proc.kill()
    assert server.proc.wait(timeout=30) == -signal.SIGKILL
    # PR_SET_PDEATHSIG: the kernel SIGKILLs etcd as soon as its parent dies.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if etcd[0].status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"etcd (pid {etcd[0].pid}) still running 30 s after hareg was SIGKILLed")
    wait_no_orphans(server.data_dir)


# ------------------------------------------------------------------ limits, secrets, membership


def _config(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "hareg.yaml"
    path.write_text(text)
    return ["--config", str(path)]


async def _embedded_kv(data_dir: Path) -> EtcdKV:
    """A client of the embedded etcd hareg started under ``data_dir``."""
    ports = json.loads((data_dir / "etcd" / "ports.json").read_text())
    return await EtcdKV.connect([f"http://127.0.0.1:{ports['client']}"], timeout=5.0)


def test_a_half_sent_request_line_is_disconnected_at_the_configured_header_timeout(
    hareg_launcher: Launcher, tmp_path: Path
) -> None:
    args = _config(tmp_path, "limits:\n  requestHeaderTimeout: 1s\n  idleConnectionTimeout: 30s\n")
    server = hareg_launcher(tmp_path / "data", extra_args=args)
    host, port = server.host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /v2/ HT")
        start = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the registry (the 30 s socket timeout would raise)
        elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 30, elapsed  # the header timeout, not the idle one
    # A request whose body streams in for longer than the header timeout is served.
    body = os.urandom(5000)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v2/slow/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for i in range(0, len(body), 1000):  # about 2.5 s in all, never stalling
            sock.sendall(body[i : i + 1000])
            time.sleep(0.5)  # pacing the sender, not waiting for an event
        assert sock.recv(4096).startswith(b"HTTP/1.1 201")
    assert server.stop(signal.SIGTERM) == 0


async def test_a_generated_http_secret_never_reaches_the_log(
    hareg_launcher: Launcher, tmp_path: Path
) -> None:
    server = hareg_launcher(tmp_path / "data")  # no httpSecret configured: one is generated
    kv = await _embedded_kv(server.data_dir)
    try:
        found = await kv.get(Keys("/hareg").setting("http-secret"))
    finally:
        await kv.close()
    assert found is not None
    secret = found.value.decode()
    # The access log names the request's path: a secret in it must come out redacted.
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/v2/{secret}/tags/list") as r:
        assert r.status == 404
    assert server.stop(signal.SIGTERM) == 0
    log = server.stderr()
    assert "/v2/<redacted>/tags/list" in log
    assert secret not in log


@pytest.mark.parametrize("advertise", [None, "http://registry-7.example.test:5000"])
async def test_replicas_register_their_advertised_url(
    hareg_launcher: Launcher, tmp_path: Path, advertise: str | None
) -> None:
    args = _config(tmp_path, f"advertiseURL: {advertise}\n" if advertise else "{}\n")
    server = hareg_launcher(tmp_path / "data", extra_args=args)
    kv = await _embedded_kv(server.data_dir)
    try:
        deadline = time.monotonic() + 30
        while not (members := (await kv.range(*Keys("/hareg").members())).kvs):
            assert time.monotonic() < deadline, "the replica never registered"
            await asyncio.sleep(0.05)
    finally:
        await kv.close()
    [member] = [decode(MemberRecord, m.value) for m in members]
    assert member.url == (advertise or server.url)
    assert server.stop(signal.SIGTERM) == 0


async def test_metrics_count_every_storage_call(hareg_launcher: Launcher, tmp_path: Path) -> None:
    """``hareg serve`` builds its store through the shared wrapper, with the
    replica's metrics as its observer."""
    server = hareg_launcher(tmp_path / "data")
    blob = os.urandom(50_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post(f"/v2/st/app/blobs/uploads/?digest={digest}", data=blob) as r:
            assert r.status == 201, await r.text()
        async with http.get("/metrics") as r:
            text = await r.text()
    # A monolithic push streams into the blob in one call (upload_put).
    assert 'hareg_storage_requests_total{op="upload_put",outcome="ok"} 1.0' in text
    assert f'hareg_storage_bytes_total{{op="upload_put"}} {float(len(blob))}' in text
    assert 'hareg_storage_request_duration_seconds_count{op="upload_put"} 1.0' in text
    assert server.stop(signal.SIGTERM) == 0
