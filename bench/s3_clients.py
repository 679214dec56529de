"""Measure the two candidate S3 clients (obstore, aiobotocore) against a real
SeaweedFS started here (``weed mini``), as recorded in docs/storage.md.

    .venv/bin/pip install aiobotocore   # obstore is hareg's dependency; this one is not
    .venv/bin/python bench/s3_clients.py [--rounds 3]

For each client: 1 MiB and 64 MiB PUT and GET (streamed, from/to an async
iterator of 1 MiB chunks), small-object PUT and HEAD at concurrency 16, and
presigned GET URL generation; then the same for hareg's S3BlobStore
(push = upload_start + upload_write + upload_commit).  Besides wall time it reports the CPU time the
client's process spent (all threads, so obstore's Rust runtime counts too).
SeaweedFS runs on the same machine, so throughput figures are bounded by it;
the CPU column is what the client costs a replica.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

from hareg.processes.seaweedfs import SeaweedFSProcess

MiB = 1024 * 1024
PART = 8 * MiB


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


BLOCK = os.urandom(MiB)


async def chunks(total: int, size: int = MiB) -> AsyncIterator[bytes]:
    block = BLOCK[:size]
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield block[:n]
        sent += n


class Result:
    def __init__(self, name: str, wall: float, cpu_s: float, amount: float, unit: str) -> None:
        self.name, self.wall, self.cpu_s, self.amount, self.unit = name, wall, cpu_s, amount, unit

    def row(self) -> str:
        rate = self.amount / self.wall
        return (
            f"{self.name:<28} {rate:10.1f} {self.unit:<7} wall {self.wall:6.2f}s  "
            f"cpu {self.cpu_s:6.2f}s  cpu/unit {1e3 * self.cpu_s / self.amount:8.3f} ms"
        )


async def measure(name: str, amount: float, unit: str, fn: Callable[[], Awaitable[None]]) -> Result:
    c0, t0 = cpu(), time.perf_counter()
    await fn()
    return Result(name, time.perf_counter() - t0, cpu() - c0, amount, unit)


async def gather_limited(n: int, limit: int, fn: Callable[[int], Awaitable[None]]) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    await asyncio.gather(*(one(i) for i in range(n)))


# The streamed rounds both clients run: (label, objects, bytes each, where under the prefix).
N1 = 64  # the 1 MiB objects, which the presign rounds name again
ROUNDS = (("1 MiB x64", N1, MiB, "1m"), ("64 MiB x4", 4, 64 * MiB, "64m"))


async def measure_rounds(
    prefix: str, put: Callable[[str, int], Awaitable[None]], get: Callable[[str], Awaitable[None]]
) -> list[Result]:
    """Each of ROUNDS: its objects PUT (streamed from 1 MiB chunks), then GET, one at a time."""

    async def put_one(under: str, size: int, i: int) -> None:
        await put(f"{under}/{i}", size)

    async def get_one(under: str, size: int, i: int) -> None:
        await get(f"{under}/{i}")

    return [
        await measure(
            f"{verb} {label}",
            n * size / MiB,
            "MiB/s",
            partial(gather_limited, n, 1, partial(one, f"{prefix}/{where}", size)),
        )
        for label, n, size, where in ROUNDS
        for verb, one in (("put", put_one), ("get", get_one))
    ]


async def measure_small(
    n: int, put: Callable[[int], Awaitable[None]], head: Callable[[int], Awaitable[None]]
) -> list[Result]:
    """``n`` small objects at concurrency 16: PUT (create only), then HEAD."""
    return [
        await measure(name, n, "ops/s", partial(gather_limited, n, 16, one))
        for name, one in (("small put c16 (create)", put), ("small head c16", head))
    ]


# ----------------------------------------------------------------- obstore


async def bench_obstore(url: str, prefix: str, small_n: int, presign_n: int) -> list[Result]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        "hareg",
        endpoint=url,
        access_key_id="hareg",
        secret_access_key="hareg-secret",
        region="us-east-1",
        virtual_hosted_style_request=False,
        unsigned_payload=True,
        client_options={"allow_http": True},
    )
    out: list[Result] = []

    async def put(key: str, total: int) -> None:
        # As the driver does: one plain PUT if the stream fits in one part,
        # else obstore's streaming multipart upload, 4 parts in flight.
        stream = chunks(total)
        first = bytearray()
        async for ch in stream:
            first += ch
            if len(first) >= PART:
                break
        if len(first) < PART:
            await obstore.put_async(store, key, bytes(first), use_multipart=False)
            return

        async def rest() -> AsyncIterator[bytes]:
            yield bytes(first)
            async for ch in stream:
                yield ch

        await obstore.put_async(store, key, rest(), chunk_size=PART, max_concurrency=4)

    async def get(key: str) -> None:
        resp = await obstore.get_async(store, key)
        async for _ in resp.stream(min_chunk_size=MiB):
            pass

    out += await measure_rounds(prefix, put, get)

    async def small_put(i: int) -> None:
        await obstore.put_async(store, f"{prefix}/small/{i}", b"x" * 1024, mode="create")

    async def small_head(i: int) -> None:
        await obstore.head_async(store, f"{prefix}/small/{i}")

    out.append(
        await measure(
            "copy 64 MiB x4 (CopyObject)",
            256,
            "MiB/s",
            lambda: gather_limited(
                4, 1, lambda i: obstore.copy_async(store, f"{prefix}/64m/{i}", f"{prefix}/64c/{i}")
            ),
        )
    )
    out += await measure_small(small_n, small_put, small_head)

    async def sign_all() -> None:
        for i in range(presign_n):
            obstore.sign(store, "GET", f"{prefix}/1m/{i % N1}", timedelta(seconds=600))

    out.append(await measure("presign GET", presign_n, "urls/s", sign_all))
    return out


# ------------------------------------------------------------- aiobotocore


async def bench_aiobotocore(url: str, prefix: str, small_n: int, presign_n: int) -> list[Result]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    session = get_session()
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        max_pool_connections=32,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        parameter_validation=False,
    )
    out: list[Result] = []
    async with session.create_client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="hareg",
        aws_secret_access_key="hareg-secret",
        region_name="us-east-1",
        config=config,
    ) as c:
        bucket = "hareg"

        async def put(key: str, total: int) -> None:
            # The driver's own streaming: whole body if it fits one part,
            # else a multipart upload with up to 4 parts in flight.
            buf = bytearray()
            stream = chunks(total)
            async for ch in stream:
                buf += ch
                if len(buf) >= PART:
                    break
            if len(buf) < PART:
                await c.put_object(Bucket=bucket, Key=key, Body=bytes(buf))
                return
            mp = await c.create_multipart_upload(Bucket=bucket, Key=key)
            uid = mp["UploadId"]
            parts: list[dict[str, Any]] = []
            tasks: set[asyncio.Task[None]] = set()
            sem = asyncio.Semaphore(4)

            async def part(n: int, body: bytes) -> None:
                try:
                    r = await c.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=body)
                    parts.append({"PartNumber": n, "ETag": r["ETag"]})
                finally:
                    sem.release()

            n = 0

            async def flush(body: bytes) -> None:
                nonlocal n
                n += 1
                await sem.acquire()
                tasks.add(asyncio.create_task(part(n, body)))

            await flush(bytes(buf))
            buf = bytearray()
            async for ch in stream:
                buf += ch
                if len(buf) >= PART:
                    await flush(bytes(buf))
                    buf = bytearray()
            if buf:
                await flush(bytes(buf))
            await asyncio.gather(*tasks)
            parts.sort(key=lambda p: p["PartNumber"])
            await c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}
            )

        async def get(key: str) -> None:
            r = await c.get_object(Bucket=bucket, Key=key)
            async with r["Body"] as body:
                async for _ in body.iter_chunks(MiB):
                    pass

        out += await measure_rounds(prefix, put, get)

        async def copy(i: int) -> None:
            await c.copy_object(
                Bucket=bucket,
                Key=f"{prefix}/64c/{i}",
                CopySource={"Bucket": bucket, "Key": f"{prefix}/64m/{i}"},
            )

        async def part_copy(i: int) -> None:
            key = f"{prefix}/64pc/{i}"
            mp = await c.create_multipart_upload(Bucket=bucket, Key=key)
            parts = []
            for n in range(8):
                r = await c.upload_part_copy(
                    Bucket=bucket,
                    Key=key,
                    UploadId=mp["UploadId"],
                    PartNumber=n + 1,
                    CopySource={"Bucket": bucket, "Key": f"{prefix}/64m/{i}"},
                    CopySourceRange=f"bytes={n * PART}-{(n + 1) * PART - 1}",
                )
                parts.append({"PartNumber": n + 1, "ETag": r["CopyPartResult"]["ETag"]})
            await c.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=mp["UploadId"],
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )

        out.append(
            await measure("copy 64 MiB x4 (CopyObject)", 256, "MiB/s", lambda: gather_limited(4, 1, copy))
        )
        out.append(
            await measure(
                "copy 64 MiB x4 (PartCopy x8)", 256, "MiB/s", lambda: gather_limited(4, 1, part_copy)
            )
        )

        async def small_put(i: int) -> None:
            await c.put_object(Bucket=bucket, Key=f"{prefix}/small/{i}", Body=b"x" * 1024, IfNoneMatch="*")

        async def small_head(i: int) -> None:
            await c.head_object(Bucket=bucket, Key=f"{prefix}/small/{i}")

        out += await measure_small(small_n, small_put, small_head)

        async def sign_all() -> None:
            for i in range(presign_n):
                await c.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": f"{prefix}/1m/{i % N1}"}, ExpiresIn=600
                )

        out.append(await measure("presign GET", presign_n, "urls/s", sign_all))
    return out


# ------------------------------------------------- the driver built on obstore


async def bench_driver(url: str, prefix: str, small_n: int, presign_n: int) -> list[Result]:
    """hareg's S3BlobStore itself: what a push and a pull cost end to end."""
    import hashlib

    from hareg.storage.s3 import S3BlobStore

    store = S3BlobStore(
        bucket="hareg",
        region_endpoint=url,
        access_key="hareg",
        secret_key="hareg-secret",
        key_prefix=prefix + "/",
    )
    out: list[Result] = []
    digests: dict[int, str] = {}

    async def push(uid: str, total: int) -> None:
        h = hashlib.sha256()
        blocks = []
        async for ch in chunks(total):
            blocks.append(ch)
        for b in blocks:
            h.update(b)

        async def body() -> AsyncIterator[bytes]:
            for b in blocks:
                yield b

        await store.upload_start(uid)
        await store.upload_write(uid, 0, body())
        digests[total] = f"sha256:{h.hexdigest()}"
        await store.upload_commit(uid, digests[total], total)

    async def pull(total: int) -> None:
        async for _ in store.read(digests[total]):
            pass

    out.append(
        await measure(
            "push 1 MiB blob x32", 32, "MiB/s", lambda: gather_limited(32, 1, lambda i: push(f"m{i}", MiB))
        )
    )
    out.append(
        await measure("pull 1 MiB blob x32", 32, "MiB/s", lambda: gather_limited(32, 1, lambda i: pull(MiB)))
    )
    out.append(
        await measure(
            "push 64 MiB blob x2",
            128,
            "MiB/s",
            lambda: gather_limited(2, 1, lambda i: push(f"l{i}", 64 * MiB)),
        )
    )
    out.append(
        await measure(
            "pull 64 MiB blob x2", 128, "MiB/s", lambda: gather_limited(2, 1, lambda i: pull(64 * MiB))
        )
    )

    async def small_push(i: int) -> None:
        data = f"small blob {i} {prefix}".encode()

        async def body() -> AsyncIterator[bytes]:
            yield data

        await store.upload_start(f"s{i}")
        await store.upload_write(f"s{i}", 0, body())
        await store.upload_commit(f"s{i}", f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))

    n = max(1, small_n // 10)
    out.append(
        await measure(f"small blob push c16 x{n}", n, "blobs/s", lambda: gather_limited(n, 16, small_push))
    )

    async def sign_all() -> None:
        d = digests[MiB]
        for _ in range(presign_n):
            await store.presign(d, 600)

    out.append(await measure("presign (driver)", presign_n, "urls/s", sign_all))
    await store.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--presign", type=int, default=5000)
    ap.add_argument("--only", choices=["obstore", "aiobotocore", "driver"], action="append")
    ap.add_argument(
        "--s3-url", help="use this S3 endpoint (bucket hareg, hareg/hareg-secret) instead of starting weed"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hareg-s3bench-") as tmp:
        proc = None
        url = args.s3_url
        if url is None:
            proc = SeaweedFSProcess(os.path.join(tmp, "weed"))
            await proc.start()
            url = proc.s3_url
        try:
            for r in range(args.rounds):
                for name, fn in (
                    ("obstore", bench_obstore),
                    ("aiobotocore", bench_aiobotocore),
                    ("hareg S3BlobStore (obstore)", bench_driver),
                ):
                    if args.only and name.split()[0].replace("hareg", "driver") not in args.only:
                        continue
                    if name == "aiobotocore" and importlib.util.find_spec("aiobotocore") is None:
                        print("== aiobotocore is not installed: skipped", flush=True)
                        continue
                    prefix = f"bench/{uuid.uuid4().hex}"
                    results = await fn(url, prefix, args.small, args.presign)
                    print(f"== round {r + 1}: {name}", flush=True)
                    for res in results:
                        print("  " + res.row(), flush=True)
        finally:
            if proc is not None:
                await proc.kill()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
