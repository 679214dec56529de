"""The pruner's API: /hareg/v1/prune and /hareg/v1/pruner (fsck.py: /hareg/v1/fsck).

A real run must happen on the pruner leader (its deletions are fenced by its
leadership); a request that lands on another replica is forwarded to the
leader, found through replica membership.  A dry run only reads and runs
wherever it lands.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from hareg.http.base import registry
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.names import check_name
from hareg.registry.pruner import NotLeader

_FORWARDED = "X-Hareg-Forwarded"


async def forward_to_leader(
    request: web.Request, leader: str | None, *, total_timeout: float | None = 3600
) -> web.Response:
    """Send this POST (same path and query) to the pruner leader and relay its answer."""
    reg = registry(request)
    members = await reg.membership.members() if reg.membership is not None else []
    url = next((m.url for m in members if m.replica == leader), None)

    def unreachable(why: str) -> RegistryError:
        return RegistryError(
            ErrorCode.UNAVAILABLE,
            f"the pruner runs on its leader ({leader or 'none elected yet'}), which {why}",
            headers={"Retry-After": "5"},
        )

    if url is None or request.headers.get(_FORWARDED):
        raise unreachable("cannot be reached from here")
    timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=10)
    headers = {_FORWARDED: "1"}
    # The leader authorizes the request again, on the caller's own credentials
    # (a token of hareg's is valid on every replica: they share its key).
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"{url}{request.path}", params=request.query, headers=headers) as resp,
        ):
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise unreachable(f"did not answer from {url} ({type(exc).__name__})") from None


async def prune(request: web.Request) -> web.Response:
    """``POST /hareg/v1/prune`` (cluster-admin), or ``POST
    /hareg/v1/repositories/<name>/prune`` (that repository's admin): one
    collection of the whole registry, or of one repository."""
    dry_run = request.query.get("dryRun", "false").lower() in ("1", "true", "yes")
    name = request.match_info.get("name")
    if name is not None:
        check_name(name)
    only = frozenset({name}) if name is not None else None
    try:
        report = await registry(request).pruner.run_once(dry_run=dry_run, only=only)
    except NotLeader as exc:
        return await forward_to_leader(request, exc.leader)
    return web.json_response(report.to_json())


async def pruner_status(request: web.Request) -> web.Response:
    reg = registry(request)
    pruner = reg.pruner
    last = pruner.last_report.to_json() if pruner.last_report else None
    last_fsck = pruner.fsck.last_report if pruner.fsck is not None else None
    return web.json_response(
        {
            "replica": reg.replica,
            "leader": await reg.leadership.leader(),
            "isLeader": reg.leadership.is_leader,
            "schedule": pruner.schedule_text,
            "suspend": pruner.suspend,
            "runs": dict(pruner.stats.runs),
            "lastRun": last,
            "fsck": {
                "schedule": pruner.fsck_schedule_text,
                "repair": pruner.fsck_repair,
                "running": pruner.fsck is not None and pruner.fsck.running,
                "lastRun": last_fsck.to_json() if last_fsck else None,
            },
        }
    )
