"""The admission checks every routed request passes before its handler, in one middleware.

In order: the registry is not removed (``status``: 503); the caller may send
the request (``auth``: 401/403, only with an ``auth`` section); the registry
is not read-only for it (``readonly``: 405); it does not write into a
mirrored repository (``pull_through``: 403); it gets a slot of its request
limiter (``limits``: 429), held until its response is sent.  So refusals
never take a request slot, and who may not write never learns whether the
registry is read-only.

One middleware rather than one per check: each layer of aiohttp's chain
costs a call and a coroutine per request, and every check is always on.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from hareg.http import auth, limits, pull_through, readonly, status
from hareg.http.base import Handler

__all__ = ["admission_middleware"]


async def _admitted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The checks after the caller's: read-only, mirrored repositories, the limiter."""
    readonly.refuse_if_read_only(request)
    pull_through.refuse_mirror_write(request)
    return await limits.run_limited(request, handler)


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    status.refuse_if_removed(request)
    if request.app.get(auth.ACCESS) is None:  # no auth section: every caller may
        return await _admitted(request, handler)
    return await auth.admit(request, partial(_admitted, handler=handler))
