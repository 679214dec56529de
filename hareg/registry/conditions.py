"""Status conditions, the way the OpenShift Image Registry Operator reports
its own (``oc get co image-registry``): one model for a replica's
``GET /hareg/v1/status`` and for ``hareg cluster status``.

Three conditions, each ``{type, status, reason, message, lastTransitionTime}``
with ``status`` the string ``"True"`` or ``"False"`` and a CamelCase reason.
What a replica reports (``replica_conditions``):

- **Available** — the replica serves pulls.  True with ``Ready``,
  ``ReadOnly`` (pushes refused by the switch), ``EtcdUnavailable`` (pulls
  from the cache, pushes refused), ``MetadataStoreFull`` (etcd's NOSPACE
  alarm: pulls served, pushes refused with 507) or ``Removed`` (managementState: Removed,
  as the operator reports a registry removed on purpose); False with
  ``StorageUnavailable`` or ``EtcdUnavailable`` (before the cache was ever
  loaded).
- **Progressing** — True with ``Starting`` while the metadata cache loads
  (at start-up, or re-listing after a compaction); else False with
  ``Ready`` (or ``Removed``).
- **Degraded** — True with ``EtcdUnavailable`` (pulls served, writes
  refused), ``MetadataStoreFull`` (etcd is at its space quota: pulls
  served, writes refused until space is freed and the alarm disarmed) or
  ``StorageUnavailable``; else False with ``AsExpected``
  (or ``Removed``).

``lastTransitionTime`` is when the reporter first saw the condition's
current status (RFC 3339, UTC), as Kubernetes keeps it; a one-shot report
(``hareg cluster status``) has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hareg.clock import rfc3339

if TYPE_CHECKING:  # the model is imported by `hareg cluster`, which needs no registry
    from hareg.registry.service import Readiness

__all__ = ["Condition", "StatusTracker", "replica_conditions"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" or "False", as in Kubernetes
    reason: str
    message: str
    lastTransitionTime: str = ""  # the Kubernetes field name; "" when not tracked

    def document(self) -> dict[str, str]:
        """The JSON form (``lastTransitionTime`` only when it is known)."""
        doc = {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message}
        if self.lastTransitionTime:
            doc["lastTransitionTime"] = self.lastTransitionTime
        return doc


def replica_conditions(
    readiness: Readiness, *, read_only: dict[str, Any], management_state: str, cache_ready: bool
) -> list[Condition]:
    """A replica's conditions: a pure function of what it sees (transition
    times are added by StatusTracker)."""
    checks = readiness.checks
    if management_state == "Removed":
        return [
            Condition("Available", "True", "Removed", "The registry is removed (managementState: Removed)"),
            Condition("Progressing", "False", "Removed", "The registry is removed"),
            Condition("Degraded", "False", "Removed", "The registry is removed"),
        ]
    etcd_down = checks.get("etcd", "ok") != "ok"
    store_full = not etcd_down and readiness.reason == "MetadataStoreFull"
    storage_down = checks.get("storage", "ok") != "ok"
    if read_only.get("cluster"):
        why = "the cluster-wide read-only switch is on"
    elif read_only.get("config"):
        why = "readOnly is set in the configuration"
    else:
        why = ""

    if storage_down:
        available = Condition(
            "Available",
            "False",
            "StorageUnavailable",
            f"The blob storage is unreachable ({checks['storage']})",
        )
    elif etcd_down and not readiness.ready:
        available = Condition(
            "Available",
            "False",
            "EtcdUnavailable",
            f"etcd is unreachable ({checks['etcd']}) and the metadata cache was never loaded",
        )
    elif etcd_down:
        available = Condition(
            "Available",
            "True",
            "EtcdUnavailable",
            "Pulls are served from the metadata cache; pushes are refused until etcd recovers"
            if readiness.degraded
            else "Pulls are served from the metadata cache; pushes wait for etcd (within etcd.electionGrace)",
        )
    elif store_full:
        available = Condition(
            "Available",
            "True",
            "MetadataStoreFull",
            "Pulls are served; pushes are refused until space is freed in etcd (NOSPACE alarm)",
        )
    elif why:
        available = Condition(
            "Available", "True", "ReadOnly", f"The registry serves pulls; it is read-only ({why})"
        )
    else:
        available = Condition("Available", "True", "Ready", "The registry is ready")

    if not cache_ready and not etcd_down and not storage_down:
        progressing = Condition("Progressing", "True", "Starting", "Loading the metadata cache from etcd")
    else:
        progressing = Condition("Progressing", "False", "Ready", "The registry is ready")

    if storage_down:
        degraded = Condition(
            "Degraded", "True", "StorageUnavailable", f"The blob storage is unreachable ({checks['storage']})"
        )
    elif etcd_down:
        degraded = Condition(
            "Degraded",
            "True",
            "EtcdUnavailable",
            f"etcd is unreachable ({checks['etcd']})"
            + (
                (
                    "; pulls are served from the cache, pushes are refused"
                    if readiness.degraded
                    else "; pushes wait"
                )
                if readiness.ready
                else ""
            ),
        )
    elif store_full:
        degraded = Condition(
            "Degraded",
            "True",
            "MetadataStoreFull",
            "etcd's database is at its space quota (NOSPACE alarm): writes are refused, pulls are served; "
            "free space (hareg prune) and let hareg compact, defragment and disarm, or see "
            "docs/operations.md",
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "")
    return [available, progressing, degraded]


class StatusTracker:
    """Remembers when each condition last changed status (its lastTransitionTime)."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, float]] = {}

    def stamp(self, conditions: list[Condition], now: float) -> list[Condition]:
        """``conditions`` with their transition times; ``now`` is wall-clock seconds."""
        stamped = []
        for c in conditions:
            previous = self._since.get(c.type)
            if previous is None or previous[0] != c.status:
                previous = self._since[c.type] = (c.status, now)
            stamped.append(
                Condition(c.type, c.status, c.reason, c.message, lastTransitionTime=rfc3339(previous[1]))
            )
        return stamped
