"""``hareg cluster up`` starting, failing and stopping: nothing is ever left
behind, not even when the supervisor itself is SIGKILLed, and a cluster
started again on its directory keeps its data.  Small clusters (one etcd
member, one replica) keep this module fast."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import psutil
import pytest

from .cluster_process import ClusterRun, alive, launch, recorded_pids, wait_gone
from .conftest import require_cluster_tools
from .oci import pull_image, push_image

pytestmark = pytest.mark.timeout(300)

SMALL = ("--etcd-members", "1", "--replicas", "1")


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_cluster_tools()


def processes_under(directory: Path) -> list[str]:
    """Live processes with ``directory`` in their command line."""
    inside = str(directory.resolve())
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and any(inside in a for a in p.info["cmdline"] or ()):
                found.append(f"{p.pid}: {' '.join(p.info['cmdline'])[:200]}")
        except psutil.Error:
            continue
    return found


def assert_nothing_under(directory: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while processes_under(directory):
        if time.monotonic() >= deadline:
            raise AssertionError(f"processes left behind: {processes_under(directory)}")
        time.sleep(0.05)


def stop_quietly(run: ClusterRun) -> None:
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait(timeout=30)


def test_sigkilled_supervisor_takes_every_child_with_it(tmp_path: Path) -> None:
    run = launch(tmp_path, args=SMALL)
    try:
        pids = recorded_pids(run)
        assert len(pids) >= 4  # supervisor, etcd, replica, haproxy (+ its worker, + SeaweedFS)
        os.kill(run.pid, signal.SIGKILL)
        run.proc.wait(timeout=30)
        wait_gone(pids)  # PR_SET_PDEATHSIG
    finally:
        stop_quietly(run)
    assert_nothing_under(tmp_path)


def test_invalid_config_is_reported_and_starts_nothing(tmp_path: Path) -> None:
    run = launch(tmp_path, args=SMALL, config_text="managementState: Sometimes\n", wait_ready=False)
    assert run.proc.wait(timeout=30) == 2
    assert "managementState" in run.stderr() and "Sometimes" in run.stderr()
    assert "Traceback" not in run.stderr()
    assert_nothing_under(tmp_path)


def test_unreadable_auth_file_is_reported_and_starts_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-htpasswd"
    run = launch(
        tmp_path,
        args=SMALL,
        config_text=f"auth:\n  htpasswd:\n    path: {missing}\n",
        wait_ready=False,
    )
    assert run.proc.wait(timeout=30) == 2
    stderr = run.stderr()
    assert (
        f"auth.htpasswd.path: '{missing}' cannot be read" in stderr and "expected a readable file" in stderr
    )
    assert "Traceback" not in stderr
    assert_nothing_under(tmp_path)
    assert not (tmp_path / "cluster" / "hareg.yaml").exists()


def test_failed_start_tears_down_what_started(tmp_path: Path) -> None:
    run = launch(tmp_path, args=(*SMALL, "--haproxy-binary", "/bin/false"), wait_ready=False)
    try:
        assert run.proc.wait(timeout=60) == 1
    finally:
        stop_quietly(run)
    assert "haproxy" in run.stderr() and "could not start" in run.stderr()
    assert "Traceback" not in run.stderr()
    assert_nothing_under(tmp_path)
    assert not (tmp_path / "cluster" / "cluster.json").exists()


def test_sigterm_while_starting_stops_cleanly(tmp_path: Path) -> None:
    run = launch(tmp_path, args=SMALL, wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while not processes_under(tmp_path / "cluster" / "etcd") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run.stop(signal.SIGTERM) == 0
    finally:
        stop_quietly(run)
    assert_nothing_under(tmp_path)
    assert "Traceback" not in run.stderr()


async def test_restart_on_the_same_dir_keeps_the_data(tmp_path: Path) -> None:
    repo = f"lifecycle/keep-{uuid.uuid4().hex[:8]}"
    run = launch(tmp_path, args=SMALL)
    try:
        first = run.info()
        async with aiohttp.ClientSession() as session:
            image = await push_image(session, run.url, repo, "v1")
        assert run.stop(signal.SIGTERM) == 0
        assert not alive(recorded_pids(run) - {run.pid})
        run = launch(tmp_path, args=SMALL)
        second = run.info()
        assert [m["client_url"] for m in second["etcd"]] == [m["client_url"] for m in first["etcd"]]
        assert second["replicas"][0]["url"] == first["replicas"][0]["url"]
        async with aiohttp.ClientSession() as session:
            await pull_image(session, run.url, repo, "v1", image)
        assert run.stop(signal.SIGTERM) == 0
    finally:
        stop_quietly(run)
    assert_nothing_under(tmp_path)
