"""Shared fixtures.

``etcd_url``: one real etcd (single member, 127.0.0.1, free ports) for the
whole session.  ``kv``: a connected :class:`hareg.kv.etcd.EtcdKV` on it,
closed after each test.  Tests that share the session etcd keep to their own
key prefix (see ``key_prefix``) and must not stop or pause it; tests that
break etcd start their own :class:`hareg.processes.etcd.EtcdProcess`.
"""

from __future__ import annotations

import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from background import run_in_private_loop
from e2e.hareg_process import HaregServer, launch, wait_no_orphans
from process_checks import require_etcd

from hareg.kv.etcd import EtcdKV
from hareg.processes.etcd import EtcdProcess

# The SeaweedFS fixtures (``seaweedfs``, ``s3_store``) and the three-member
# etcd cluster (``etcd_cluster``) for every directory; the asyncio tasks of a
# test that nears its timeout printed (``hang_report``).
pytest_plugins = ["seaweedfs_fixtures", "etcd_fixtures", "hang_report"]

# Fast progress notifications so watch tests see them within a second.
PROGRESS_NOTIFY_INTERVAL = "100ms"


@pytest.fixture(scope="session")
def etcd_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    require_etcd()
    proc = EtcdProcess(
        "hareg-test",
        tmp_path_factory.mktemp("etcd") / "data",
        progress_notify_interval=PROGRESS_NOTIFY_INTERVAL,
    )
    run_in_private_loop(proc.start(startup_timeout=60))
    try:
        yield proc
    finally:
        run_in_private_loop(proc.stop())


@pytest.fixture(scope="session")
def etcd_url(etcd_process: EtcdProcess) -> str:
    """Client URL (``http://127.0.0.1:PORT``) of the session's etcd."""
    return etcd_process.client_url


@pytest.fixture
async def kv(etcd_url: str) -> AsyncIterator[EtcdKV]:
    client = await EtcdKV.connect([etcd_url], timeout=5.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def key_prefix() -> bytes:
    """A key prefix no other test uses."""
    return f"/test/{uuid.uuid4().hex}/".encode()


@pytest.fixture
async def own_etcd(tmp_path: Path) -> AsyncIterator[EtcdProcess]:
    """A private etcd that the test may pause, stop, kill or restart."""
    require_etcd()
    proc = EtcdProcess("own", tmp_path / "etcd", progress_notify_interval=PROGRESS_NOTIFY_INTERVAL)
    await proc.start(startup_timeout=60)
    try:
        yield proc
    finally:
        await proc.stop(grace=5)


@pytest.fixture(scope="module")
def hareg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaregServer]:
    """A running ``hareg serve`` (embedded etcd, filesystem blobs) for a whole module."""
    require_etcd()
    data_dir = tmp_path_factory.mktemp("hareg") / "data"
    server = launch(data_dir)
    try:
        yield server
    finally:
        code = server.stop(signal.SIGTERM)
        wait_no_orphans(data_dir)
        stderr = server.stderr()
        shutil.rmtree(data_dir, ignore_errors=True)
        assert code == 0, f"hareg exited with {code} on SIGTERM; stderr:\n{stderr[-4000:]}"
