"""Shared HTTP plumbing: the error middleware, the /v2/ endpoint, body streaming."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from hareg.http.keys import REGISTRY
from hareg.kv.base import KVError, KVUnknownOutcome
from hareg.metadata.store import Contended
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
        return RegistryError(ErrorCode.UNSUPPORTED, "method not allowed on this endpoint", status=405)
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
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc))
    except Contended as exc:
        # Other writers kept changing the same keys: nothing was written, and a
        # retry after they settle succeeds.
        log.warning("contended %s %s: %s", request.method, request.path, exc)
        return error_response(
            RegistryError(
                ErrorCode.UNAVAILABLE,
                f"too many concurrent changes to the same keys ({exc}); nothing was written, retry the request",
                headers={"Retry-After": "1"},
            )
        )
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


def query_int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    # ASCII digits only: str.isdigit() also accepts '²' (int() then raises) and '٣'.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise RegistryError(ErrorCode.UNSUPPORTED, f"{name} must be a non-negative integer", status=400)
    return int(raw)


def next_link(path: str, n: int | None, last: str) -> str:
    from urllib.parse import urlencode

    params = {"last": last} if n is None else {"n": str(n), "last": last}
    return f'<{path}?{urlencode(params)}>; rel="next"'


async def api_base(request: web.Request) -> web.Response:
    return json_response({})


def repo_name(request: web.Request) -> str:
    return request.match_info["name"]
