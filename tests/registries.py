"""Registries for tests: one started on its own key prefix of the shared
etcd, and the same served over HTTP by an in-process aiohttp test server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from hareg.clock import Clock, SystemClock
from hareg.http.app import init_app
from hareg.http.keys import HttpSettings
from hareg.ids import RandomIds
from hareg.kv.base import KV
from hareg.observability.metrics import Metrics
from hareg.registry.service import Registry
from hareg.storage.base import BlobStore

Client = TestClient[Any, Any]


@asynccontextmanager
async def running(
    kv: KV,
    store: BlobStore,
    *,
    clock: Clock | None = None,
    prefix: str | None = None,
    before_start: Callable[[Registry], None] | None = None,
    **options: Any,
) -> AsyncIterator[Registry]:
    """A started Registry (``options`` go to its constructor), on a key prefix
    of its own unless one is given; ``before_start`` may adjust it (a shorter
    lease, a lower inline limit); on leaving it stops and ``store`` closes."""
    reg = Registry(
        kv,
        store,
        clock or SystemClock(),
        RandomIds(),
        prefix=prefix or f"/test-{uuid.uuid4().hex[:12]}",
        **options,
    )
    if before_start is not None:
        before_start(reg)
    await reg.start()
    try:
        yield reg
    finally:
        await reg.stop()
        await store.close()


@asynccontextmanager
async def serving(
    kv: KV,
    store: BlobStore,
    *,
    settings: HttpSettings | None = None,
    metrics: Metrics | None = None,
    **options: Any,
) -> AsyncIterator[tuple[Registry, Client]]:
    """``running``, and an HTTP client of the registry's application."""
    async with (
        running(kv, store, **options) as reg,
        TestClient(TestServer(init_app(reg, settings, metrics=metrics))) as client,
    ):
        yield reg, client
