"""bench.storage_raw against a real SeaweedFS (the session's): blobs below and
above the part size go up and come back, and nothing is left behind.  No
speed is asserted."""

from __future__ import annotations

import obstore

from bench.blobs import BlobSpec
from bench.storage_raw import PART, S3Endpoint, measure, store_for
from hareg.processes.seaweedfs import SeaweedFSProcess


async def test_put_and_get_every_blob_then_delete_them(seaweedfs: SeaweedFSProcess) -> None:
    endpoint = S3Endpoint(seaweedfs.s3_url, seaweedfs.bucket, seaweedfs.access_key, seaweedfs.secret_key)
    blobs = [BlobSpec(seed=401, size=300_000), BlobSpec(seed=402, size=1), BlobSpec(seed=403, size=PART + 1)]
    raw = await measure(endpoint, blobs, concurrency=2)
    for phase in ("put", "get"):
        assert raw[phase]["errors"] == 0, raw[phase].get("first_error")
        assert raw[phase]["ops"] == 3 and raw[phase]["bytes"] == sum(b.size for b in blobs)
    assert raw["put_mb_s"] > 0 and raw["get_mb_s"] > 0
    left = [meta async for batch in obstore.list(store_for(endpoint), prefix="bench-raw/") for meta in batch]
    assert left == []


async def test_a_refused_put_is_counted_as_an_error(seaweedfs: SeaweedFSProcess) -> None:
    endpoint = S3Endpoint(seaweedfs.s3_url, seaweedfs.bucket, seaweedfs.access_key, "not-the-secret")
    raw = await measure(endpoint, [BlobSpec(seed=404, size=1000)], concurrency=1)
    assert raw["put"]["errors"] == 1 and raw["put"]["ops"] == 0 and raw["put_mb_s"] == 0
