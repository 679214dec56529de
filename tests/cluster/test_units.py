"""The cluster's parts that need no running cluster: the layout, haproxy's
configuration, the desired state and the replicas' configuration, and the
conditions computed from an observation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from hareg.cluster.desired import load_desired, render_replica_config, write_replica_config
from hareg.cluster.haproxy import Backend, HaproxyError, find_haproxy, render_config
from hareg.cluster.spec import ClusterError, load_or_create_layout, port_free, write_json_atomic
from hareg.cluster.status import ClusterObservation, ComponentState, cluster_conditions
from hareg.config.model import ConfigError
from hareg.config.reader import load_config

# -- layout ------------------------------------------------------------------


def test_layout_is_created_and_kept(tmp_path: Path) -> None:
    layout = load_or_create_layout(tmp_path / "c", etcd_members=3, port=None, storage="seaweedfs")
    assert [m.name for m in layout.etcd] == ["m1", "m2", "m3"]
    assert layout.etcd_endpoints == [f"http://127.0.0.1:{m.client_port}" for m in layout.etcd]
    assert len(layout.http_secret) >= 32 and layout.storage.secret_key
    first = layout.slot(1)
    assert first.name == "replica-1" and first.url == f"http://127.0.0.1:{first.port}"
    ports = [layout.lb_port, first.port, *(p for m in layout.etcd for p in (m.client_port, m.peer_port))]
    ports += [p + d for p in layout.storage.http_ports for d in (0, 10000)]
    assert len(set(ports)) == len(ports), "every port distinct, SeaweedFS' gRPC twins included"
    assert (tmp_path / "c" / "layout.json").stat().st_mode & 0o777 == 0o600

    again = load_or_create_layout(tmp_path / "c", etcd_members=3, port=None, storage="seaweedfs")
    assert again.etcd == layout.etcd and again.storage == layout.storage
    assert again.http_secret == layout.http_secret and again.etcd_token == layout.etcd_token
    assert again.slot(1) == first and again.lb_port == layout.lb_port
    moved = load_or_create_layout(tmp_path / "c", etcd_members=3, port=first.port + 1, storage="seaweedfs")
    assert moved.lb_port == first.port + 1, "--port may change between runs"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"etcd_members": 2}, "odd number"),
        ({"etcd_members": 9}, "at most 7"),
        ({"storage": "nfs"}, "expected one of seaweedfs, filesystem"),
        ({"port": 70000}, "expected 1-65535"),
    ],
)
def test_layout_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        load_or_create_layout(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_layout_cannot_change_etcd_members_or_storage(tmp_path: Path) -> None:
    load_or_create_layout(tmp_path, etcd_members=3, storage="filesystem")
    with pytest.raises(ClusterError, match="holds a cluster with 3 etcd members"):
        load_or_create_layout(tmp_path, etcd_members=1, storage="filesystem")
    with pytest.raises(ClusterError, match="filesystem storage"):
        load_or_create_layout(tmp_path, etcd_members=3, storage="seaweedfs")


def test_damaged_layout_is_reported(tmp_path: Path) -> None:
    (tmp_path / "layout.json").write_text('{"version": 1}')
    with pytest.raises(ClusterError, match="damaged"):
        load_or_create_layout(tmp_path)


def test_write_json_atomic_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_port_free() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_free(s.getsockname()[1])


# -- haproxy -------------------------------------------------------------------


def test_haproxy_config_balances_checks_and_retries() -> None:
    text = render_config(
        "127.0.0.1:5000",
        [Backend("replica-1", "127.0.0.1:6001"), Backend("replica-2", "127.0.0.1:6002")],
    )
    lines = [line.strip() for line in text.splitlines()]
    for expected in (
        "bind 127.0.0.1:5000",
        "option httpchk GET /readyz",
        "http-check expect status 200",
        "retries 3",
        "option redispatch 1",
        "retry-on conn-failure empty-response response-timeout 503",
        "http-request disable-l7-retry unless METH_GET || { method PUT } { path_reg ^/v2/.+/manifests/[^/]+$ }"
        " || { method POST } { path_reg ^/v2/.+/blobs/uploads/?$ }",
        "timeout server 10m",
        "server replica-1 127.0.0.1:6001",
        "server replica-2 127.0.0.1:6002",
        # Every replica failing its check: sent to them anyway.
        "server replica-1-spare 127.0.0.1:6001 backup no-check",
        # Writes only to replicas that can write; reads to every ready one.
        "use_backend writers unless METH_GET",
        "default_backend replicas",
        "option httpchk GET /readyz?for=writes",
    ):
        assert expected in lines, expected
    assert lines.count("server replica-1 127.0.0.1:6001") == 2  # in both backends
    assert "balance roundrobin" in lines
    assert not any("cookie" in line or "stick" in line for line in lines), "no sticky sessions"


def test_haproxy_accepts_its_config(tmp_path: Path) -> None:
    try:
        binary = find_haproxy()
    except HaproxyError as exc:
        pytest.skip(str(exc))
    for resolvers in ((), ("127.0.0.11:53",)):
        cfg = tmp_path / "h.cfg"
        cfg.write_text(
            render_config("127.0.0.1:5000", [Backend("r1", "127.0.0.1:6001")], resolvers=resolvers)
        )
        result = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr


def test_find_haproxy_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(HaproxyError, match="apt-get install haproxy"):
        find_haproxy(tmp_path / "no-haproxy")


# -- desired state and the replicas' configuration ------------------------------


def test_replicas_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("managementState: Managed\n")
    assert load_desired(cfg, {}).replicas == 3, "default for a cluster"
    assert load_desired(None, {}).replicas == 3
    assert load_desired(cfg, {"HAREG_REPLICAS": "4"}).replicas == 4
    cfg.write_text("replicas: 2\n")
    assert load_desired(cfg, {}).replicas == 2
    first = load_desired(cfg, {}, replicas=5)
    assert first.replicas == 5, "--replicas wins at startup"
    assert load_desired(cfg, {}, previous=first).replicas == 5, "an unchanged file keeps the count"
    cfg.write_text("replicas: 1\nmanagementState: Removed\n")
    changed = load_desired(cfg, {}, previous=first)
    assert (changed.replicas, changed.management_state) == (1, "Removed")
    with pytest.raises(ConfigError, match="--replicas"):
        load_desired(cfg, {}, replicas=0)


def test_replica_config_uses_the_cluster_storage_etcd_and_secret(tmp_path: Path) -> None:
    layout = load_or_create_layout(tmp_path / "c", etcd_members=3, storage="seaweedfs")
    config = load_config(None, {"HAREG_READ_ONLY": "true", "HAREG_MANAGEMENT_STATE": "Removed"})
    data = render_replica_config(config, layout)
    assert data["storage"]["s3"]["regionEndpoint"] == layout.storage.s3_url
    assert data["storage"]["s3"]["secretKey"] == layout.storage.secret_key
    assert data["etcd"]["endpoints"] == layout.etcd_endpoints
    assert data["httpSecret"] == layout.http_secret
    assert data["readOnly"] is True and data["managementState"] == "Managed"
    assert write_replica_config(config, layout, tmp_path) is True
    assert write_replica_config(config, layout, tmp_path) is False, "unchanged"
    path = layout.paths.replica_config
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_config(path, {})
    assert loaded.storage.kind == "s3" and loaded.http_secret == layout.http_secret
    assert loaded.etcd.endpoints == tuple(layout.etcd_endpoints)

    own = load_config(None, {"HAREG_HTTP_SECRET": "s" * 40})
    assert render_replica_config(own, layout)["httpSecret"] == "s" * 40, "the file's secret wins"
    # Each replica advertises its own 127.0.0.1 port, never one URL shared by all.
    shared = load_config(None, {"HAREG_ADVERTISE_URL": "http://registry.example.com:5000"})
    assert render_replica_config(shared, layout)["advertiseURL"] is None


def test_filesystem_cluster_shares_one_directory(tmp_path: Path) -> None:
    layout = load_or_create_layout(tmp_path / "c", etcd_members=1, storage="filesystem")
    data = render_replica_config(load_config(None, {}), layout)
    assert data["storage"] == {"filesystem": {"rootDirectory": str(layout.paths.blobs_dir)}}
    assert yaml.safe_load(yaml.safe_dump(data))["storage"] == data["storage"]


# -- conditions --------------------------------------------------------------------


def _obs(
    *,
    state: str = "Managed",
    desired: int = 3,
    ready: int = 3,
    alive: int | None = None,
    etcd_ok: int = 3,
    storage_ok: bool = True,
    lb_ok: bool = True,
    supervisor: bool = True,
) -> ClusterObservation:
    alive = ready if alive is None else alive
    count = max(desired, alive)
    return ClusterObservation(
        registry="http://127.0.0.1:5000",
        management_state=state,
        desired_replicas=desired,
        supervisor_pid=10,
        supervisor_alive=supervisor,
        phase="Running",
        replicas=[
            ComponentState(f"replica-{i}", 100 + i if i <= alive else None, i <= alive, i <= ready, "u")
            for i in range(1, count + 1)
        ],
        etcd=[ComponentState(f"m{i}", 200 + i, i <= etcd_ok, i <= etcd_ok, "e") for i in range(1, 4)],
        storage=ComponentState("storage", 300, storage_ok, storage_ok, "s"),
        lb=ComponentState("haproxy", 400, lb_ok, lb_ok, "l"),
    )


def _reasons(obs: ClusterObservation) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in cluster_conditions(obs)}


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (
            _obs(),
            {
                "Available": ("True", "AllReplicasReady"),
                "Progressing": ("False", "AllReplicasReady"),
                "Degraded": ("False", "AsExpected"),
            },
        ),
        (
            _obs(ready=2),
            {
                "Available": ("True", "MinimumAvailability"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("True", "ReplicaDown"),
            },
        ),
        (
            _obs(ready=0),
            {
                "Available": ("False", "NoReplicasAvailable"),
                "Progressing": ("True", "RollingOut"),
                "Degraded": ("True", "ReplicaDown"),
            },
        ),
        (
            _obs(etcd_ok=2),
            {"Available": ("True", "AllReplicasReady"), "Degraded": ("True", "EtcdMemberDown")},
        ),
        (_obs(etcd_ok=1, ready=0), {"Degraded": ("True", "EtcdQuorumLost")}),
        (_obs(storage_ok=False), {"Degraded": ("True", "StorageUnavailable")}),
        (
            _obs(lb_ok=False),
            {"Available": ("False", "LoadBalancerDown"), "Degraded": ("True", "LoadBalancerDown")},
        ),
        (
            _obs(state="Removed", ready=0),
            {
                "Available": ("True", "Removed"),
                "Progressing": ("False", "Removed"),
                "Degraded": ("False", "Removed"),
            },
        ),
        (_obs(state="Removed", ready=0, alive=2), {"Progressing": ("True", "Removing")}),
        (
            _obs(state="Unmanaged", ready=2),
            {"Progressing": ("False", "Unmanaged"), "Degraded": ("True", "ReplicaDown")},
        ),
        (_obs(desired=2, ready=3), {"Progressing": ("True", "ScalingDown")}),
        (
            _obs(supervisor=False, lb_ok=False, ready=0, etcd_ok=0, storage_ok=False),
            {
                "Available": ("False", "SupervisorDown"),
                "Progressing": ("False", "SupervisorDown"),
                "Degraded": ("True", "SupervisorDown"),
            },
        ),
    ],
)
def test_conditions(obs: ClusterObservation, expected: dict[str, tuple[str, str]]) -> None:
    got = _reasons(obs)
    assert {k: got[k] for k in expected} == expected
    assert [c.type for c in cluster_conditions(obs)] == ["Available", "Progressing", "Degraded"]
    assert all(c.message for c in cluster_conditions(obs))


def test_a_replica_reporting_a_full_etcd_makes_the_cluster_degraded_but_available() -> None:
    obs = _obs()
    obs.replicas[1].reason = "MetadataStoreFull"
    got = _reasons(obs)
    assert got["Available"] == ("True", "AllReplicasReady")
    assert got["Degraded"] == ("True", "MetadataStoreFull")
    assert "replica-2" in cluster_conditions(obs)[2].message


def test_degraded_message_lists_every_problem() -> None:
    degraded = cluster_conditions(_obs(ready=2, etcd_ok=2, storage_ok=False))[2]
    assert degraded.reason == "EtcdMemberDown"
    assert "m3" in degraded.message and "object store" in degraded.message and "replica-3" in degraded.message
