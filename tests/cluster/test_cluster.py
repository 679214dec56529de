"""The local cluster as a user runs it: ``hareg cluster up`` brings up 3 etcd
members, the object store, 3 replicas and haproxy; a push through haproxy is
pulled from every replica's own URL; a killed replica is restarted; status
reports conditions; Removed (config + SIGHUP) stops the replicas; SIGTERM
leaves no process behind; 20 concurrent first pulls of one image mirrored
from an htpasswd upstream (pullThrough, its password file copied into the
cluster) fetch each blob once.  One cluster for the module, tests in file
order."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import psutil
import pytest
import yaml
from upstream_fixtures import Distribution, distribution
from upstream_fixtures import push_image as push_upstream

from .cluster_process import EVENT_TIMEOUT, ClusterRun, alive, hareg_cli, recorded_pids, wait_for, wait_gone
from .conftest import CLUSTER_CONFIG
from .oci import pull_image, push_image

pytestmark = pytest.mark.timeout(300)

MIRROR_USER = ("mirror-bot", "mirror-bot-password-7f3a")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution | None]:
    """The upstream the cluster mirrors: distribution with htpasswd, its access log on."""
    if not shutil.which("docker-registry"):
        yield None
        return
    with distribution(tmp_path_factory.mktemp("upstream"), MIRROR_USER, access_log=True) as running:
        yield running


@pytest.fixture(scope="module")
def cluster_config_text(upstream: Distribution | None, tmp_path_factory: pytest.TempPathFactory) -> str:
    if upstream is None:
        return CLUSTER_CONFIG
    password = tmp_path_factory.mktemp("mirror-secret") / "password"
    password.write_text(MIRROR_USER[1] + "\n")
    mirror = {
        "prefix": "mirror",
        "remote": upstream.url,
        "username": MIRROR_USER[0],
        "passwordFile": str(password),
        "ttl": "1h",
    }
    return CLUSTER_CONFIG + yaml.safe_dump({"pullThrough": [mirror]})


def readyz(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def status_json(cluster: ClusterRun) -> dict[str, Any]:
    result = hareg_cli("cluster", "status", "--dir", str(cluster.dir), "--json")
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def conditions(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in doc["conditions"]}


def conditions_messages(doc: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["message"] for c in doc["conditions"]}


def status_where(cluster: ClusterRun, condition: str, reason: str) -> dict[str, Any] | None:
    """The status document once ``condition`` has ``reason``, else None."""
    doc = status_json(cluster)
    return doc if conditions(doc)[condition][1] == reason else None


def sighup_with(cluster: ClusterRun, config_text: str) -> None:
    assert cluster.config_path is not None
    kept = yaml.safe_load(cluster.config_path.read_text()).get("pullThrough")
    if kept and "pullThrough" not in config_text:  # the mirror stays (no restart for its sake)
        config_text += yaml.safe_dump({"pullThrough": kept})
    cluster.config_path.write_text(config_text)
    os.kill(cluster.pid, signal.SIGHUP)


def test_cluster_json_describes_every_process(cluster: ClusterRun) -> None:
    info = cluster.info()
    assert set(info) == {"registry", "replicas", "etcd", "storage", "lb"}
    assert info["registry"] == cluster.url == f"http://127.0.0.1:{cluster.port}"
    assert [r["name"] for r in info["replicas"]] == ["replica-1", "replica-2", "replica-3"]
    assert [m["name"] for m in info["etcd"]] == ["m1", "m2", "m3"]
    assert all(set(r) == {"name", "url", "pid"} for r in info["replicas"])
    assert all(set(m) == {"name", "client_url", "pid"} for m in info["etcd"])
    assert set(info["storage"]) == {"url", "pid"} and set(info["lb"]) == {"pid"}
    urls = [r["url"] for r in info["replicas"]] + [m["client_url"] for m in info["etcd"]]
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    assert len(set(urls)) == len(urls)
    pids = [r["pid"] for r in info["replicas"]] + [m["pid"] for m in info["etcd"]] + [info["lb"]["pid"]]
    if info["storage"]["url"].startswith("http"):
        pids.append(info["storage"]["pid"])
    assert all(psutil.pid_exists(p) for p in pids)
    # Every child listens on 127.0.0.1 only.
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                assert conn.laddr.ip == "127.0.0.1", (pid, conn)
    assert all(readyz(r["url"]) for r in info["replicas"])


async def test_push_through_haproxy_pull_from_every_replica(cluster: ClusterRun) -> None:
    repo = f"cluster/push-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        image = await push_image(session, cluster.url, repo, "v1")
        for replica in cluster.info()["replicas"]:
            await pull_image(session, replica["url"], repo, "v1", image)
        await pull_image(session, cluster.url, repo, "v1", image)


async def test_concurrent_first_pulls_of_a_mirrored_image_fetch_each_blob_once(
    cluster: ClusterRun, upstream: Distribution | None
) -> None:
    """docs/pull-through.md: 20 clients pull one uncached image at once, through
    haproxy and from each of the three replicas' own URLs: all get its bytes,
    and the upstream serves its manifest and each blob once (single-flight
    across the cluster).  The upstream's password reaches every replica as a
    copy in the cluster directory, and never the configuration or the logs."""
    if upstream is None:
        pytest.skip("docker-registry (CNCF distribution) is needed")
    image = await push_upstream(
        upstream.url, "lib/app", "v1", "cluster mirror", upstream.auth, layer_size=1 << 20
    )
    copy = cluster.dir / "pull-through" / "0-password"
    assert copy.read_text() == MIRROR_USER[1] + "\n" and copy.stat().st_mode & 0o777 == 0o600
    replica_config = yaml.safe_load((cluster.dir / "hareg.yaml").read_text())
    assert replica_config["pullThrough"][0]["passwordFile"] == str(copy)
    bases = [cluster.url, *(r["url"] for r in cluster.info()["replicas"])]
    assert len(bases) == 4
    expected = {"manifest": image.manifest, "blobs": image.blobs}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=EVENT_TIMEOUT)) as session:
        await asyncio.gather(
            *(pull_image(session, bases[i % 4], "mirror/lib/app", "v1", expected) for i in range(20))
        )
    assert upstream.served(f"GET /v2/lib/app/manifests/{image.digest}") == 1
    for digest in image.blobs:
        assert upstream.served(f"GET /v2/lib/app/blobs/{digest}") == 1, digest
    for log in (cluster.dir / "logs").iterdir():
        assert MIRROR_USER[1] not in log.read_text(errors="replace"), log.name


def test_status_reports_conditions(cluster: ClusterRun) -> None:
    doc = wait_for(
        lambda: status_where(cluster, "Available", "AllReplicasReady"), EVENT_TIMEOUT, "all replicas ready"
    )
    assert conditions(doc) == {
        "Available": ("True", "AllReplicasReady"),
        "Progressing": ("False", "AllReplicasReady"),
        "Degraded": ("False", "AsExpected"),
    }
    assert doc["registry"] == cluster.url and doc["managementState"] == "Managed"
    assert doc["replicas"] == {"desired": 3, "ready": 3}
    assert all(c["message"] for c in doc["conditions"])
    text = hareg_cli("cluster", "status", "--dir", str(cluster.dir))
    assert text.returncode == 0
    assert "Available" in text.stdout and "AllReplicasReady" in text.stdout


def test_second_up_on_a_running_dir_is_refused(cluster: ClusterRun) -> None:
    result = hareg_cli("cluster", "up", "--dir", str(cluster.dir), "--storage", "filesystem")
    assert result.returncode == 1
    assert f"already running in {cluster.dir} (supervisor pid {cluster.pid})" in result.stderr
    assert cluster.info()["registry"] == cluster.url, "the running cluster is untouched"


def test_killed_replica_is_restarted(cluster: ClusterRun) -> None:
    victim = cluster.replica("replica-2")
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        r = cluster.replica("replica-2")
        return r if r["pid"] not in (None, victim["pid"]) else None

    new = wait_for(restarted, EVENT_TIMEOUT, "a new pid for replica-2 in cluster.json")
    # At once, not after a backoff: the supervisor says which (a wall-clock bound
    # would fail on a busy machine and could not tell the two apart).
    assert (
        f"replica replica-2 (pid {victim['pid']}) exited with code -9; starting it again;" in cluster.stderr()
    )
    assert psutil.pid_exists(new["pid"]) and not psutil.pid_exists(victim["pid"])
    assert new["url"] == victim["url"]
    wait_for(lambda: readyz(new["url"]), EVENT_TIMEOUT, "the restarted replica's /readyz")
    doc = wait_for(
        lambda: status_where(cluster, "Degraded", "AsExpected"), EVENT_TIMEOUT, "Degraded False again"
    )
    assert conditions(doc)["Available"] == ("True", "AllReplicasReady")


async def test_push_still_works_after_restart(cluster: ClusterRun) -> None:
    repo = f"cluster/after-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        image = await push_image(session, cluster.url, repo, "v1")
        for replica in cluster.info()["replicas"]:
            await pull_image(session, replica["url"], repo, "v1", image)


def test_scale_down_and_up_with_sighup(cluster: ClusterRun) -> None:
    third = cluster.replica("replica-3")
    sighup_with(cluster, "managementState: Managed\nreplicas: 2\n")
    wait_for(lambda: len(cluster.info()["replicas"]) == 2, EVENT_TIMEOUT, "2 replicas in cluster.json")
    wait_gone({third["pid"]})
    assert "replica-3" not in (cluster.dir / "haproxy.cfg").read_text()
    sighup_with(cluster, CLUSTER_CONFIG)

    def third_back() -> dict[str, Any] | None:
        replicas = cluster.info()["replicas"]
        return replicas[2] if len(replicas) == 3 and replicas[2]["pid"] else None

    back = wait_for(third_back, EVENT_TIMEOUT, "replica-3 back")
    assert back["url"] == third["url"], "a replica comes back at its URL"
    wait_for(lambda: readyz(back["url"]), EVENT_TIMEOUT, "replica-3 ready")
    assert "server replica-3" in (cluster.dir / "haproxy.cfg").read_text()


def test_removed_stops_replicas_and_managed_brings_them_back(cluster: ClusterRun) -> None:
    before = cluster.info()
    old = {r["pid"] for r in before["replicas"]}
    sighup_with(cluster, "managementState: Removed\n")

    def all_stopped() -> dict[str, Any] | None:
        info = cluster.info()
        return info if all(r["pid"] is None for r in info["replicas"]) else None

    info = wait_for(all_stopped, EVENT_TIMEOUT, "every replica pid null")
    wait_gone(old)
    # etcd, the object store and haproxy stay.
    assert (
        info["etcd"] == before["etcd"] and info["lb"] == before["lb"] and info["storage"] == before["storage"]
    )
    doc = status_json(cluster)
    assert doc["managementState"] == "Removed"
    assert conditions(doc)["Available"] == ("True", "Removed")
    assert conditions(doc)["Progressing"] == ("False", "Removed")
    time.sleep(0.5)  # Removed is not restarted by the monitor
    assert all(r["pid"] is None for r in cluster.info()["replicas"])

    sighup_with(cluster, CLUSTER_CONFIG)

    def all_started() -> dict[str, Any] | None:
        info = cluster.info()
        return info if all(r["pid"] for r in info["replicas"]) else None

    info = wait_for(all_started, EVENT_TIMEOUT, "replicas started again")
    for r in info["replicas"]:
        wait_for(lambda url=r["url"]: readyz(url), EVENT_TIMEOUT, f"{r['name']} ready")


def test_unmanaged_leaves_a_dead_replica_alone(cluster: ClusterRun) -> None:
    sighup_with(cluster, "managementState: Unmanaged\nreplicas: 3\n")
    wait_for(lambda: status_json(cluster)["managementState"] == "Unmanaged", EVENT_TIMEOUT, "Unmanaged")
    victim = cluster.replica("replica-1")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: cluster.replica("replica-1")["pid"] is None, EVENT_TIMEOUT, "replica-1 pid null")
    # Managed restarts in the very monitor pass that records the death (a null
    # pid is never published); many more passes (0.1 s apart) leave it alone too.
    time.sleep(2.5)
    assert cluster.replica("replica-1")["pid"] is None
    doc = status_json(cluster)
    assert conditions(doc)["Degraded"] == ("True", "ReplicaDown")
    assert conditions(doc)["Progressing"] == ("False", "Unmanaged")
    assert conditions(doc)["Available"][0] == "True"
    sighup_with(cluster, CLUSTER_CONFIG)
    new = wait_for(
        lambda: cluster.replica("replica-1")["pid"], EVENT_TIMEOUT, "replica-1 restarted once Managed"
    )
    assert new != victim["pid"]


def test_dead_etcd_member_is_reported_and_healed_on_sighup(cluster: ClusterRun) -> None:
    member = cluster.info()["etcd"][2]
    os.kill(member["pid"], signal.SIGKILL)
    wait_for(lambda: cluster.info()["etcd"][2]["pid"] is None, EVENT_TIMEOUT, "the member's pid null")
    doc = wait_for(
        lambda: status_where(cluster, "Degraded", "EtcdMemberDown"), EVENT_TIMEOUT, "EtcdMemberDown"
    )
    assert member["name"] in conditions_messages(doc)["Degraded"]
    assert conditions(doc)["Available"][0] == "True", "2 of 3 members keep the quorum"
    time.sleep(1.0)  # ten monitor passes
    assert cluster.info()["etcd"][2]["pid"] is None, "etcd members are restarted on SIGHUP only"
    sighup_with(cluster, CLUSTER_CONFIG)
    new = wait_for(lambda: cluster.info()["etcd"][2]["pid"], EVENT_TIMEOUT, "the member restarted")
    assert new != member["pid"]
    wait_for(lambda: status_where(cluster, "Degraded", "AsExpected"), EVENT_TIMEOUT, "Degraded False again")


def test_config_change_rolls_replicas_without_downtime(cluster: ClusterRun) -> None:
    import urllib.request

    wait_for(
        lambda: all(readyz(r["url"]) for r in cluster.info()["replicas"]),
        EVENT_TIMEOUT,
        "every replica ready",
    )
    before = {r["name"]: r["pid"] for r in cluster.info()["replicas"]}
    sighup_with(cluster, CLUSTER_CONFIG + "logLevel: Debug\n")
    failures, requests = [], 0
    deadline = time.monotonic() + 3 * EVENT_TIMEOUT  # three replicas, one after another
    while time.monotonic() < deadline:
        requests += 1
        try:
            with urllib.request.urlopen(f"{cluster.url}/v2/", timeout=30) as resp:
                if resp.status != 200:
                    failures.append(resp.status)
        except OSError as exc:
            failures.append(repr(exc))
        now = {r["name"]: r["pid"] for r in cluster.info()["replicas"]}
        if all(now[n] not in (None, before[n]) for n in before) and all(
            readyz(r["url"]) for r in cluster.info()["replicas"]
        ):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the replicas were not all restarted: {before} -> {now}")
    assert not failures, f"{len(failures)} of {requests} requests through haproxy failed: {failures[:5]}"
    assert "logLevel: Debug" in (cluster.dir / "hareg.yaml").read_text()


def test_sigterm_leaves_no_process(cluster: ClusterRun) -> None:
    pids = recorded_pids(cluster)
    assert len(pids) >= 1 + 3 + 3 + 1
    started = time.monotonic()
    assert cluster.stop(signal.SIGTERM) == 0, cluster.stderr()[-4000:]
    assert time.monotonic() - started < 30
    assert not alive(pids), alive(pids)
    assert not cluster.cluster_json.exists()
    assert "Traceback" not in cluster.stderr()
