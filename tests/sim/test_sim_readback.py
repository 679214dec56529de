"""The read-back checker: every stored object re-read through a replica's store
client and re-hashed; every record's size held against the stored bytes."""

from __future__ import annotations

import asyncio
import hashlib
import random

from hareg.kv.base import Put
from hareg.metadata.keys import Keys
from hareg.metadata.records import BlobRecord, ManifestRecord, encode
from sim.checkers import Findings
from sim.etcd_model import MVCCStore
from sim.loop import SimLoop, run
from sim.network import Network
from sim.readback import check_sizes, read_back
from sim.storage_model import ObjectStore, SimBlobStore
from sim.trace import Trace

K = Keys("/hareg")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_back(damage: bool) -> tuple[int, Findings]:
    """Three objects stored (one of them large: a manifest body is stored the
    same way), read back through two replicas' clients; ``damage`` flips a
    byte of one after its commit, as a failing disk would."""

    async def main() -> tuple[int, Findings]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        trace = Trace(loop.time)
        net = Network(loop, random.Random(1), trace)
        server = ObjectStore(loop, random.Random(2), trace, epoch=0.0)
        objects = [b"config", b"layer" * 100, b"m" * (300 * 1024)]
        for data in objects:
            server.blobs[digest(data)] = data
        if damage:
            victim = digest(objects[1])
            server.blobs[victim] = b"L" + server.blobs[victim][1:]
        findings = Findings()
        stores = [(name, SimBlobStore(server, net, name)) for name in ("r0", "r1")]
        checked = await read_back(list(stores), findings, loop.time)
        return checked, findings

    return run(main())[0]


def test_clean_objects_read_back_without_a_finding() -> None:
    checked, findings = _read_back(damage=False)
    assert checked == 6  # three objects through each of two replicas
    assert findings.violations == []


def test_a_damaged_stored_object_is_invariant_3_through_every_replica() -> None:
    checked, findings = _read_back(damage=True)
    assert checked == 6
    assert [v.invariant for v in findings.violations] == ["3", "3"]
    assert "read-back through r0" in findings.violations[0].message
    assert "read-back through r1" in findings.violations[1].message


def test_a_record_whose_size_differs_from_the_stored_bytes_is_invariant_3() -> None:
    store = MVCCStore()
    good, bad, body = b"exact", b"verified+appended", b"{}" * 10
    store.txn(
        [],
        [
            Put(K.blob(digest(good)), encode(BlobRecord(len(good), 0.0))),
            # A commit that stored more than the verified 8 bytes under their digest.
            Put(K.blob(digest(bad)), encode(BlobRecord(8, 0.0))),
            Put(K.manifest("team/app", digest(body)), encode(ManifestRecord("x", len(body) - 1, 0.0))),
            # Being collected: its bytes may already be gone or going.
            Put(K.blob(digest(b"gone")), encode(BlobRecord(99, 0.0, "deleting"))),
        ],
        [],
    )
    stored = {digest(good): good, digest(bad): bad, digest(body): body, digest(b"gone"): b"gone"}
    findings = Findings()
    check_sizes(store, K, stored, findings, 1.0)
    messages = [v.message for v in findings.violations]
    assert [v.invariant for v in findings.violations] == ["3", "3"]
    assert f"blob {digest(bad)[7:19]}: {len(bad)} bytes stored, its record says 8" in messages
    assert any(m.startswith(f"manifest body {digest(body)[7:19]}") for m in messages)
