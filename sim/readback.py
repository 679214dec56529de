"""After the run: every stored object read back and re-hashed (invariant 3 of docs/invariants.md).

The commit-time check hashes what reaches the object store as it is
committed; this one reads every object back afterwards the way the registry
reads it — through each replica's own ``BlobStore`` client: the listing,
then each object's bytes, streamed and hashed — so a blob that was damaged
after its commit, or that a replica reads wrongly, is caught too.  Blobs and
large manifest bodies (stored under the manifest's digest) are both listed.
Then, at one instant, the metadata is held against the store: every live blob
record and every manifest record without an inline body names an object of
exactly its size (a commit that stored more bytes than were verified shows
here even if they hash right).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from hareg.kv.base import prefix_end
from hareg.metadata.keys import Keys
from hareg.metadata.records import BlobRecord, ManifestRecord, decode
from hareg.storage.base import BlobNotFound, BlobStore, StorageError
from sim.checkers import Findings
from sim.etcd_model import MVCCStore

ATTEMPTS = 3  # a storage error is retried (the run is healed: it should not happen)


async def _hash(store: BlobStore, digest: str) -> tuple[str, int]:
    """(hex digest, size) of the stored object's bytes (BlobNotFound if it is gone)."""
    algorithm = digest.partition(":")[0]
    hasher = hashlib.new(algorithm)
    size = 0
    async for chunk in store.read(digest):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


async def read_back(stores: list[tuple[str, BlobStore]], findings: Findings, now: Callable[[], float]) -> int:
    """Read every object each store lists and check its bytes hash to its name;
    returns how many objects were read."""
    checked = 0
    for name, store in stores:
        digests: list[str] | None = None
        for _ in range(ATTEMPTS):
            try:
                digests = [d async for d in store.list_blobs()]
                break
            except StorageError:
                continue
        if digests is None:
            findings.add("liveness", now(), f"read-back: {name} could not list the stored objects")
            continue
        for digest in digests:
            for attempt in range(ATTEMPTS):
                try:
                    got = await _hash(store, digest)
                except BlobNotFound:
                    break  # collected since the listing
                except StorageError as exc:
                    if attempt == ATTEMPTS - 1:
                        findings.add(
                            "liveness", now(), f"read-back: {name} could not read {digest[7:19]}: {exc}"
                        )
                    continue
                checked += 1
                if got[0] != digest.partition(":")[2]:
                    findings.add(
                        "3",
                        now(),
                        f"read-back through {name}: object {digest[7:19]} ({got[1]} bytes) hashes to {got[0][:12]}",
                    )
                break
    return checked


def check_sizes(
    store: MVCCStore, keys: Keys, stored: dict[str, bytes], findings: Findings, now: float
) -> None:
    """Every live blob record, and every manifest kept in the object store, names
    an object of exactly the size its record says (at this instant)."""
    start = keys.kind_prefix("b")
    for kv in store.live_items(start, prefix_end(start)):
        digest = keys.strip("b", kv.key)
        record = decode(BlobRecord, kv.value)
        data = stored.get(digest)
        if record.state == "live" and data is not None and len(data) != record.size:
            findings.add(
                "3", now, f"blob {digest[7:19]}: {len(data)} bytes stored, its record says {record.size}"
            )
    start = keys.kind_prefix("m")
    for kv in store.live_items(start, prefix_end(start)):
        manifest = decode(ManifestRecord, kv.value)
        if manifest.body is not None:
            continue
        digest = keys.strip("m", kv.key).split("@", 1)[1]
        data = stored.get(digest)
        if data is not None and len(data) != manifest.size:
            findings.add(
                "3",
                now,
                f"manifest body {digest[7:19]}: {len(data)} bytes stored, its record says {manifest.size}",
            )
