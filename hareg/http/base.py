"""Shared HTTP plumbing: the error middleware, the /v2/ endpoint, body streaming."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from hareg.http.keys import REGISTRY, SETTINGS
from hareg.registry import policy
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.service import Registry

log = logging.getLogger("hareg.http")

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
# Request bodies are handed to the service in pieces of about this size: big
# enough to keep per-chunk overhead (thread hops, syscalls) low, small enough
# that a request never holds much memory.
BODY_CHUNK = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def error_response(err: RegistryError) -> web.Response:
    headers = dict(err.headers)
    response = web.json_response(err.to_json(), status=err.status, headers=headers)
    if headers.get("Connection") == "close":
        response.force_close()  # aiohttp closes the connection once this is sent
    return response


def _from_http_exception(exc: web.HTTPException) -> RegistryError:
    if exc.status == 404:
        return RegistryError(ErrorCode.UNSUPPORTED, "no such endpoint in the registry API", status=404)
    if exc.status == 405:
        # aiohttp's HTTPMethodNotAllowed carries the Allow header RFC 9110 requires.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return RegistryError(
            ErrorCode.UNSUPPORTED, "method not allowed on this endpoint", status=405, headers=allow
        )
    if exc.status == 413:
        return RegistryError(ErrorCode.SIZE_INVALID, "request body too large", status=413)
    code = ErrorCode.UNSUPPORTED if exc.status < 500 else ErrorCode.UNAVAILABLE
    return RegistryError(code, exc.reason or "request failed", status=exc.status)


# The status recorded for a request whose client went away before the
# response (nginx's "client closed request"): never sent, only logged.
CLIENT_CLOSED: Final = 499


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the spec's JSON error; nothing leaks a traceback."""
    try:
        response = await handler(request)
    except RegistryError as exc:
        if exc.status == 404 and request.method in policy.READ_METHODS:
            registry = request.app.get(REGISTRY)
            if registry is not None and registry.meta.etcd_known_down():
                exc = policy.unconfirmed_absence(exc) or exc
        return await _error_with_allow(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc))
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client hung up mid-answer (a streamed body): nothing more
            # can reach it. Answered with a response aiohttp cannot send
            # either, the request ends quietly (logged as 499), not with
            # aiohttp's "Error handling request" traceback.
            return web.Response(status=CLIENT_CLOSED)
        raise
    except Exception as exc:
        err = policy.dependency_error(exc)
        if err is not None:
            if not policy.is_read_only_refusal(err):
                log.warning("%s on %s %s: %s", type(exc).__name__, request.method, request.path, exc)
            return await _error_with_allow(request, err)
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response(
            {"errors": [{"code": "UNKNOWN", "message": "internal server error; see the registry log"}]},
            status=500,
        )
    return response


async def _error_with_allow(request: web.Request, err: RegistryError) -> web.Response:
    if err.status == 405 and "Allow" not in err.headers:
        # Every 405 names the methods the resource supports (RFC 9110 §15.5.6);
        # on a read-only registry, the read methods still served there.
        methods = await allowed_methods(request)
        if policy.is_read_only_refusal(err):
            methods &= policy.READ_METHODS
        err.headers["Allow"] = ", ".join(sorted(methods))
    return error_response(err)


async def allowed_methods(request: web.Request) -> set[str]:
    """Every method some route serves at this request's path."""
    methods: set[str] = set()
    for resource in request.app.router.resources():
        _, allowed = await resource.resolve(request)
        methods |= allowed
    return methods


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(API_VERSION_HEADER)


def body_stalled(seconds: float, code: ErrorCode) -> RegistryError:
    """408 for a body that sent nothing for limits.bodyStallTimeout; the
    connection is closed (what the client sends next cannot be trusted)."""
    return RegistryError(
        code,
        f"the request body sent nothing for {seconds:g}s (limits.bodyStallTimeout); "
        "the request was dropped and none of its bytes committed",
        detail={"limit": "limits.bodyStallTimeout"},
        status=408,
        headers={"Connection": "close"},
    )


async def request_chunks(
    request: web.Request, *, stalled: ErrorCode = ErrorCode.BLOB_UPLOAD_INVALID
) -> AsyncIterator[bytes]:
    """The request body as a stream of about BODY_CHUNK-sized pieces (what the
    socket delivers is joined once, not copied into a buffer and out again).

    A body that sends nothing for limits.bodyStallTimeout raises
    ``body_stalled`` (with the code ``stalled``) at once, so the request
    fails, its bytes are discarded and its request slot is freed."""
    stall = request.app[SETTINGS].body_stall_timeout
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(stall):
                data = await request.content.readany()
        except TimeoutError:
            raise body_stalled(stall, stalled) from None
        if not data:
            break
        parts.append(data)
        size += len(data)
        if size >= BODY_CHUNK:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            size = 0
    if parts:
        yield parts[0] if len(parts) == 1 else b"".join(parts)


async def read_body(request: web.Request, limit: int, *, stalled: ErrorCode = ErrorCode.UNSUPPORTED) -> bytes:
    """A small request body, read whole (whatever TCP segments it came in),
    refusing more than ``limit`` bytes with 413."""
    too_large = RegistryError(ErrorCode.SIZE_INVALID, f"request body is over {limit} bytes", status=413)
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in request_chunks(request, stalled=stalled):
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def parse_json_body(raw: bytes, expected: str) -> Any:
    """A JSON document, or 400 saying it should look like ``expected``: nesting
    too deep for the parser (RecursionError) is a bad body like any other."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise RegistryError(
            ErrorCode.UNSUPPORTED, f"request body must be JSON like {expected}", status=400
        ) from None


def has_body(request: web.Request) -> bool:
    return request.body_exists and request.content_length != 0


def query_page_size(request: web.Request, maximum: int) -> int:
    """The ``n`` of a listing, clamped to ``maximum`` (an absent ``n`` is the
    maximum): the spec lets a registry return fewer entries with a ``Link``."""
    raw = request.query.get("n")
    if raw is None:
        return maximum
    if not (raw.isascii() and raw.isdigit()):
        raise RegistryError(ErrorCode.UNSUPPORTED, "n must be a non-negative integer", status=400)
    digits = raw.lstrip("0") or "0"
    # More digits than the maximum has is above it: never int() a 5000-digit string.
    return maximum if len(digits) > len(str(maximum)) else min(int(digits), maximum)


def next_link(path: str, params: dict[str, str]) -> str:
    """The spec's ``Link`` to the next page (RFC 5988, ``rel="next"``)."""
    return f'<{path}?{urlencode(params)}>; rel="next"'


async def api_base(request: web.Request) -> web.Response:
    return json_response({})


def repo_name(request: web.Request) -> str:
    return request.match_info["name"]
