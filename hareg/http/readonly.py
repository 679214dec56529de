"""Read-only mode: the middleware that refuses writes, and the switch's API.

A write is any method but GET, HEAD and OPTIONS on ``/v2/`` (pushes, uploads,
mounts, manifest and tag changes, deletes) or on ``/hareg/v1/`` (the
extensions: tag rollback and the like), except the administration endpoints
that must work on a read-only registry (``/hareg/v1/read-only`` itself).
It is answered ``405 UNSUPPORTED`` with a message saying the registry is
read-only, as CNCF distribution's read-only mode answers (it does not route
writes at all).  Pulls, HEADs, listings and the upload status GET are served.

``GET /hareg/v1/read-only`` tells the state; ``PUT /hareg/v1/read-only`` with
``{"readOnly": true|false}`` sets the cluster-wide switch in etcd, seen by
every replica within a watch delivery; no write commits after that PUT
returned, on any replica (each write transaction compares the switch).
"""

from __future__ import annotations

import logging

from aiohttp import web

from hareg.http.base import Handler, allowed_methods, parse_json_body, read_body, registry
from hareg.http.extensions import MAX_BODY
from hareg.metadata.switch import WritesFrozen
from hareg.registry.errors import ErrorCode, RegistryError

__all__ = ["READ_ONLY_PATH", "get_read_only", "is_write", "put_read_only", "read_only_middleware"]

log = logging.getLogger("hareg.http")

READ_ONLY_PATH = "/hareg/v1/read-only"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_GUARDED_PREFIXES = ("/v2/", "/hareg/v1/")
# Administration endpoints that stay writable on a read-only registry.
_ALWAYS_WRITABLE = frozenset({READ_ONLY_PATH})


def is_write(method: str, path: str) -> bool:
    """Would this request change the registry's content?"""
    if method in _SAFE_METHODS or path in _ALWAYS_WRITABLE:
        return False
    return path.startswith(_GUARDED_PREFIXES)


def read_only_error(allow: str = "GET, HEAD") -> RegistryError:
    """405 with the methods still served at the path (RFC 9110 requires ``Allow``)."""
    return RegistryError(
        ErrorCode.UNSUPPORTED,
        "the registry is read-only: pushes, uploads, mounts, deletes and tag changes are refused; "
        "pulls are served",
        detail={"readOnly": True},
        status=405,
        headers={"Allow": allow},
    )


@web.middleware
async def read_only_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A path no route serves gets its own 404/405 from the handler.  This
    # replica's view refuses most writes early; a write that passed it while
    # the switch was turning on elsewhere is refused by its transaction's
    # compare on the switch (hareg/metadata/switch.py), answered the same way.
    routed = request.match_info.http_exception is None
    if routed and is_write(request.method, request.path) and registry(request).read_only:
        raise read_only_error(await _reads_allowed(request))
    try:
        return await handler(request)
    except WritesFrozen:
        raise read_only_error(await _reads_allowed(request)) from None


async def _reads_allowed(request: web.Request) -> str:
    return ", ".join(sorted(await allowed_methods(request) & _SAFE_METHODS))


async def get_read_only(request: web.Request) -> web.Response:
    return web.json_response(registry(request).settings.describe())


async def put_read_only(request: web.Request) -> web.Response:
    body = parse_json_body(await read_body(request, MAX_BODY) or b"null", '{"readOnly": true}')
    if not isinstance(body, dict) or not isinstance(body.get("readOnly"), bool):
        raise RegistryError(
            ErrorCode.UNSUPPORTED,
            'expected a JSON body {"readOnly": true} or {"readOnly": false}',
            status=400,
        )
    settings = registry(request).settings
    await settings.set_read_only(body["readOnly"])
    return web.json_response(settings.describe())
