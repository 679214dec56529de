"""Read-only mode: the admission check that refuses writes, and the switch's API.

The rule (which requests are writes, the ``405 UNSUPPORTED`` refusal) is the
service layer's (``hareg/registry/policy.py``); ``refuse_if_read_only`` applies it to
each routed request with this replica's view of the switch.  The ``Allow``
header of the refusal (the read methods still served at the path) is added
by the error middleware (``hareg/http/base.py``).

``GET /hareg/v1/read-only`` tells the state; ``PUT /hareg/v1/read-only`` with
``{"readOnly": true|false}`` sets the cluster-wide switch in etcd, seen by
every replica within a watch delivery; no write commits after that PUT
returned, on any replica (each write transaction compares the switch).
"""

from __future__ import annotations

from aiohttp import web

from hareg.http.base import parse_json_body, read_body, registry
from hareg.http.extensions import MAX_BODY
from hareg.registry import policy
from hareg.registry.errors import ErrorCode, RegistryError

__all__ = ["READ_ONLY_PATH", "get_read_only", "put_read_only", "refuse_if_read_only"]

READ_ONLY_PATH = policy.READ_ONLY_PATH


def refuse_if_read_only(request: web.Request) -> None:
    # A path no route serves gets its own 404/405 from the handler.  This
    # replica's view refuses most writes early; a write that passed it while
    # the switch was turning on elsewhere is refused by its transaction's
    # compare on the switch (hareg/metadata/switch.py: WritesFrozen), which the
    # error middleware answers the same way (policy.dependency_error).
    if request.match_info.http_exception is None:
        policy.admit(request.method, request.path, read_only=registry(request).read_only)


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
