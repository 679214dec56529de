"""The console's cluster page (hareg/http/console_assets/app.js,
``GET /hareg/v1/members``) on a real ``hareg cluster up``, through haproxy,
in a real headless Chromium: three replicas and three etcd members up, a
killed replica shown down, then back once the supervisor restarts it.

The supervisor is paused (SIGSTOP) while the replica is killed, so the
replica stays down long enough to be seen whatever the machine's speed; it
restarts the replica as soon as it runs again (SIGCONT).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Screenshots, require_chromium, start_browser, text_of, wait_until

from .cluster_process import ClusterRun

STATE_TIMEOUT = 90.0  # a replica's restart on a busy machine, and a refresh of the page


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    require_chromium()
    d = start_browser(tmp_path / "profile")
    try:
        yield d
    finally:
        d.quit()


def states(d: Any) -> dict[str, str]:
    return dict(
        d.execute_script(
            "return [...document.querySelectorAll('#replicas tbody tr')]"
            ".map(r => [r.dataset.replica, r.dataset.state])"
        )
    )


def test_the_cluster_page_shows_a_killed_replica_down_then_back(
    cluster: ClusterRun, driver: Any, tmp_path: Path
) -> None:
    shots = Screenshots(tmp_path / "screenshots")
    names = [r["name"] for r in cluster.info()["replicas"]]
    assert len(names) == 3
    driver.get(f"{cluster.url}/console/cluster")
    wait_until(
        driver,
        lambda d: states(d) == dict.fromkeys(names, "up"),
        "three replicas up",
        timeout=STATE_TIMEOUT,
    )
    healthy = "#etcd tr[data-state='healthy']"
    wait_until(
        driver, lambda d: len(d.find_elements("css selector", healthy)) == 3, "three etcd members healthy"
    )
    assert "Available" in text_of(driver, "#conditions")
    shots.take(driver, "cluster")

    victim = cluster.replica(names[0])
    os.kill(cluster.pid, signal.SIGSTOP)  # the supervisor: no restart until SIGCONT
    try:
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(
            driver,
            lambda d: states(d).get(victim["name"]) == "down",
            f"{victim['name']} shown down",
            timeout=STATE_TIMEOUT,
        )
        assert all(states(driver)[n] == "up" for n in names[1:])
        shots.take(driver, "cluster-replica-down")
    finally:
        os.kill(cluster.pid, signal.SIGCONT)
    wait_until(
        driver,
        lambda d: states(d).get(victim["name"]) == "up",
        f"{victim['name']} back",
        timeout=STATE_TIMEOUT,
    )
    assert cluster.replica(victim["name"])["pid"] != victim["pid"]  # a new process
    shots.take(driver, "cluster-replica-back")
