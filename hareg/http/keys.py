"""Typed application state keys."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from hareg.registry.service import Registry


@dataclass(frozen=True, slots=True)
class HttpSettings:
    # Serve blob GETs by streaming instead of redirecting to a presigned URL.
    disable_redirect: bool = False
    # How long a presigned blob URL stays valid.
    redirect_expiry: int = 20 * 60


REGISTRY = web.AppKey("registry", Registry)
SETTINGS = web.AppKey("settings", HttpSettings)
