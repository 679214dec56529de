"""The status condition model: a replica's conditions in each situation, and
their transition times (the endpoint itself: tests/http/test_status.py)."""

from __future__ import annotations

import pytest

from hareg.registry.conditions import Condition, StatusTracker, replica_conditions
from hareg.registry.service import Readiness

OK = {"etcd": "ok", "storage": "ok", "cache": "ok"}
ETCD_DOWN = {**OK, "etcd": "unavailable: KVUnavailable"}
WRITABLE = {"readOnly": False, "config": False, "cluster": False}
SWITCHED = {"readOnly": True, "config": False, "cluster": True}
READY = Readiness(True, False, "Ready", OK)

# situation -> (readiness, read-only state, managementState, cache loaded),
# then (Available, Progressing, Degraded) as (status, reason) and a phrase
# one of their messages holds.
SITUATIONS: dict[str, tuple[tuple[Readiness, dict[str, bool], str, bool], list[tuple[str, str]], str]] = {
    "ready": (
        (READY, WRITABLE, "Managed", True),
        [("True", "Ready"), ("False", "Ready"), ("False", "AsExpected")],
        "ready",
    ),
    "switched": (
        (READY, SWITCHED, "Managed", True),
        [("True", "ReadOnly"), ("False", "Ready"), ("False", "AsExpected")],
        "cluster-wide read-only switch",
    ),
    "etcd down": (
        (Readiness(True, True, "EtcdUnavailable", ETCD_DOWN), SWITCHED, "Managed", True),
        [("True", "EtcdUnavailable"), ("False", "Ready"), ("True", "EtcdUnavailable")],
        "pulls are served",
    ),
    "metadata store full": (
        (
            Readiness(True, True, "MetadataStoreFull", {**OK, "etcdSpace": "NOSPACE alarm"}),
            WRITABLE,
            "Managed",
            True,
        ),
        [("True", "MetadataStoreFull"), ("False", "Ready"), ("True", "MetadataStoreFull")],
        "NOSPACE alarm",
    ),
    "never loaded": (
        (
            Readiness(False, False, "EtcdUnavailable", {**ETCD_DOWN, "cache": "not loaded"}),
            WRITABLE,
            "Managed",
            False,
        ),
        [("False", "EtcdUnavailable"), ("False", "Ready"), ("True", "EtcdUnavailable")],
        "never loaded",
    ),
    "storage down": (
        (
            Readiness(False, False, "StorageUnavailable", {**OK, "storage": "unavailable: OSError"}),
            WRITABLE,
            "Managed",
            True,
        ),
        [("False", "StorageUnavailable"), ("False", "Ready"), ("True", "StorageUnavailable")],
        "OSError",
    ),
    "loading": (
        (Readiness(True, False, "Ready", {**OK, "cache": "not loaded"}), WRITABLE, "Managed", False),
        [("True", "Ready"), ("True", "Starting"), ("False", "AsExpected")],
        "Loading the metadata cache",
    ),
    "removed": (
        (READY, WRITABLE, "Removed", True),
        [("True", "Removed"), ("False", "Removed"), ("False", "Removed")],
        "managementState: Removed",
    ),
}


@pytest.mark.parametrize("situation", SITUATIONS)
def test_conditions_of_each_situation(situation: str) -> None:
    (readiness, read_only, state, cache_ready), expected, phrase = SITUATIONS[situation]
    conditions = replica_conditions(
        readiness, read_only=read_only, management_state=state, cache_ready=cache_ready
    )
    assert [c.type for c in conditions] == ["Available", "Progressing", "Degraded"]
    assert [(c.status, c.reason) for c in conditions] == expected
    assert any(phrase in c.message for c in conditions)


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
