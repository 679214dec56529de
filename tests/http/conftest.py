"""Fixtures for the HTTP layer: a real registry (real etcd, filesystem blobs)
behind aiohttp's in-process test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kv_hooks import HookedKV
from registries import running, serving

from hareg.http.app import init_app
from hareg.kv.etcd import EtcdKV
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore


@pytest.fixture
async def registry(kv: EtcdKV, tmp_path: Path) -> AsyncIterator[Registry]:
    # Each test gets its own key prefix on the shared session etcd.
    async with running(kv, FilesystemBlobStore(tmp_path / "blobs")) as reg:
        yield reg


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[TestClient[object, object]]:
    async with TestClient(TestServer(init_app(registry))) as c:
        yield c


@pytest.fixture
async def hooked(
    kv: EtcdKV, tmp_path: Path
) -> AsyncIterator[tuple[Registry, HookedKV, TestClient[object, object]]]:
    """A registry whose etcd connection lets a test order a race exactly (kv_hooks.py)."""
    hooked_kv = HookedKV(kv)
    async with serving(hooked_kv, FilesystemBlobStore(tmp_path / "hooked-blobs")) as (reg, c):
        yield reg, hooked_kv, c
