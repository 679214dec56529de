"""The commit-time checkers catch what they claim to, and nothing else."""

from __future__ import annotations

import hashlib

from hareg.kv.base import Delete, Put
from hareg.metadata.keys import Keys
from hareg.metadata.records import (
    BlobRecord,
    HistoryEntry,
    ImmutabilityRecord,
    LinkRecord,
    ManifestRecord,
    TagRecord,
    TagSeqRecord,
    encode,
)
from sim import history as h
from sim.checkers import (
    CommitMonitor,
    Findings,
    StorageMonitor,
    check_immutable_refusals,
    check_inflight_pushes,
    check_linearizability,
    check_once,
    check_read_only,
    check_tag_lists,
    check_tag_pushes,
    register_ops,
)
from sim.etcd_model import MVCCStore
from sim.history import History, Outcome
from sim.trace import Trace

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


# -- immutable tags -----------------------------------------------------------------------


def rule(store: MVCCStore, *patterns: str) -> None:
    if patterns:
        store.txn([], [Put(K.immutability(R), encode(ImmutabilityRecord(patterns, 0.0, "r0", "w")))], [])
    else:
        store.txn([], [Delete(K.immutability(R))], [])


def test_an_immutable_tag_that_moves_or_goes_is_caught_at_the_commit() -> None:
    store, findings = monitored()
    blob(store)
    manifest(store)
    manifest(store, N)
    rule(store, "v*")
    move(store, "v1", 1, None, M)  # created under the rule: allowed
    move(store, "dev", 1, None, M)
    move(store, "dev", 2, M, N)  # not covered
    assert findings.violations == []
    move(store, "v1", 2, M, N)  # moved while covered
    move(store, "v1", 3, N, None)  # deleted while covered
    assert kinds(findings) == ["immutable", "immutable"]
    rule(store)  # cleared: it may move again
    move(store, "v1", 4, None, M)
    assert kinds(findings) == ["immutable", "immutable"]


def world_with_history() -> tuple[MVCCStore, Findings, CommitMonitor, History]:
    store = MVCCStore()
    findings = Findings()
    history = History(lambda: 0.0, Trace(lambda: 0.0))
    monitor = CommitMonitor(store, K, lambda: 0.0, lambda: history.seq, findings)
    return store, findings, monitor, history


def refused_push(history: History, digest: str, pattern: str, code: str = "DENIED") -> None:
    op = history.invoke("c0", h.TAG_WRITE, R, "r0", tag="v1", digest=digest)
    op.detail.update(code=code, pattern=pattern, denied_tag="v1")
    history.complete(op, Outcome.FAIL, error=f"409 {code}")


def test_a_refusal_as_immutable_needs_a_covering_rule_and_an_existing_tag() -> None:
    store, findings, monitor, history = world_with_history()
    blob(store)
    manifest(store)
    manifest(store, N)
    refused_push(history, N, "v1")  # no rule, no tag: wrongly refused
    move(store, "v1", 1, None, M)
    refused_push(history, N, "v1")  # a tag, but no rule
    rule(store, "v1")
    refused_push(history, M, "v1")  # the tag already names M: not a move
    refused_push(history, N, "v1")  # rightly refused
    check_immutable_refusals(history, monitor, K, findings)
    assert [v.message.split()[1] for v in findings.violations] == ["0", "1", "2"]


def test_refused_writes_are_not_applied_for_linearizability() -> None:
    _, findings, _, history = world_with_history()
    write = history.invoke("c0", h.TAG_WRITE, R, "r0", tag="v1", digest=M)
    history.complete(write, Outcome.OK)
    refused_push(history, N, "v1")
    assert [r.value for r in register_ops(history)[(R, "v1")]] == [M]
    read = history.invoke("c1", h.TAG_READ, R, "r1", tag="v1")
    history.complete(read, Outcome.OK, value=N)  # sees the refused write: not linearizable
    check_linearizability(history, findings)
    assert kinds(findings) == ["linearizability"]


