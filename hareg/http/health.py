"""/healthz (the process is alive) and /readyz (etcd and blob storage reachable)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from hareg.http.base import registry

# A probe must answer well within a load balancer's check interval.
_PROBE_TIMEOUT = 2.0
_PROBE_DIGEST = "sha256:" + "0" * 64


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    reg = registry(request)
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            await reg.kv.current_revision()
        checks["etcd"] = "ok"
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        checks["etcd"] = f"unavailable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            await reg.store.stat(_PROBE_DIGEST)
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
