"""Local-cluster fixtures: a real ``hareg cluster up`` (3 etcd members, the
object store, 3 replicas, haproxy) started once per test module.

Tests in a module share the cluster and run in file order; a test that
breaks something leaves it healed, and the last test of ``test_cluster.py``
stops the cluster itself.  The fixture's teardown stops whatever still runs
and fails if any process of the cluster outlives it.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator

import pytest

from hareg.cluster.haproxy import HaproxyError, find_haproxy
from hareg.processes.etcd import EtcdNotFound, find_etcd

from .cluster_process import ClusterRun, launch, recorded_pids, wait_gone

CLUSTER_CONFIG = "managementState: Managed\nreplicas: 3\n"


def require_cluster_tools() -> None:
    try:
        find_etcd()
        find_haproxy()
    except (EtcdNotFound, HaproxyError) as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cluster_config_text() -> str:
    """The ``--config`` file the module's cluster starts with (a module may override it)."""
    return CLUSTER_CONFIG


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, cluster_config_text: str) -> Iterator[ClusterRun]:
    require_cluster_tools()
    directory = tmp_path_factory.mktemp("cluster")
    run = launch(directory, config_text=cluster_config_text)
    pids = recorded_pids(run)
    try:
        yield run
    finally:
        pids |= recorded_pids(run)
        if run.proc.poll() is None:
            code = run.stop(signal.SIGTERM)
            assert code == 0, f"exit code {code}; stderr:\n{run.stderr()[-4000:]}"
        wait_gone(pids)
        shutil.rmtree(directory, ignore_errors=True)