def test_a_referrers_entry_must_not_outlive_its_manifest() -> None:
    store = MVCCStore()
    findings = Findings()
    CommitMonitor(store, K, lambda: 0.0, lambda: 0, findings)
    blob(store)
    manifest(store)
    subject = "sha256:" + "s" * 64
    store.txn([], [Put(K.referrer(R, subject, M), b"r")], [])
    assert findings.violations == []
    store.txn([], [Delete(K.manifest(R, M))], [])  # a batch without the referrers entry
    store.txn([], [Delete(K.referrer(R, subject, M))], [])
    store.txn([], [Put(K.referrer(R, subject, N), b"r")], [])  # an entry naming a missing manifest
    assert kinds(findings) == ["2", "2"]
    assert "referrers index names it" in findings.violations[0].message
    manifest(store)
    store.txn([], [Delete(K.manifest(R, M)), Delete(K.referrer(R, subject, N))], [])  # together: fine
    assert len(findings.violations) == 2


# -- tag pushes ---------------------------------------------------------------------------


def test_a_tag_push_whose_transaction_left_the_tag_elsewhere_is_caught() -> None:
    """A re-push of the tag's current manifest committed (re-writing the manifest)
    after a DELETE took the tag: acknowledged, yet its transaction left no tag."""
    store, findings, monitor, history = world_with_history()
    blob(store)
    manifest(store)
    move(store, "v1", 1, None, M)
    kept = history.invoke("c0", h.TAG_WRITE, R, "r0", tag="v1", digest=M)
    kept_rev = store.revision  # a re-push whose transaction found the tag in place
    history.complete(kept, Outcome.OK)
    lost = history.invoke("c0", h.TAG_WRITE, R, "r0", tag="v1", digest=M)
    move(store, "v1", 2, M, None)  # the DELETE by digest took the tag
    manifest(store)  # the re-push's transaction, without the tag
    history.complete(lost, Outcome.OK)
    check_tag_pushes(history, monitor, K, {kept.id: kept_rev, lost.id: store.revision}, findings)
    assert kinds(findings) == ["7"]
    assert f"op {lost.id} " in findings.violations[0].message


# -- one request, applied once ------------------------------------------------------------


def test_one_request_applied_twice_is_caught_for_every_kind_of_key() -> None:
    """A tag push whose first attempt applied late and whose re-send (taken for
    a conflict) applied again; an upload whose link was made twice; another
    request's writes and a HEAD's touches of the same keys are not counted."""
    store, findings, monitor, history = world_with_history()
    ops: dict[int, int] = {}  # revision -> operation, as EtcdCluster.commit_ops

    def by(op_id: int, *writes: Put | Delete) -> None:
        ops[store.txn([], list(writes), []).revision] = op_id

    push = history.invoke("c0", h.TAG_WRITE, R, "r0", tag="v1", digest=M)
    upload = history.invoke("c1", h.BLOB_UPLOAD, R, "r1", digest=B)
    other = history.invoke("c2", h.BLOB_HEAD, R, "r2", digest=B)
    by(upload.id, Put(K.blob(B), encode(BlobRecord(1, 1.0))), Put(K.link(R, B), encode(LinkRecord(1, 1.0))))
    by(other.id, Put(K.link(R, B), encode(LinkRecord(1, 1.0, 2.0))))  # a touch: not a new link
    manifest(store)
    for seq in (1, 2):  # the late first attempt, then the retry on a fresh read
        by(
            push.id,
            Put(K.tag(R, "v1"), encode(TagRecord(M, seq, 0.0, "r0", f"w{seq}"))),
            Put(K.tag_seq(R, "v1"), encode(TagSeqRecord(seq))),
            Put(K.history(R, "v1", seq), encode(HistoryEntry(seq, 0.0, (None, M)[seq - 1], M, "r0", "push"))),
        )
    by(other.id, Put(K.link(R, B), encode(LinkRecord(1, 1.0, 3.0))))
    check_once(history, monitor, ops, findings)
    assert kinds(findings) == ["7"] * 3
    assert sorted(v.message.split(": ", 1)[1].split(" 2 times")[0] for v in findings.violations) == [
        "history entry appended",
        "tag sequence advanced",
        "tag written",
    ]
    findings.violations.clear()
    by(upload.id, Put(K.link(R, B), encode(LinkRecord(1, 4.0))))  # the upload's link made again
    by(upload.id, Delete(K.upload("u1")))  # deleting nothing is no event
    check_once(history, monitor, ops, findings)
    assert [
        v.message.split(": ", 1)[1].split(" for ")[0]
        for v in findings.violations
        if "blob_upload" in v.message
    ] == ["link made 2 times"]


