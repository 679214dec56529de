"""The object store's own rate: the blobs of a push phase PUT and then GET with
obstore straight to the SeaweedFS of the ``distribution-cluster`` target, at
the push phases' concurrency, no registry in between.  It bounds what any
registry on that store can do (``storage_raw`` in the throughput JSON).

A blob up to ``PART`` bytes goes up in one PUT, a larger one as a streamed
multipart upload of ``PART``-byte parts, 4 in flight (what hareg's S3 driver
does, docs/storage.md); GETs stream the body in 1 MiB pieces.  The objects are
written under a key prefix of their own and deleted afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import obstore
from obstore.store import S3Store

from bench.blobs import BlobSpec, MiB
from bench.workload import run_phase

PART = 8 * MiB
READ_CHUNK = 1 * MiB


@dataclass(frozen=True)
class S3Endpoint:
    """Where and how to reach a bucket (a target's object store)."""

    url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def store_for(endpoint: S3Endpoint) -> S3Store:
    """An obstore client of ``endpoint``'s bucket (path-style, plain HTTP allowed)."""
    return S3Store(
        endpoint.bucket,
        endpoint=endpoint.url,
        access_key_id=endpoint.access_key,
        secret_access_key=endpoint.secret_key,
        region=endpoint.region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


async def measure(endpoint: S3Endpoint, blobs: list[BlobSpec], concurrency: int) -> dict[str, Any]:
    """PUT every blob, then GET every blob, each at ``concurrency``: MB/s of both,
    with the phases' summaries (latencies, errors)."""
    store = store_for(endpoint)
    prefix = f"bench-raw/{uuid.uuid4().hex}/"

    async def put(i: int) -> int:
        blob = blobs[i]
        multipart = blob.size > PART
        await obstore.put_async(
            store, f"{prefix}{i}", blob.stream(), use_multipart=multipart, chunk_size=PART, max_concurrency=4
        )
        return blob.size

    async def get(i: int) -> int:
        got = await obstore.get_async(store, f"{prefix}{i}")
        size = 0
        async for chunk in got.stream(min_chunk_size=READ_CHUNK):
            size += len(chunk)
        if size != blobs[i].size:
            raise ValueError(f"GET {prefix}{i}: {size} bytes, expected {blobs[i].size}")
        return size

    try:
        puts = await run_phase("raw_put", put, concurrency=concurrency, count=len(blobs))
        gets = await run_phase("raw_get", get, concurrency=concurrency, count=len(blobs))
    finally:
        for i in range(len(blobs)):
            try:
                await obstore.delete_async(store, f"{prefix}{i}")
            except Exception:  # a leftover object in a bench bucket harms nothing
                continue
    return {
        "put_mb_s": round(puts.mb_s, 1),
        "get_mb_s": round(gets.mb_s, 1),
        "concurrency": concurrency,
        "put": puts.summary(),
        "get": gets.summary(),
    }
