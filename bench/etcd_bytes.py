"""``python -m bench.etcd_bytes [--images N] [--repositories R] [--json FILE]``: what
one image push costs etcd.

Starts a private etcd (a fresh data directory, no auto-compaction during the
run) and an in-process registry on it (the filesystem blob store), and pushes
images the way a client does: a ``POST`` then a ``PUT`` for each blob the
repository lacks (a config and a top layer of its own; three base layers
shared by every image of the repository, pushed once), then the manifest
(config + 4 layers + two annotations: about 1 KB) under a tag of its own.

It prints two things:

* **One push, key by key**: every etcd write the last image's push made (the
  watch of the whole prefix between two revisions), each key's length, its
  value's length and what etcd keeps of it: every put is a revision
  (``17 B`` revision key + the key-value protobuf, about ``key + value + 20``)
  kept until compaction, a delete a tombstone (``key + ~20``), a put that
  overwrites a key leaves the older revision behind until compaction.
* **Per image, measured**: etcd's database in use over the N pushes, before
  compaction (every revision kept) and after compacting to the last
  revision (what stays for good), divided by N.

The same run with a baseline: nothing here compares with another target; run
it on two commits to compare (docs/architecture.md has the table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.client import sha256_digest
from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import EventType, prefix_end
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.records import BlobRecord, ManifestRecord, encode
from hareg.processes.etcd import EtcdProcess
from hareg.registry.errors import RegistryError
from hareg.registry.service import Registry
from hareg.registry.streams import one_chunk
from hareg.storage.filesystem import FilesystemBlobStore

OCI = "application/vnd.oci.image.manifest.v1+json"
PREFIX = "/hareg"
# etcd's per-revision overhead beside the key and value: the 17-byte revision
# key and the KeyValue protobuf's revisions, version and field tags.
REVISION_OVERHEAD = 17 + 20


def image_manifest(config: bytes, layers: Sequence[bytes], note: str) -> bytes:
    def desc(media_type: str, b: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": sha256_digest(b), "size": len(b)}

    doc = {
        "schemaVersion": 2,
        "mediaType": OCI,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", b) for b in layers],
        "annotations": {
            "org.opencontainers.image.created": "2026-12-03T14:00:00Z",
            "org.opencontainers.image.revision": note,
        },
    }
    return json.dumps(doc, indent=None).encode()


@dataclass(frozen=True, slots=True)
class Write:
    kind: str  # the key's kind letter (docs/architecture.md, etcd key layout)
    op: str  # "put" or "delete"
    key_bytes: int
    value_bytes: int

    @property
    def kept_bytes(self) -> int:
        """What etcd keeps of this revision until compaction (an estimate: see the module doc)."""
        return self.key_bytes + self.value_bytes + REVISION_OVERHEAD


class Pusher:
    def __init__(self, reg: Registry, repos: int) -> None:
        self.reg = reg
        self.base = {f"bench/app{r}": [f"base {r} {i}".encode() * 40 for i in range(3)] for r in range(repos)}

    async def _blob(self, repo: str, data: bytes) -> None:
        try:
            await self.reg.blobs.stat(repo, sha256_digest(data))  # "layer already exists"
            return
        except RegistryError:
            pass
        status = await self.reg.uploads.start(repo)
        await self.reg.uploads.finish(
            repo, status.upload_id, sha256_digest(data), one_chunk(data), length=len(data)
        )

    async def push(self, i: int) -> int:
        """Push image ``i``; returns its manifest's size."""
        repo = sorted(self.base)[i % len(self.base)]
        config = f'{{"image": {i}, "repo": "{repo}"}}'.encode()
        top = f"top layer of image {i}".encode() * 20
        layers = [*self.base[repo], top]
        for blob in (config, *layers):
            await self._blob(repo, blob)
        body = image_manifest(config, layers, f"{i:040x}")
        await self.reg.manifests.put(repo, f"v{i}", body, OCI)
        return len(body)


async def _in_use(kv: EtcdKV) -> int:
    (status,) = await kv.member_statuses()
    return status.db_size_in_use


async def _defrag(kv: EtcdKV) -> None:
    (status,) = await kv.member_statuses()
    await kv.defragment(status.address, 60.0)


async def _writes(kv: EtcdKV, start: int, end: int) -> list[Write]:
    """Every write in (start, end] under the prefix, from a watch."""
    out: list[Write] = []
    root = PREFIX.encode() + b"/"
    stream: AsyncIterator[object] = kv.watch(root, prefix_end(root), start + 1)
    async for batch in stream:
        for ev in batch.events:  # type: ignore[attr-defined]
            kind = ev.kv.key[len(root) :].split(b"/", 1)[0].decode()
            put = ev.type is EventType.PUT
            out.append(
                Write(kind, "put" if put else "delete", len(ev.kv.key), len(ev.kv.value) if put else 0)
            )
        if batch.revision >= end:  # type: ignore[attr-defined]
            break
    return out