# -- the read-only switch -----------------------------------------------------------------


def switch(store: MVCCStore, on: bool) -> int:
    value = b'{"readOnly": %s, "changedAt": "", "replica": "r0"}' % (b"true" if on else b"false")
    return store.txn([], [Put(K.setting("read-only"), value)], []).revision


def write_op(history: History, view: str | None, kind: str = h.TAG_WRITE) -> None:
    op = history.invoke("c0", kind, R, "r0", tag="v1", digest=M)
    if view is not None:
        op.detail["ro"] = view
    history.complete(op, Outcome.OK)


def test_a_write_acknowledged_while_read_only_is_caught_even_if_the_replica_lagged() -> None:
    store, findings, monitor, history = world_with_history()
    before = store.revision
    write_op(history, f"{before}:0:{history.seq}")  # writable: fine
    on = switch(store, True)
    # The replica had not seen it: still caught, the switch is a compare in every write.
    write_op(history, f"{before}:0:{history.seq}")
    write_op(history, f"{on}:0:{history.seq}", h.MANIFEST_DELETE)  # it had (and its view is wrong)
    write_op(history, None, h.BLOB_UPLOAD)  # never passed the test
    missed = history.invoke("c0", h.TAG_DELETE, R, "r0", tag="v9")
    history.complete(missed, Outcome.OK, found=False)  # a 404 wrote nothing: fine
    read = history.invoke("c1", h.TAG_READ, R, "r0", tag="v1")
    read.detail["read_only"] = "refused"
    history.complete(read, Outcome.FAIL, error="405 UNSUPPORTED")
    switch(store, False)
    write_op(history, f"{store.revision}:0:{history.seq}")  # writable again: fine
    check_read_only(history, monitor, findings)
    messages = [v.message for v in findings.violations]
    assert kinds(findings) == ["read-only"] * 5, messages
    assert "op 1 " in messages[0] and "acknowledged while the registry was read-only" in messages[0]
    assert "op 2 " in messages[1] and "saw read-only off" in messages[1]
    assert "op 2 " in messages[2] and "op 3 " in messages[3] and "refused as read-only" in messages[4]


def test_a_write_that_began_before_the_switch_may_be_acknowledged() -> None:
    store, findings, monitor, history = world_with_history()
    op = history.invoke("c0", h.TAG_WRITE, R, "r0", tag="v1", digest=M)
    op.detail["ro"] = f"{store.revision}:0:{history.seq}"
    switch(store, True)
    history.complete(op, Outcome.OK)
    check_read_only(history, monitor, findings)
    assert findings.violations == []


# -- manifests stored as blobs ------------------------------------------------------------


def test_a_large_manifests_bytes_must_be_stored_and_kept() -> None:
    store = MVCCStore()
    findings = Findings()
    monitor = CommitMonitor(store, K, lambda: 0.0, lambda: 0, findings)
    storage = StorageMonitor(store, K, lambda: 0.0, findings, monitor)
    blob(store)
    record = ManifestRecord("application/vnd.oci.image.manifest.v1+json", 300_000, 0.0, blobs=(B,), body=None)
    store.txn([], [Put(K.manifest(R, M), encode(record))], [])  # its bytes were never stored
    assert kinds(findings) == ["2"]
    body = b'{"schemaVersion": 2}'
    big = "sha256:" + hashlib.sha256(body).hexdigest()
    storage.on_blob_commit(big, body)
    store.txn([], [Put(K.manifest(R, big), encode(record))], [])
    assert kinds(findings) == ["2"]
    storage.on_blob_delete(big)  # deleted while the record needs them
    assert kinds(findings) == ["2", "2"]


# -- tag lists ----------------------------------------------------------------------------


def listing(history: History, tags: list[str], *, stale: bool = False) -> None:
    op = history.invoke("c0", h.LIST_TAGS, R, "r0")
    op.detail["tags"] = ",".join(tags)
    history.complete(op, Outcome.OK, stale=stale)


