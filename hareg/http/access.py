"""Access management over HTTP (cluster-admin only, like every ``/hareg/v1``
endpoint; the rules are the service layer's: ``hareg/registry/access_admin.py``)::

    GET    /hareg/v1/access/grants                 {"grants": [...], "configured": [...]}
    POST   /hareg/v1/access/grants                 {"subject", "role", "pattern"} -> 201 | 200
    DELETE /hareg/v1/access/grants?subject=&role=&pattern=   200 | 404
    GET    /hareg/v1/access/robots                 {"robots": [{"name", "subject", "created", "by"}]}
    POST   /hareg/v1/access/robots                 {"name"} -> 201 {"name", "subject", "secret"}
    DELETE /hareg/v1/access/robots/<name>          200 | 404

A change is in force on every replica when the answer arrives.  A robot's
secret is in the creation's answer only (``Cache-Control: no-store``).
"""

from __future__ import annotations

from aiohttp import web

from hareg.http.auth import ACCESS, caller_of
from hareg.http.base import json_response, parse_json_body, read_body
from hareg.http.extensions import MAX_BODY
from hareg.registry import policy
from hareg.registry.access_admin import AccessAdmin
from hareg.registry.errors import ErrorCode, RegistryError

__all__ = ["register"]

GRANTS = policy.ACCESS_PREFIX + "grants"
ROBOTS = policy.ACCESS_PREFIX + "robots"


def _admin(request: web.Request) -> AccessAdmin:
    access = request.app.get(ACCESS)
    if access is None or access.admin is None:
        raise RegistryError(
            ErrorCode.UNSUPPORTED,
            "authentication is off (no auth section): there are no grants or robot accounts to manage",
            status=404,
        )
    return access.admin


def _by(request: web.Request) -> str:
    caller = caller_of(request)
    return caller.subject if caller is not None else "anonymous"


async def _body(request: web.Request, expected: str) -> dict[str, object]:
    body = parse_json_body(await read_body(request, MAX_BODY) or b"null", expected)
    if not isinstance(body, dict):
        raise RegistryError(ErrorCode.UNSUPPORTED, f"expected a JSON body {expected}", status=400)
    return body


async def list_grants(request: web.Request) -> web.Response:
    admin = _admin(request)
    access = request.app[ACCESS]
    configured = [
        {"subject": b.subject, "role": b.role.value, "patterns": list(b.repositories)}
        for b in access.bindings
    ]
    return json_response({"grants": await admin.grants(), "configured": configured})


async def add_grant(request: web.Request) -> web.Response:
    admin = _admin(request)
    body = await _body(request, '{"subject": "alice", "role": "editor", "pattern": "team/*"}')
    added = await admin.grant(_by(request), body.get("subject"), body.get("role"), body.get("pattern"))
    return json_response({"granted": True, "changed": added}, status=201 if added else 200)


async def revoke_grant(request: web.Request) -> web.Response:
    admin = _admin(request)
    q = request.query
    removed = await admin.revoke(_by(request), q.get("subject"), q.get("role"), q.get("pattern"))
    if not removed:
        raise RegistryError(
            ErrorCode.NAME_UNKNOWN,
            "no such runtime grant (bindings in the configuration file change only with the file)",
            status=404,
        )
    return json_response({"revoked": True})


async def list_robots(request: web.Request) -> web.Response:
    return json_response({"robots": await _admin(request).list_robots()})


async def create_robot(request: web.Request) -> web.Response:
    admin = _admin(request)
    body = await _body(request, '{"name": "ci"}')
    robot = await admin.create_robot(_by(request), body.get("name"))
    return json_response(robot.to_json(), status=201, headers={"Cache-Control": "no-store"})


async def delete_robot(request: web.Request) -> web.Response:
    admin = _admin(request)
    name = request.match_info["robot"]
    if not await admin.delete_robot(_by(request), name):
        raise RegistryError(ErrorCode.NAME_UNKNOWN, f"no robot account {name[:80]!r}", status=404)
    return json_response({"deleted": True})


def register(router: web.UrlDispatcher) -> None:
    router.add_get(GRANTS, list_grants)
    router.add_post(GRANTS, add_grant)
    router.add_delete(GRANTS, revoke_grant)
    router.add_get(ROBOTS, list_robots)
    router.add_post(ROBOTS, create_robot)
    router.add_delete(ROBOTS + "/{robot}", delete_robot)
