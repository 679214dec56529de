"""Request observability: request ids, the access log, HTTP metrics and ``/metrics``.

``observe_middleware`` is the outermost middleware.  For every request it

* tells the connection's guard that the request's headers are in
  (``hareg.http.connections``: its header timer stops while the handler runs);
* picks the request id: the client's ``X-Request-Id`` if it is sane (1-128
  characters of ``A-Z a-z 0-9 . _ : -``, starting with a letter or digit),
  else a fresh one; it is put in the ``REQUEST_ID`` context variable (so every
  log line written while serving the request carries it) and sent back in the
  ``X-Request-Id`` response header;
* sends the response itself, so that latency and bytes cover the body too;
* counts it in the metrics (route template, method, status, latency, bytes);
* writes one access log line: at Normal for the registry API, at Debug for
  probes and scrapes (``/healthz``, ``/readyz``, ``/metrics``), with the
  request and response headers from Debug on.  The fields the client
  wrote (method, path and query, User-Agent, headers) pass the log handler's
  redaction (``_state``, presigned signatures, ``Authorization``); the others
  are the registry's own values (``REDACT_ONLY``), written as they are.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Final

from aiohttp import web

from hareg.http.base import CLIENT_CLOSED, Handler, registry
from hareg.http.connections import handler_started
from hareg.kv.base import KVError
from hareg.observability.logs import REDACT_ONLY, REQUEST_ID
from hareg.observability.metrics import CONTENT_TYPE, Metrics

__all__ = [
    "METRICS",
    "REQUEST_ID_HEADER",
    "metrics_endpoint",
    "observe_middleware",
    "on_prepare",
    "request_id_of",
    "route_template",
    "send_now",
]

log = logging.getLogger("hareg.access")

REQUEST_ID_HEADER: Final = "X-Request-Id"
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})
# The access line's fields a client can put a secret in (a token in a query
# parameter, a header); redaction looks at these only.
_CLIENT_FIELDS: Final = ("method", "path", "user_agent", "request_headers", "response_headers")

_SOURCE: Final = __file__

METRICS = web.AppKey("metrics", Metrics)
_ID_KEY = web.RequestKey("request_id", str)


def request_id_of(request: web.Request) -> str | None:
    return request.get(_ID_KEY)


def route_template(request: web.Request) -> str:
    """The route's pattern (``/v2/{name}/blobs/{digest}``), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _new_id(request: web.Request) -> str:
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming is not None and _SANE_ID.fullmatch(incoming):
        return incoming
    return registry(request).ids.new_id()


def _target(request: web.Request) -> str:
    return f"{request.path}?{request.query_string}" if request.query_string else request.path


def _sent_bytes(request: web.Request, response: web.StreamResponse) -> int:
    if request.method == "HEAD" or response.status in (204, 304) or not response.prepared:
        return 0
    # Content-Length covers a sendfile body, which never passes the writer's count.
    length = response.content_length
    return length if length is not None else response.body_length


async def _already_sent(request: web.BaseRequest) -> None:
    return None


async def send_now(request: web.Request, response: web.StreamResponse) -> None:
    """Send ``response`` completely, now, from inside a middleware (idempotent).

    aiohttp sends a returned response after the middlewares; a middleware that
    must see the end of it (latency, bytes, a request slot) sends it itself.
    aiohttp then calls ``prepare`` and ``write_eof`` again, which are no-ops,
    except ``FileResponse.prepare``, which would send the file twice: that
    instance's ``prepare`` is replaced by a no-op once it has been sent.
    """
    if response.prepared:
        return
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-answer: aiohttp's own send after the
        # middlewares meets the closed connection too and ends the request
        # quietly (logged as a 499); raised from here it would log a traceback.
        pass
    if isinstance(response, web.FileResponse):
        response.prepare = _already_sent  # type: ignore[method-assign]


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    conn = handler_started(request)
    try:
        return await _observed(request, handler)
    finally:
        if conn is not None:
            conn.finished()


async def _observed(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _new_id(request)
    request[_ID_KEY] = request_id
    token = REQUEST_ID.set(request_id)
    metrics = request.app[METRICS]
    start = time.perf_counter()
    upload = request.method in _UPLOAD_METHODS and "/blobs/uploads" in request.path
    metrics.http_in_flight.inc()
    if upload:
        metrics.uploads_in_progress.inc()
    debug = log.isEnabledFor(logging.DEBUG)
    if debug:
        log.debug(
            "request received",
            extra={
                "fields": {
                    "method": request.method,
                    "path": _target(request),
                    "request_headers": dict(request.headers),
                }
            },
        )
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        await send_now(request, response)
        return response
    except web.HTTPException as exc:  # a redirect passed through (errors became responses inside)
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionError):
        status = CLIENT_CLOSED
        raise
    finally:
        elapsed = time.perf_counter() - start
        metrics.http_in_flight.dec()
        if upload:
            metrics.uploads_in_progress.dec()
        route = route_template(request)
        received = request.content.total_bytes if request.body_exists else 0
        sent = _sent_bytes(request, response) if response is not None else 0
        metrics.observe_request(route, request.method, status, elapsed, received, sent)
        fields: dict[str, Any] = {
            "method": request.method,
            "path": _target(request),
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "bytes_in": received,
            "bytes_out": sent,
            "remote": request.remote,
            "user_agent": request.headers.get("User-Agent"),
        }
        if debug and response is not None:
            fields["response_headers"] = dict(response.headers)
        level = logging.DEBUG if request.path in _QUIET_PATHS else logging.INFO
        if log.isEnabledFor(level):
            # Logger.handle on a record made here: the same line as log.log
            # writes, without its walk up the stack for the caller's source line
            # (which this line does not show).
            extra = {"fields": fields, REDACT_ONLY: _CLIENT_FIELDS}
            log.handle(log.makeRecord(log.name, level, _SOURCE, 0, "request", (), None, extra=extra))
        REQUEST_ID.reset(token)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition of this replica's metrics."""
    metrics = request.app[METRICS]
    reg = registry(request)
    if reg.barrier is not None and reg.cache is not None and reg.cache.ready:
        try:
            async with asyncio.timeout(1.0):
                revision = await reg.barrier.current_revision()
            metrics.cache_revision_lag.set(max(0, revision - reg.cache.revision))
        except (KVError, TimeoutError):
            pass  # etcd unavailable: the last measurement stays
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})
