"""``GET /hareg/v1/status``: this replica's conditions, the way the OpenShift
Image Registry Operator reports its own (``oc get co image-registry``).

Three conditions, each ``{type, status, reason, message, lastTransitionTime}``
with ``status`` the string ``"True"`` or ``"False"``:

- **Available** — the replica serves pulls.  True with ``Ready``,
  ``ReadOnly`` (pushes refused by the switch), ``EtcdUnavailable`` (pulls
  from the cache, pushes refused) or ``Removed`` (managementState: Removed,
  as the operator reports a registry removed on purpose); False with
  ``StorageUnavailable`` or ``EtcdUnavailable`` (before the cache was ever
  loaded).
- **Progressing** — True with ``Starting`` while the metadata cache loads
  (at start-up, or re-listing after a compaction); else False with
  ``Ready`` (or ``Removed``).
- **Degraded** — True with ``EtcdUnavailable`` (pulls served, writes
  refused) or ``StorageUnavailable``; else False with ``AsExpected``
  (or ``Removed``).

``lastTransitionTime`` is when this replica first reported the condition's
current status (RFC 3339, UTC), as Kubernetes keeps it.

``managementState: Removed`` is enforced here too: the registry API answers
503 (``removed_middleware``) and ``/readyz`` 503, while status, metrics and
health keep answering.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from hareg.http.base import Handler, registry
from hareg.http.keys import SETTINGS
from hareg.http.limits import LIMITS
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.service import Readiness, Registry
from hareg.registry.settings import rfc3339

__all__ = ["STATUS", "Condition", "StatusTracker", "compute_conditions", "removed_middleware", "status"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" or "False"
    reason: str
    message: str
    lastTransitionTime: str = ""  # the Kubernetes field name


def compute_conditions(
    readiness: Readiness, *, read_only: dict[str, Any], management_state: str, cache_ready: bool
) -> list[Condition]:
    """A pure function of what the replica sees (transition times are added by StatusTracker)."""
    checks = readiness.checks
    if management_state == "Removed":
        return [
            Condition("Available", "True", "Removed", "The registry is removed (managementState: Removed)"),
            Condition("Progressing", "False", "Removed", "The registry is removed"),
            Condition("Degraded", "False", "Removed", "The registry is removed"),
        ]
    etcd_down = checks.get("etcd", "ok") != "ok"
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
            "Pulls are served from the metadata cache; pushes are refused until etcd recovers",
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
            + ("; pulls are served from the cache, pushes are refused" if readiness.ready else ""),
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "")
    return [available, progressing, degraded]


class StatusTracker:
    """Remembers when each condition last changed status on this replica."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, float]] = {}

    def stamp(self, conditions: list[Condition], now: float) -> list[Condition]:
        stamped = []
        for c in conditions:
            previous = self._since.get(c.type)
            if previous is None or previous[0] != c.status:
                previous = self._since[c.type] = (c.status, now)
            stamped.append(
                Condition(c.type, c.status, c.reason, c.message, lastTransitionTime=rfc3339(previous[1]))
            )
        return stamped


STATUS = web.AppKey("status", StatusTracker)


async def status_document(app: web.Application, reg: Registry) -> dict[str, Any]:
    readiness = await reg.readiness()
    settings = app[SETTINGS]
    read_only = reg.settings.describe()
    conditions = compute_conditions(
        readiness,
        read_only=read_only,
        management_state=settings.management_state,
        cache_ready=reg.cache is not None and reg.cache.ready,
    )
    limits = {
        limiter.kind: {
            "maxRunning": limiter.max_running,
            "maxInQueue": limiter.max_in_queue,
            "maxWaitInQueue": limiter.max_wait_in_queue,
            "running": limiter.running,
            "queued": limiter.queued,
        }
        for limiter in app[LIMITS]
    }
    return {
        "replica": reg.replica,
        "managementState": settings.management_state,
        "readOnly": read_only,
        "requests": limits,
        "checks": readiness.checks,
        "conditions": [asdict(c) for c in app[STATUS].stamp(conditions, reg.clock.now())],
    }


async def status(request: web.Request) -> web.Response:
    return web.json_response(await status_document(request.app, registry(request)))


_OPEN_WHEN_REMOVED = frozenset({"/hareg/v1/status", "/hareg/v1/read-only", "/healthz", "/readyz", "/metrics"})


@web.middleware
async def removed_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[SETTINGS].management_state == "Removed" and request.path not in _OPEN_WHEN_REMOVED:
        raise RegistryError(
            ErrorCode.UNAVAILABLE,
            "the registry is removed (managementState: Removed)",
            headers={"Retry-After": "60"},
        )
    return await handler(request)
