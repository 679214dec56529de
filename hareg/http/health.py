"""/healthz (the process is alive) and /readyz (etcd and blob storage reachable).

/readyz answers 200 while the replica can serve pulls, including "degraded"
serving from the cache while etcd has no quorum — so a load balancer keeps
sending pulls — and 503 when it cannot serve at all, or when
managementState is Removed.  ``/readyz?for=writes`` answers 200 only while
the replica can also write (etcd reachable; a full etcd, which refuses
writes on every replica alike with a clear 507, does not count): the check of the load
balancer's writers backend, so writes avoid a replica cut off from etcd.
"""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import registry
from hareg.http.keys import SETTINGS


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[SETTINGS].management_state == "Removed":
        body = {"ready": False, "degraded": False, "reason": "Removed", "checks": {}}
        return web.json_response(body, status=503)
    purpose = request.query.get("for", "reads")
    if purpose not in ("reads", "writes"):
        body = {"ready": False, "reason": f"for={purpose[:40]!r}: expected for=reads or for=writes"}
        return web.json_response(body, status=400)
    r = await registry(request).readiness()
    # A full etcd refuses writes on every replica alike: the writers backend
    # keeps the replica, so a push gets its clear 507 rather than the load
    # balancer's "no replica can write".
    writes_blocked = r.degraded and r.reason != "MetadataStoreFull"
    ready = r.ready and not (purpose == "writes" and writes_blocked)
    body = {"ready": ready, "degraded": r.degraded, "reason": r.reason, "checks": r.checks}
    return web.json_response(body, status=200 if ready else 503)
