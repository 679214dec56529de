"""Shared HTTP plumbing: the error middleware, the /v2/ endpoint, body streaming."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from hareg.http.keys import REGISTRY
from hareg.kv.base import KVError, KVUnknownOutcome
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.service import Registry
from hareg.storage.base import StorageError

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
    return web.json_response(err.to_json(), status=err.status, headers=headers)


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the spec's JSON error; nothing leaks a traceback."""
    try:
        response = await handler(request)
    except RegistryError as exc:
        if exc.status == 405 and "Allow" not in exc.headers:
            # Every 405 names the methods the resource supports (RFC 9110 §15.5.6).
            exc.headers["Allow"] = ", ".join(sorted(await allowed_methods(request)))
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc))
    except KVUnknownOutcome:
        log.warning("etcd outcome unknown for %s %s", request.method, request.path)
        return error_response(
            RegistryError(
                ErrorCode.UNAVAILABLE,
                "the metadata store did not confirm the write in time; it may or may not have "
                "applied, retry the request",
                headers={"Retry-After": "1"},
            )
        )
    except KVError as exc:
        log.warning("etcd unavailable for %s %s: %s", request.method, request.path, exc)
        return error_response(
            RegistryError(
                ErrorCode.UNAVAILABLE,
                "the metadata store (etcd) is unavailable",
                headers={"Retry-After": "1"},
            )
        )
    except StorageError as exc:
        log.warning("blob storage error for %s %s: %s", request.method, request.path, exc)
        return error_response(
            RegistryError(
                ErrorCode.UNAVAILABLE, "the blob store is unavailable", headers={"Retry-After": "1"}
            )
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response(
            {"errors": [{"code": "UNKNOWN", "message": "internal server error; see the registry log"}]},
            status=500,
        )
    return response


async def allowed_methods(request: web.Request) -> set[str]:
    """Every method some route serves at this request's path."""
    methods: set[str] = set()
    for resource in request.app.router.resources():
        _, allowed = await resource.resolve(request)
        methods |= allowed
    return methods


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(API_VERSION_HEADER)


async def request_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as a stream of about BODY_CHUNK-sized pieces (what the
    socket delivers is joined once, not copied into a buffer and out again)."""
    parts: list[bytes] = []
    size = 0
    async for data in request.content.iter_any():
        parts.append(data)
        size += len(data)
        if size >= BODY_CHUNK:
            yield parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            size = 0
    if parts:
        yield parts[0] if len(parts) == 1 else b"".join(parts)


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
