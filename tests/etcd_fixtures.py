"""A private three-member etcd cluster, for every test directory (tests/conftest.py
loads this plugin).

``etcd_cluster``: three real members on 127.0.0.1 forming one cluster, started
for one test, which may pause, stop or kill any of them (they are resumed and
stopped afterwards); ``leader_of`` tells which member leads now, as the members
themselves report it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client
from process_checks import require_etcd

from hareg.processes.etcd import EtcdProcess
from hareg.processes.ports import free_ports


@pytest.fixture
async def etcd_cluster(tmp_path: Path) -> AsyncIterator[list[EtcdProcess]]:
    require_etcd()
    ports = free_ports(6)
    peers = {f"m{i}": f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)}
    members = [
        EtcdProcess(
            f"m{i}",
            tmp_path / f"etcd-m{i}",
            client_port=ports[2 * i],
            peer_port=ports[2 * i + 1],
            initial_cluster=peers,
            cluster_token=f"cluster-{tmp_path.name}",
            progress_notify_interval="100ms",
        )
        for i in range(3)
    ]
    try:
        await asyncio.gather(*(m.start(startup_timeout=60) for m in members))
        yield members
    finally:
        for m in members:
            if m.running:
                m.resume()
        # One after another: stopped all at once, each waits out its grace
        # (5 s) for peers that are stopping too; in turn each stops at once.
        for m in members:
            await m.stop(grace=5)


async def leader_of(members: list[EtcdProcess], within: float = 60.0) -> int:
    """The index of the member that leads now."""
    async with asyncio.timeout(within):
        while True:
            ids: dict[int, int] = {}
            leader = 0
            for i, m in enumerate(members):
                with contextlib.suppress(Exception):
                    async with Etcd3Client([m.client_url.removeprefix("http://")]) as client:
                        assert client.maintenance is not None
                        status = await client.maintenance.status(timeout=2)
                        ids[int(status.header.member_id)] = i
                        leader = leader or int(status.leader)
            if leader in ids:
                return ids[leader]
            await asyncio.sleep(0.1)
