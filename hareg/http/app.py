"""The aiohttp application factory: routes, middleware and typed state."""

from __future__ import annotations

from aiohttp import web

from hareg.http import base, blobs, catalog, health, manifests, referrers, tags, uploads
from hareg.http.keys import REGISTRY, SETTINGS, HttpSettings
from hareg.registry.service import Registry

# Repository names contain '/', so they match greedily up to the resource part.
_NAME = "{name:.+}"


def init_app(registry: Registry, settings: HttpSettings | None = None) -> web.Application:
    app = web.Application(middlewares=[base.error_middleware])
    app[REGISTRY] = registry
    app[SETTINGS] = settings or HttpSettings()
    app.on_response_prepare.append(base.on_prepare)
    r = app.router
    r.add_get("/v2/", base.api_base)
    r.add_get("/v2", base.api_base)
    r.add_get("/v2/_catalog", catalog.catalog)
    r.add_get(f"/v2/{_NAME}/tags/list", tags.list_tags)
    r.add_get(f"/v2/{_NAME}/referrers/{{digest}}", referrers.list_referrers)
    r.add_route("HEAD", f"/v2/{_NAME}/manifests/{{reference}}", manifests.head_manifest)
    r.add_get(f"/v2/{_NAME}/manifests/{{reference}}", manifests.get_manifest, allow_head=False)
    r.add_put(f"/v2/{_NAME}/manifests/{{reference}}", manifests.put_manifest)
    r.add_delete(f"/v2/{_NAME}/manifests/{{reference}}", manifests.delete_manifest)
    r.add_post(f"/v2/{_NAME}/blobs/uploads/", uploads.start_upload)
    r.add_post(f"/v2/{_NAME}/blobs/uploads", uploads.start_upload)
    r.add_get(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.upload_status, allow_head=False)
    r.add_patch(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.patch_upload)
    r.add_put(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.finish_upload)
    r.add_delete(f"/v2/{_NAME}/blobs/uploads/{{upload_id}}", uploads.cancel_upload)
    r.add_route("HEAD", f"/v2/{_NAME}/blobs/{{digest}}", blobs.head_blob)
    r.add_get(f"/v2/{_NAME}/blobs/{{digest}}", blobs.get_blob, allow_head=False)
    r.add_delete(f"/v2/{_NAME}/blobs/{{digest}}", blobs.delete_blob)
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    return app
