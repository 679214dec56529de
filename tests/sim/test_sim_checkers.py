"""The commit-time checkers catch what they claim to, and nothing else."""

from __future__ import annotations

from hareg.kv.base import Delete, Put
from hareg.metadata.keys import Keys
from hareg.metadata.records import (
    BlobRecord,
    HistoryEntry,
    LinkRecord,
    ManifestRecord,
    TagRecord,
    TagSeqRecord,
    encode,
)
from sim.checkers import CommitMonitor, Findings
from sim.etcd_model import MVCCStore

K = Keys("/hareg")
R = "team/app"
B = "sha256:" + "b" * 64
M = "sha256:" + "m" * 64
N = "sha256:" + "n" * 64


def monitored() -> tuple[MVCCStore, Findings]:
    store = MVCCStore()
    findings = Findings()
    CommitMonitor(store, K, lambda: 0.0, lambda: 0, findings)
    return store, findings


def blob(store: MVCCStore, digest: str = B, state: str = "live") -> None:
    store.txn(
        [],
        [
            Put(K.blob(digest), encode(BlobRecord(1, 0.0, state))),
            Put(K.link(R, digest), encode(LinkRecord(1, 0.0))),
        ],
        [],
    )


def manifest(
    store: MVCCStore, digest: str = M, blobs: tuple[str, ...] = (B,), children: tuple[str, ...] = ()
) -> None:
    record = ManifestRecord(
        "application/vnd.oci.image.manifest.v1+json", 10, 0.0, blobs=blobs, manifests=children
    )
    store.txn([], [Put(K.manifest(R, digest), encode(record))], [])


def move(store: MVCCStore, tag: str, seq: int, old: str | None, new: str | None) -> None:
    ops = [
        Put(K.tag_seq(R, tag), encode(TagSeqRecord(seq))),
        Put(K.history(R, tag, seq), encode(HistoryEntry(seq, 0.0, old, new, "r0", "push"))),
    ]
    ops.append(
        Put(K.tag(R, tag), encode(TagRecord(new, seq, 0.0, "r0", "w"))) if new else Delete(K.tag(R, tag))
    )
    store.txn([], ops, [])


def kinds(findings: Findings) -> list[str]:
    return [v.invariant for v in findings.violations]


def test_a_correct_sequence_has_no_violation() -> None:
    store, findings = monitored()
    blob(store)
    manifest(store)
    move(store, "v1", 1, None, M)
    manifest(store, N, blobs=(B,))
    move(store, "v1", 2, M, N)
    move(store, "v1", 3, N, None)
    store.txn([], [Delete(K.manifest(R, M)), Delete(K.manifest(R, N))], [])
    store.txn([], [Delete(K.link(R, B))], [])
    store.txn([], [Put(K.blob(B), encode(BlobRecord(1, 0.0, "deleting")))], [])
    store.txn([], [Delete(K.blob(B))], [])
    assert findings.violations == []


def test_reachability_violations_are_invariant_2() -> None:
    store, findings = monitored()
    manifest(store)  # its blob is not linked
    assert kinds(findings) == ["2"]
    blob(store)
    manifest(store, N, children=(M,))
    move(store, "v1", 1, None, M)
    store.txn([], [Delete(K.link(R, B))], [])  # a manifest still uses it
    store.txn([], [Delete(K.manifest(R, M))], [])  # a tag and an index still reach it
    assert kinds(findings) == ["2", "2", "2", "2"]


def test_a_blob_claimed_while_linked_is_invariant_6() -> None:
    store, findings = monitored()
    blob(store)
    store.txn([], [Put(K.blob(B), encode(BlobRecord(1, 0.0, "deleting")))], [])
    store.txn([], [Put(K.link("other/app", B), encode(LinkRecord(1, 0.0)))], [])  # a link to a dying blob
    assert kinds(findings) == ["6", "6"]


def test_history_that_does_not_move_forward_is_invariant_5() -> None:
    store, findings = monitored()
    blob(store)
    manifest(store)
    manifest(store, N)
    move(store, "v1", 1, None, M)
    move(store, "v1", 1, M, N)  # the same sequence number again (a lost update)
    assert "5" in kinds(findings)
    store2, findings2 = monitored()
    blob(store2)
    manifest(store2)
    store2.txn([], [Put(K.tag(R, "v1"), encode(TagRecord(M, 1, 0.0, "r0", "w")))], [])  # no history entry
    assert kinds(findings2) == ["5"]
