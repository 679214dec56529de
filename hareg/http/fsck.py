"""The integrity check's API: ``POST /hareg/v1/fsck[?repair=true]``.

Answers when the check is done, with the report (registry/fsck.py):
``{"checked": N, "corrupt": [{"digest", "reason", "quarantined"}], ...}``.
A check only reads and runs on the replica it lands on; a repairing run must
happen on the pruner leader (its quarantines are fenced by its leadership and
never run beside a garbage collection), so elsewhere it is forwarded there, as
a pruner run is.  One check at a time per replica: another one meanwhile is
refused with 429 TOOMANYREQUESTS.
"""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import registry
from hareg.http.pruner import forward_to_leader
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.fsck import FsckBusy
from hareg.registry.pruner import NotLeader

PATH = "/hareg/v1/fsck"
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def _repair(request: web.Request) -> bool:
    value = request.query.get("repair", "false").lower()
    if value not in _TRUE + _FALSE:
        raise RegistryError(
            ErrorCode.UNSUPPORTED, f"repair={value[:50]!r}: expected repair=true or repair=false", status=400
        )
    return value in _TRUE


async def fsck(request: web.Request) -> web.Response:
    repair = _repair(request)
    try:
        report = await registry(request).pruner.run_fsck(repair=repair)
    except NotLeader as exc:
        # No overall bound: a check reads the whole store; the caller's own timeout governs.
        return await forward_to_leader(request, exc.leader, total_timeout=None)
    except FsckBusy as exc:
        raise RegistryError(
            ErrorCode.TOOMANYREQUESTS,
            str(exc),
            detail={"checked": exc.checked},
            headers={"Retry-After": "60"},
        ) from None
    return web.json_response(report.to_json())


def register(router: web.UrlDispatcher) -> None:
    router.add_post(PATH, fsck)
