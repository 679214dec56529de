"""End-to-end fixtures: ``hareg serve`` as a real subprocess on 127.0.0.1.

``hareg_server`` (module scope) is one running registry with its private
etcd child under a temporary data dir.  ``hareg_launcher`` starts more (on
demand, with any extra arguments) for tests of the command itself; every
process it started is stopped when the test ends.

Teardown checks that no process survives whose command line names a path
inside the data dir (the embedded etcd runs with ``--data-dir DIR/...``), so
an orphaned etcd fails the test that left it behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from process_checks import require_etcd

from .hareg_process import START_TIMEOUT, HaregServer, Launcher, launch, wait_no_orphans


@pytest.fixture
def hareg_launcher() -> Iterator[Launcher]:
    """``launch(data_dir, listen=..., extra_args=..., wait_ready=...)``; whatever
    it started is stopped (SIGKILL if need be) and checked for orphans at the end."""
    require_etcd()
    started: list[HaregServer] = []

    def start(
        data_dir: Path, *, wait_ready: bool = True, timeout: float = START_TIMEOUT, **options: Any
    ) -> HaregServer:
        server = launch(data_dir, wait_ready=False, **options)  # listen=, extra_args=
        started.append(server)
        if wait_ready:
            server.wait_until_ready(timeout)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)
    for server in started:
        wait_no_orphans(server.data_dir)
