"""SeaweedFS fixtures, for every test directory (tests/conftest.py loads this plugin).

``seaweedfs``: one real SeaweedFS (``weed mini``, 127.0.0.1, free ports) for
the whole session; tests that share it keep to their own key prefix (the
``s3_store`` factory gives every store one) and must not stop or pause it.
Tests that break the object store start their own SeaweedFSProcess.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from background import run_in_private_loop

from hareg.processes.seaweedfs import SeaweedFSNotFound, SeaweedFSProcess, find_weed


def need_weed() -> None:
    try:
        find_weed()
    except SeaweedFSNotFound as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFSProcess]:
    need_weed()
    proc = SeaweedFSProcess(tmp_path_factory.mktemp("seaweedfs") / "data")
    run_in_private_loop(proc.start(startup_timeout=60))
    try:
        yield proc
    finally:
        run_in_private_loop(proc.kill())


S3StoreFactory = Callable[..., Any]


@pytest.fixture
async def s3_store(seaweedfs: SeaweedFSProcess) -> AsyncIterator[S3StoreFactory]:
    """``s3_store(**options)``: an S3BlobStore on the session's SeaweedFS.
    Every call of one test shares that test's own key prefix (so several
    stores act as replicas of one registry) unless ``key_prefix`` is given."""
    from hareg.storage.s3 import S3BlobStore

    prefix = f"test/{uuid.uuid4().hex}/"
    made: list[S3BlobStore] = []

    def make(**options: Any) -> S3BlobStore:
        settings: dict[str, Any] = {
            "bucket": seaweedfs.bucket,
            "region_endpoint": seaweedfs.s3_url,
            "access_key": seaweedfs.access_key,
            "secret_key": seaweedfs.secret_key,
            "key_prefix": prefix,
            "timeout": 10.0,
            **options,
        }
        store = S3BlobStore(**settings)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()
