"""``GET /hareg/v1/members`` (cluster-admin, like every ``/hareg/v1`` cluster
endpoint): the replicas registered in etcd and the etcd members this replica
was given, each probed from here, for the console's cluster page and for
operators.

A replica registers under its own lease (``hareg/metadata/roles.py``:
``Membership``, 10 s), so one that was killed stays listed until its lease
expires: its probe says it is down meanwhile.  An etcd member is probed at
its ``/health``.  Probes run concurrently, each bounded by
``PROBE_TIMEOUT``, so the answer takes at most that long however many
members there are.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Final

import aiohttp
from aiohttp import web

from hareg.http.base import json_response, registry
from hareg.http.extensions import iso_time
from hareg.http.keys import SETTINGS

__all__ = ["MEMBERS_PATH", "PROBE_TIMEOUT", "members"]

MEMBERS_PATH: Final = "/hareg/v1/members"
PROBE_TIMEOUT: Final = 2.0


async def _probe(session: aiohttp.ClientSession, url: str, ssl_context: ssl.SSLContext | None) -> str:
    """``ok``, or why the member did not answer as healthy."""
    try:
        async with session.get(url, ssl=ssl_context if ssl_context is not None else True) as resp:
            if resp.status != 200:
                return f"answered {resp.status}"
            if "/health" in url:
                body = await resp.json(content_type=None)
                if not (isinstance(body, dict) and str(body.get("health")).lower() == "true"):
                    return "unhealthy"
            return "ok"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"unreachable: {type(exc).__name__}"


def _etcd_url(endpoint: str, tls: bool) -> str:
    if "://" in endpoint:
        return endpoint.rstrip("/")
    return f"{'https' if tls else 'http'}://{endpoint}"


async def members(request: web.Request) -> web.Response:
    reg = registry(request)
    settings = request.app[SETTINGS]
    records = await reg.membership.members() if reg.membership is not None else []
    etcd = [_etcd_url(e, settings.etcd_ssl is not None) for e in settings.etcd_endpoints]
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        probes = await asyncio.gather(
            *(_probe(session, f"{m.url}/readyz", None) for m in records),
            # A member at its space quota (NOSPACE alarm) serves reads: healthy
            # here; the replicas' conditions say MetadataStoreFull.
            *(_probe(session, f"{url}/health?exclude=NOSPACE", settings.etcd_ssl) for url in etcd),
        )
    replicas: list[dict[str, Any]] = [
        {
            "replica": m.replica,
            "url": m.url,
            "version": m.version,
            "started": iso_time(m.started),
            "ready": probe == "ok",
            "detail": probe,
        }
        for m, probe in zip(records, probes, strict=False)
    ]
    members_of_etcd = [
        {"endpoint": url, "healthy": probe == "ok", "detail": probe}
        for url, probe in zip(etcd, probes[len(records) :], strict=True)
    ]
    return json_response({"replica": reg.replica, "replicas": replicas, "etcd": members_of_etcd})