async def measure(images: int, repos: int, workdir: Path) -> dict[str, object]:
    etcd = EtcdProcess("bytes", workdir / "etcd", auto_compaction_retention="0")
    await etcd.start(startup_timeout=60)
    try:
        kv = await EtcdKV.connect([etcd.client_url], timeout=10.0)
        reg = Registry(kv, FilesystemBlobStore(workdir / "blobs"), SystemClock(), RandomIds(), prefix=PREFIX)
        await reg.start()
        try:
            pusher = Pusher(reg, repos)
            for i in range(repos):  # the shared base layers, once per repository
                await pusher.push(i)
            await kv.compact(await kv.current_revision())
            await _defrag(kv)
            rev0, used0 = await kv.current_revision(), await _in_use(kv)
            sizes = []
            for i in range(repos, repos + images):
                before = await kv.current_revision()
                sizes.append(await pusher.push(i))
            rev1 = await kv.current_revision()
            last = await _writes(kv, before, rev1)
            used1 = await _in_use(kv)
            await kv.compact(rev1)
            await _defrag(kv)
            used2 = await _in_use(kv)
            return {
                "images": images,
                "repositories": repos,
                "manifest_bytes": sum(sizes) / len(sizes),
                "revisions_per_image": (rev1 - rev0) / images,
                "db_bytes_per_image_before_compaction": (used1 - used0) / images,
                "db_bytes_per_image_after_compaction": (used2 - used0) / images,
                "last_push": [asdict(w) | {"kept_bytes": w.kept_bytes} for w in last],
                "crossover": crossover(),
            }
        finally:
            await reg.stop()
            await kv.close()
    finally:
        await etcd.stop()


def _index(children: int, note: str) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": OCI,
                "digest": sha256_digest(f"{note} {i}".encode()),
                "size": 1000 + i,
                "platform": {"architecture": ["amd64", "arm64", "ppc64le", "s390x"][i % 4], "os": "linux"},
            }
            for i in range(children)
        ],
    }
    return json.dumps(doc).encode()


def crossover() -> list[dict[str, object]]:
    """etcd bytes of one manifest kept inline (its record with the body) or in
    the blob store (its record without the body, plus the body's blob record),
    for image manifests and indexes of growing size: where the two cross is
    where the inline limit stops saving etcd anything."""
    keys = Keys(PREFIX)
    rows: list[dict[str, object]] = []
    shapes = [("image", n) for n in (1, 2, 4, 8, 16, 32, 64, 100)] + [("index", n) for n in (2, 4, 8, 16, 64)]
    for shape, n in shapes:
        if shape == "image":
            layers = [f"layer {i}".encode() for i in range(n)]
            body = image_manifest(b"config", layers, "0" * 40)
            refs: tuple[str, ...] = tuple(sha256_digest(b) for b in [b"config", *layers])
            children: tuple[str, ...] = ()
        else:
            body = _index(n, "crossover")
            refs, children = (), tuple(d["digest"] for d in json.loads(body)["manifests"])
        record = ManifestRecord(OCI, len(body), 1.7e9, refs, children, body=body)
        key = keys.manifest("bench/app", sha256_digest(body))
        inline = len(key) + len(encode(record)) + REVISION_OVERHEAD
        outside = len(key) + len(encode(replace(record, body=None))) + REVISION_OVERHEAD
        outside += (
            len(keys.blob(sha256_digest(body)))
            + len(encode(BlobRecord(len(body), 1.7e9)))
            + REVISION_OVERHEAD
        )
        rows.append(
            {"shape": f"{shape} of {n}", "body_bytes": len(body), "inline": inline, "blob_store": outside}
        )
    return rows


def markdown(result: dict[str, object]) -> str:
    rows = result["last_push"]
    assert isinstance(rows, list)
    lines = [
        "| kind | op | key B | value B | kept until compaction B |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [
        f"| `{r['kind']}` | {r['op']} | {r['key_bytes']} | {r['value_bytes']} | {r['kept_bytes']} |"
        for r in rows
    ]
    lines.append(
        f"| **total** | {len(rows)} revisions | {sum(r['key_bytes'] for r in rows)} | "
        f"{sum(r['value_bytes'] for r in rows)} | {sum(r['kept_bytes'] for r in rows)} |"
    )
    lines += ["", "| manifest | body B | etcd B inline | etcd B in the blob store |", "|---|---:|---:|---:|"]
    cross = result["crossover"]
    assert isinstance(cross, list)
    lines += [f"| {r['shape']} | {r['body_bytes']} | {r['inline']} | {r['blob_store']} |" for r in cross]
    lines += [
        "",
        f"images: {result['images']} in {result['repositories']} repositories, "
        f"manifest {result['manifest_bytes']:.0f} B, {result['revisions_per_image']:.1f} revisions per image",
        f"etcd database per image: {result['db_bytes_per_image_before_compaction']:.0f} B before compaction, "
        f"{result['db_bytes_per_image_after_compaction']:.0f} B after",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd_bytes", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images pushed and measured (default 2000)")
    parser.add_argument("--repositories", type=int, default=10, help="repositories they go to (default 10)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repositories < 1:
        parser.error("--images and --repositories must be at least 1")
    with tempfile.TemporaryDirectory(prefix="hareg-etcd-bytes-") as tmp:
        result = asyncio.run(measure(args.images, args.repositories, Path(tmp)))
    print(markdown(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
