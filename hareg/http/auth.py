"""Authentication and authorization over HTTP: a thin adapter.

``admit`` (an admission check: ``hareg/http/admission.py``) hands ``hareg/registry/access.py`` the ``Authorization``
header, the client's address and the request's method, path and query; it
keeps the caller on the request (``CALLER``: its identity and the bindings
in force when it was admitted) for the catalog and the audit log.  The read
that admits a request also serves the request's first metadata read (the
read barrier's loan), so authorization costs no extra etcd round trip.  ``GET /auth/token`` is the Docker token spec's endpoint.

The audit log (logger ``hareg.audit``, one JSON line per write, at Normal):
who, what (method and the action the request needed), which repository and
digest, and the outcome (status).  It never holds credentials: the subject
is a user name, ``anonymous`` or a token's ``sub``.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from hareg.http.base import Handler, json_response
from hareg.registry import authz, policy
from hareg.registry.access import AccessControl, Caller
from hareg.registry.errors import ErrorCode, RegistryError

__all__ = ["ACCESS", "CALLER", "TOKEN_PATH", "admit", "caller_of", "issue_token"]

ACCESS = web.AppKey("access", AccessControl)
CALLER: Final = web.RequestKey("caller", Caller)
TOKEN_PATH: Final = "/auth/token"

audit = logging.getLogger("hareg.audit")


def realm_of(request: web.Request) -> str:
    """Where this client reaches the token endpoint: the scheme and host it used."""
    return f"{request.scheme}://{request.host}{TOKEN_PATH}"


def client_of(request: web.Request) -> str:
    """The client's address (behind ``auth.trustedProxies``, the one they forwarded)."""
    access = request.app.get(ACCESS)
    if access is None:
        return request.remote or "unknown"
    return access.client_address(request.remote, request.headers.getall("X-Forwarded-For", ()))


def caller_of(request: web.Request) -> Caller | None:
    """The caller, or None when the registry runs without authentication."""
    return request.get(CALLER)


async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler`` if the caller may send this request; raise its refusal if not."""
    access = request.app.get(ACCESS)
    if access is None:  # no auth section: every request is served, as before
        return await handler(request)
    needs = authz.request_needs(request.method, request.path, request.query)
    if needs and all(need.open for need in needs):
        return await handler(request)
    with access.request_scope():
        return await _admit(request, handler, access, needs)


async def _admit(
    request: web.Request, handler: Handler, access: AccessControl, needs: list[authz.Need]
) -> web.StreamResponse:
    realm = realm_of(request)
    authorization = request.headers.get("Authorization")
    # The client's address only counts for a password login (the failed-login
    # limit); a bearer token, the common case, does without working it out.
    basic = authorization is not None and authorization.lstrip()[:6].lower() == "basic "
    caller = await access.identify(authorization, client_of(request) if basic else "", realm)
    request[CALLER] = caller
    if request.method in policy.READ_METHODS:
        access.authorize(caller, needs, realm)
        return await handler(request)
    status = 500
    try:
        access.authorize(caller, needs, realm, write=True)
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception as exc:
        status = getattr(exc, "status", 500)
        raise
    finally:
        _audit(request, caller, needs, status)


def _audit(request: web.Request, caller: Caller, needs: list[authz.Need], status: int) -> None:
    need = next((n for n in needs if not (n.open or n.login or n.browse)), None)
    reference = request.match_info.get("reference") or request.match_info.get("digest")
    digest = request.query.get("digest") or (reference if reference and ":" in reference else None)
    audit.info(
        "audit",
        extra={
            "fields": {
                "subject": caller.subject,
                "method": request.method,
                "action": (need.action if need.repo is not None else authz.CLUSTER) if need else None,
                "repository": need.repo if need else None,
                "reference": reference,
                "digest": digest,
                "status": status,
                "outcome": "allowed" if status < 400 else "refused",
                "client": client_of(request),
            }
        },
    )


async def issue_token(request: web.Request) -> web.Response:
    access = request.app.get(ACCESS)
    if access is None:
        # Without authentication no client is sent here (no 401 names this realm).
        raise RegistryError(ErrorCode.UNSUPPORTED, "authentication is off: no tokens are issued", status=404)
    reply = await access.token(
        request.headers.get("Authorization"),
        client_of(request),
        realm_of(request),
        {key: request.query.getall(key, []) for key in ("service", "scope")},
    )
    return json_response(reply.to_json(), headers={"Cache-Control": "no-store"})
