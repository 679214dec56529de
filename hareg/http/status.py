"""``GET /hareg/v1/status``: this replica's conditions (Available,
Progressing, Degraded; the model and their rules: hareg/registry/conditions.py),
with the request limits and the read-only state.

``managementState: Removed`` is enforced here too: the registry API answers
503 (``refuse_if_removed``, one of the admission checks) and ``/readyz`` 503, while status, metrics and
health keep answering.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hareg.http.base import registry
from hareg.http.keys import SETTINGS
from hareg.http.limits import LIMITS
from hareg.registry.conditions import StatusTracker, replica_conditions
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.service import Registry

__all__ = ["STATUS", "StatusTracker", "refuse_if_removed", "status"]


STATUS = web.AppKey("status", StatusTracker)


async def status_document(app: web.Application, reg: Registry) -> dict[str, Any]:
    readiness = await reg.readiness()
    settings = app[SETTINGS]
    read_only = reg.settings.describe()
    conditions = replica_conditions(
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
        "conditions": [c.document() for c in app[STATUS].stamp(conditions, reg.clock.now())],
    }


async def status(request: web.Request) -> web.Response:
    return web.json_response(await status_document(request.app, registry(request)))


_OPEN_WHEN_REMOVED = frozenset({"/hareg/v1/status", "/hareg/v1/read-only", "/healthz", "/readyz", "/metrics"})


def refuse_if_removed(request: web.Request) -> None:
    """503 for the registry API while ``managementState`` is Removed."""
    if request.app[SETTINGS].management_state == "Removed" and request.path not in _OPEN_WHEN_REMOVED:
        raise RegistryError(
            ErrorCode.UNAVAILABLE,
            "the registry is removed (managementState: Removed)",
            headers={"Retry-After": "60"},
        )
