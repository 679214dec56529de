"""The status condition model: a replica's conditions in each situation, and
their transition times (the endpoint itself: tests/http/test_status.py)."""

from __future__ import annotations

from hareg.registry.conditions import Condition, StatusTracker, replica_conditions
from hareg.registry.service import Readiness


def summary(conditions: list[Condition]) -> list[tuple[str, str, str]]:
    return [(c.type, c.status, c.reason) for c in conditions]


OK = {"etcd": "ok", "storage": "ok", "cache": "ok"}
WRITABLE = {"readOnly": False, "config": False, "cluster": False}


def test_conditions_of_each_situation() -> None:
    ready = Readiness(True, False, "Ready", OK)
    assert summary(
        replica_conditions(ready, read_only=WRITABLE, management_state="Managed", cache_ready=True)
    ) == [
        ("Available", "True", "Ready"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "False", "AsExpected"),
    ]
    read_only = {"readOnly": True, "config": False, "cluster": True}
    conditions = replica_conditions(ready, read_only=read_only, management_state="Managed", cache_ready=True)
    assert summary(conditions)[0] == ("Available", "True", "ReadOnly")
    assert "cluster-wide read-only switch" in conditions[0].message

    etcd_down = {**OK, "etcd": "unavailable: KVUnavailable"}
    degraded = Readiness(True, True, "EtcdUnavailable", etcd_down)
    conditions = replica_conditions(
        degraded, read_only=read_only, management_state="Managed", cache_ready=True
    )
    assert summary(conditions) == [
        ("Available", "True", "EtcdUnavailable"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "True", "EtcdUnavailable"),
    ]
    assert "pulls are served" in conditions[2].message

    never_loaded = Readiness(False, False, "EtcdUnavailable", {**etcd_down, "cache": "not loaded"})
    assert summary(
        replica_conditions(never_loaded, read_only=WRITABLE, management_state="Managed", cache_ready=False)
    ) == [
        ("Available", "False", "EtcdUnavailable"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "True", "EtcdUnavailable"),
    ]

    storage_down = Readiness(False, False, "StorageUnavailable", {**OK, "storage": "unavailable: OSError"})
    assert summary(
        replica_conditions(storage_down, read_only=WRITABLE, management_state="Managed", cache_ready=True)
    ) == [
        ("Available", "False", "StorageUnavailable"),
        ("Progressing", "False", "Ready"),
        ("Degraded", "True", "StorageUnavailable"),
    ]

    loading = Readiness(True, False, "Ready", {**OK, "cache": "not loaded"})
    assert summary(
        replica_conditions(loading, read_only=WRITABLE, management_state="Managed", cache_ready=False)
    )[1] == ("Progressing", "True", "Starting")

    assert summary(
        replica_conditions(ready, read_only=WRITABLE, management_state="Removed", cache_ready=True)
    ) == [
        ("Available", "True", "Removed"),
        ("Progressing", "False", "Removed"),
        ("Degraded", "False", "Removed"),
    ]


def test_transition_times_move_only_when_the_status_does() -> None:
    tracker = StatusTracker()
    up = [Condition("Degraded", "False", "AsExpected", "")]
    down = [Condition("Degraded", "True", "EtcdUnavailable", "x")]
    first = tracker.stamp(up, 1_700_000_000.0)[0]
    assert first.lastTransitionTime == "2023-11-14T22:13:20Z"
    assert tracker.stamp(up, 1_700_000_100.0)[0].lastTransitionTime == first.lastTransitionTime
    changed = tracker.stamp(down, 1_700_000_200.0)[0]
    assert changed.lastTransitionTime == "2023-11-14T22:16:40Z"
    # A new reason with the same status is no transition.
    same = tracker.stamp([Condition("Degraded", "True", "StorageUnavailable", "y")], 1_700_000_300.0)[0]
    assert same.lastTransitionTime == changed.lastTransitionTime


def test_a_document_names_the_transition_time_only_when_known() -> None:
    untracked = Condition("Available", "True", "AllReplicasReady", "3/3 replicas ready")
    assert untracked.document() == {
        "type": "Available",
        "status": "True",
        "reason": "AllReplicasReady",
        "message": "3/3 replicas ready",
    }
    stamped = StatusTracker().stamp([untracked], 1_700_000_000.0)[0]
    assert stamped.document()["lastTransitionTime"] == "2023-11-14T22:13:20Z"
