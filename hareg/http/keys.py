"""Typed application state keys."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from aiohttp import web

from hareg.config.model import RequestsConfig
from hareg.registry.blobs import DEFAULT_REDIRECT_EXPIRY
from hareg.registry.service import Registry


@dataclass(frozen=True, slots=True)
class HttpSettings:
    # Serve blob GETs by streaming instead of redirecting to a presigned URL.
    disable_redirect: bool = False
    # How long a presigned blob URL stays valid.
    redirect_expiry: int = DEFAULT_REDIRECT_EXPIRY
    # requests.read/write at start-up (the limiters themselves are reconfigured on SIGHUP).
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    # Managed, Unmanaged or Removed (Removed: the registry API answers 503).
    management_state: str = "Managed"
    # limits.bodyStallTimeout: a request body that sends nothing this long is dropped.
    body_stall_timeout: float = 60.0
    # The etcd endpoints this replica uses, and the TLS context to reach them
    # (None: plain HTTP), for GET /hareg/v1/members's health probes.
    etcd_endpoints: tuple[str, ...] = ()
    etcd_ssl: ssl.SSLContext | None = None


REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", HttpSettings)
