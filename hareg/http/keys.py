"""Typed application state keys."""

from __future__ import annotations

from aiohttp import web

from hareg.registry.service import Registry

REGISTRY = web.AppKey("registry", Registry)
