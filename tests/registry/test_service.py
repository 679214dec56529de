"""The registry's start (hareg/registry/service.py): over metadata an earlier
version wrote, the reverse-reference index is built in the background and
deletes stay refused while something references their target."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from metadata.support import old_registry
from registries import running

from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.registry.errors import RegistryError
from hareg.storage.filesystem import FilesystemBlobStore


async def test_a_start_over_old_metadata_builds_the_index_in_the_background(
    kv: EtcdKV, tmp_path: Path
) -> None:
    prefix = f"/test-{uuid.uuid4().hex[:12]}"
    keys = Keys(prefix)
    d = await old_registry(kv, keys)
    assert await kv.get(keys.reference_index_built()) is None
    async with running(kv, FilesystemBlobStore(tmp_path), prefix=prefix) as reg:
        async with asyncio.timeout(60):  # generous: a busy machine
            while not await reg.meta.reference_index_ready():
                await asyncio.sleep(0.05)
        assert await kv.get(keys.reference_index_built()) is not None
        with pytest.raises(RegistryError, match="referenced"):
            await reg.blobs.delete("old", d["layer"])
        with pytest.raises(RegistryError, match="referenced"):
            await reg.manifests.delete("old", d["image"])
        await reg.manifests.delete("old", d["index"])  # nothing references the index
        await reg.manifests.delete("old", d["signature"])
        await reg.manifests.delete("old", d["image"])
        await reg.blobs.delete("old", d["layer"])
