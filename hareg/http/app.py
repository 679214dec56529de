"""The aiohttp application factory: routes, middleware and typed state."""

from __future__ import annotations

from aiohttp import web

from hareg.http import (
    access as access_api,
)
from hareg.http import (
    admission,
    auth,
    base,
    blobs,
    catalog,
    console,
    extensions,
    fsck,
    health,
    limits,
    manifests,
    members,
    observe,
    pruner,
    readonly,
    referrers,
    status,
    tag_list,
    uploads,
)
from hareg.http import connections as connections_module
from hareg.http.connections import ConnectionGuard
from hareg.http.keys import REGISTRY, SETTINGS, HttpSettings
from hareg.http.routing import HotRoutes
from hareg.observability.metrics import Metrics
from hareg.registry.access import AccessControl
from hareg.registry.service import Registry

# Repository names contain '/', so they match greedily up to the resource part.
_NAME = "{name:.+}"


def init_app(
    registry: Registry,
    settings: HttpSettings | None = None,
    *,
    metrics: Metrics | None = None,
    connections: ConnectionGuard | None = None,
    access: AccessControl | None = None,
    console_assets: console.ConsoleAssets | None = None,
) -> web.Application:
    """``connections``: the header timeout of listeners started with
    ``hareg.http.connections.start_listener`` (``hareg serve`` has one);
    ``access``: authentication and authorization (None: every request is
    served, the registry without an ``auth`` section); ``console_assets``:
    the web console's files (None: the ones shipped in the package)."""
    # Outermost first: observe (the connection guard's phase, request id,
    # access log, metrics) sees every answer, errors included; the admission
    # checks (removed, 401/403, read-only, mirrors, then a request slot) in
    # that order (hareg/http/admission.py).
    app = web.Application(
        middlewares=[observe.observe_middleware, base.error_middleware, admission.admission_middleware]
    )
    app[REGISTRY] = registry
    app[SETTINGS] = settings = settings or HttpSettings()
    app[observe.METRICS] = metrics = metrics or Metrics()
    app[limits.LIMITS] = limiters = limits.RequestLimiters(settings.requests)
    app[status.STATUS] = status.StatusTracker()
    if access is not None:
        app[auth.ACCESS] = access
    if connections is not None:
        app[connections_module.CONNECTIONS] = connections
    metrics.attach(registry, lambda: limiters)
    app.on_response_prepare.append(base.on_prepare)
    app.on_response_prepare.append(observe.on_prepare)
    r = app.router
    r.add_get("/v2/", base.api_base)
    r.add_get("/v2", base.api_base)
    r.add_get("/v2/_catalog", catalog.catalog)
    r.add_get(auth.TOKEN_PATH, auth.issue_token)
    # Before every /v2/{name}/... route: manifests and blobs by reference resolve
    # through it without trying the routes registered before theirs.
    hot = HotRoutes()
    r.register_resource(hot)
    r.add_get(f"/v2/{_NAME}/tags/list", tag_list.list_tags)
    r.add_get(f"/v2/{_NAME}/referrers/{{digest}}", referrers.list_referrers)
    manifest_route = r.add_route("HEAD", f"/v2/{_NAME}/manifests/{{reference}}", manifests.head_manifest)
    r.add_get(f"/v2/{_NAME}/manifests/{{reference}}", manifests.get_manifest, allow_head=False)
    r.add_put(f"/v2/{_NAME}/manifests/{{reference}}", manifests.put_manifest)
    r.add_delete(f"/v2/{_NAME}/manifests/{{reference}}", manifests.delete_manifest)
    r.add_post(f"/v2/{_NAME}/blobs/uploads/", uploads.start_upload)
    r.add_post(f"/v2/{_NAME}/blobs/uploads", uploads.start_upload)
    # HEAD on an upload URL is its GET without a body (the upload's status).
    r.add_get(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.upload_status)
    r.add_patch(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.patch_upload)
    r.add_put(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.finish_upload)
    r.add_delete(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.cancel_upload)
    blob_route = r.add_route("HEAD", f"/v2/{_NAME}/blobs/{{digest}}", blobs.head_blob)
    r.add_get(f"/v2/{_NAME}/blobs/{{digest}}", blobs.get_blob, allow_head=False)
    r.add_delete(f"/v2/{_NAME}/blobs/{{digest}}", blobs.delete_blob)
    assert manifest_route.resource is not None and blob_route.resource is not None
    hot.add("manifests", manifest_route.resource)
    # .../blobs/uploads is an upload's start, a route registered before the blobs one.
    hot.add("blobs", blob_route.resource, unless_last=frozenset({"uploads"}))
    extensions.register(r)  # /hareg/v1/...: tag history, rollback, immutable tags
    r.add_post("/hareg/v1/prune", pruner.prune)
    r.add_post(f"/hareg/v1/repositories/{_NAME}/prune", pruner.prune)
    r.add_get("/hareg/v1/pruner", pruner.pruner_status)
    fsck.register(r)  # /hareg/v1/fsck: the integrity check of the blob store
    access_api.register(r)  # /hareg/v1/access/: grants and robot accounts
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", observe.metrics_endpoint)
    r.add_get("/hareg/v1/status", status.status)
    r.add_get(readonly.READ_ONLY_PATH, readonly.get_read_only)
    r.add_put(readonly.READ_ONLY_PATH, readonly.put_read_only)
    r.add_get(members.MEMBERS_PATH, members.members)
    console.register(r, console_assets or console.ConsoleAssets())  # /console/: static files only
    return app