def test_a_tag_list_names_the_tags_that_existed_throughout_and_no_absent_one() -> None:
    store, findings, monitor, history = world_with_history()
    blob(store)
    manifest(store)
    move(store, "v1", 1, None, M)
    listing(history, ["v1"])  # right
    listing(history, [])  # lacks v1
    listing(history, ["v1", "v2"])  # v2 never existed
    listing(history, [], stale=True)  # stale lists are exempt
    op = history.invoke("c0", h.LIST_TAGS, R, "r0")
    move(store, "v1", 2, M, None)  # deleted during this request: either answer is right
    op.detail["tags"] = ""
    history.complete(op, Outcome.OK)
    listing(history, ["v1"])  # after the delete: names an absent tag
    check_tag_lists(history, monitor, K, findings)
    messages = [v.message for v in findings.violations]
    assert kinds(findings) == ["4"] * 3, messages
    assert "op 1:" in messages[0] and "lacks v1" in messages[0]
    assert "op 2:" in messages[1] and "names v2" in messages[1]
    assert "op 5:" in messages[2] and "names v1" in messages[2]


# -- pushes in flight -----------------------------------------------------------------


def refused_for_missing(history: History, confirmed: dict[str, str]) -> None:
    op = history.invoke("c0", h.TAG_WRITE, R, "r0", tag="v1", digest=M)
    op.detail["missing"] = B
    for name, when in confirmed.items():
        op.detail[name] = f"{B}={when}"
    history.complete(op, Outcome.FAIL, error="400 MANIFEST_BLOB_UNKNOWN")


def test_a_push_undercut_within_its_guarantee_is_invariant_6() -> None:
    """An uploaded blob is guarded for the grace window, one found by a HEAD for
    half of it (docs/gc.md, G2b), unless a client deleted it meanwhile."""
    clock = [10.0]
    history = History(lambda: clock[0], Trace(lambda: clock[0]))
    findings = Findings()
    refused_for_missing(history, {"confirmed": "2.0"})  # uploaded 8 s before: within 9
    refused_for_missing(history, {"confirmed_head": "2.0"})  # HEAD 8 s before: past 4
    refused_for_missing(history, {"confirmed_head": "7.0"})  # HEAD 3 s before: within 4
    delete = history.invoke("c1", h.BLOB_DELETE, R, "r1", digest=B)
    history.complete(delete, Outcome.OK, found=True)
    refused_for_missing(history, {"confirmed": "9.0"})  # the client's own delete: fine
    check_inflight_pushes(history, findings, grace=9.0, head_grace=4.0, keep_younger=9.0)
    messages = [v.message for v in findings.violations]
    assert kinds(findings) == ["6", "6"], messages
    assert messages[0].startswith("op 0:") and "guarded for 9s" in messages[0]
    assert messages[1].startswith("op 2:") and "guarded for 4s" in messages[1]


def test_a_push_that_reached_its_replica_after_the_window_is_not_guarded() -> None:
    """Seed 352: a manifest PUT sent 0.16 s after its upload waited 12.8 s on a
    paused replica, past the 11.7 s grace window; the blobs were collected
    meanwhile, as docs/gc.md allows.  The window runs to the refusal."""
    clock = [1.86]
    history = History(lambda: clock[0], Trace(lambda: clock[0]))
    findings = Findings()
    late = history.invoke("c0", h.MANIFEST_PUT, R, "r2", digest=M)
    late.detail.update(missing=B, confirmed=f"{B}=1.7")
    soon = history.invoke("c1", h.MANIFEST_PUT, R, "r1", digest=M)
    soon.detail.update(missing=B, confirmed=f"{B}=1.7")
    clock[0] = 5.0
    history.complete(soon, Outcome.FAIL, error="400 MANIFEST_BLOB_UNKNOWN")  # 3.3 s after: within
    clock[0] = 14.65
    history.complete(late, Outcome.FAIL, error="400 MANIFEST_BLOB_UNKNOWN")
    check_inflight_pushes(history, findings, grace=6.7, head_grace=3.0, keep_younger=9.0)
    messages = [v.message for v in findings.violations]
    assert kinds(findings) == ["6"] and messages[0].startswith(f"op {soon.id}:"), messages
