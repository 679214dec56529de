"""hareg.registry.pull_through's naming rules (the upstream path of a mirrored
repository, the allow globs, write refusal); its behaviour against real
upstreams is tested over HTTP in tests/http/test_pull_through.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from registries import running

from hareg.clock import SystemClock
from hareg.kv.etcd import EtcdKV
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.pull_through import Mirror
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore
from hareg.upstream.client import RegistryClient


@pytest.fixture
async def registry(kv: EtcdKV, tmp_path: Path) -> AsyncIterator[Registry]:
    clock = SystemClock()
    # Real clients; these tests never make them send a request.
    hub = RegistryClient("https://registry-1.docker.io", clock)
    quay = RegistryClient("https://quay.io", clock)
    mirrors = [Mirror("hub", hub, 60.0), Mirror("mirror/quay", quay, 60.0, allow=("coreos/*",))]
    async with running(kv, FilesystemBlobStore(tmp_path / "blobs"), mirrors=mirrors) as reg:
        yield reg
    await hub.close()
    await quay.close()


def test_upstream_paths(registry: Registry) -> None:
    pt = registry.pull_through
    mirrored = {repo: (found[0].prefix, found[1]) if (found := pt.mirror_of(repo)) else None for repo in (
        "hub/alpine", "hub/library/alpine", "hub/bitnami/redis", "mirror/quay/coreos/etcd",
        "mirror/quay/alpine", "hub", "hubx/alpine", "mirror/quayx/a", "own/app",
    )}  # fmt: skip
    assert mirrored == {
        "hub/alpine": ("hub", "library/alpine"),  # Docker Hub's short names
        "hub/library/alpine": ("hub", "library/alpine"),
        "hub/bitnami/redis": ("hub", "bitnami/redis"),
        "mirror/quay/coreos/etcd": ("mirror/quay", "coreos/etcd"),
        "mirror/quay/alpine": ("mirror/quay", "alpine"),  # not Docker Hub: as it is
        "hub": None,
        "hubx/alpine": None,
        "mirror/quayx/a": None,
        "own/app": None,
    }


async def test_allow_globs_and_write_refusal(registry: Registry) -> None:
    pt = registry.pull_through
    with pytest.raises(RegistryError) as denied:
        await pt.manifest("mirror/quay/other/app", "v1")
    assert denied.value.code is ErrorCode.DENIED
    assert "allow" in denied.value.message and "other/app" in denied.value.message
    with pytest.raises(RegistryError) as refused:
        pt.check_write("hub/alpine")
    assert refused.value.code is ErrorCode.DENIED and refused.value.status == 403
    assert "read-only mirror" in refused.value.message
    pt.check_write("own/app")  # not mirrored: no refusal
