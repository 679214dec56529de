"""The access checker (invariant 8) catches what it claims to, and nothing else."""

from __future__ import annotations

from hareg.kv.base import Delete, Put
from hareg.metadata.keys import Keys
from hareg.metadata.records import GrantRecord, encode
from hareg.registry.authz import Binding, Role
from sim import history as h
from sim.access_check import check_access, check_access_changes
from sim.checkers import CommitMonitor, Findings
from sim.etcd_model import MVCCStore
from sim.history import History, Operation, Outcome
from sim.trace import Trace

K = Keys("/hareg")
DANA = "robot+dana"
CONFIG = (
    Binding("robot+alice", Role.EDITOR, ("team0/*",)),
    Binding("anonymous", Role.VIEWER, ("team1/app",)),
)


class World:
    def __init__(self) -> None:
        self.store = MVCCStore()
        self.findings = Findings()
        self.history = History(lambda: 0.0, Trace(lambda: 0.0))
        self.monitor = CommitMonitor(self.store, K, lambda: 0.0, lambda: self.history.seq, self.findings)

    def grant(self, subject: str, role: str, pattern: str) -> None:
        record = GrantRecord(subject, role, pattern, 0.0, "robot+ops", "w")
        self.store.txn([], [Put(K.grant(subject, role, pattern), encode(record))], [])

    def revoke(self, subject: str, role: str, pattern: str) -> None:
        self.store.txn([], [Delete(K.grant(subject, role, pattern))], [])

    def begin(
        self, subject: str, needs: str, kind: str = h.BLOB_UPLOAD, repo: str = "team0/app"
    ) -> Operation:
        op = self.history.invoke("c0", kind, repo, "r0")
        op.detail.update(subject=subject, needs=needs)
        return op

    def check(self) -> list[str]:
        check_access(self.history, self.monitor, K, CONFIG, self.findings)
        return [v.message for v in self.findings.violations if v.invariant == "8"]


def test_an_acknowledged_write_needs_a_role_in_force_at_some_point_of_the_request() -> None:
    w = World()
    before = w.begin(DANA, "push:team0/app")  # no role at all
    w.history.complete(before, Outcome.OK)
    w.grant(DANA, "editor", "team0/*")
    during = w.begin(DANA, "push:team0/app")
    w.revoke(DANA, "editor", "team0/*")  # revoked during the request: it held the role before
    w.history.complete(during, Outcome.OK)
    after = w.begin(DANA, "push:team0/app")  # revoked before the request began
    w.history.complete(after, Outcome.OK)
    racing = w.begin(DANA, "push:team0/app")
    w.grant(DANA, "admin", "*")  # granted during the request: it may have been admitted after
    w.history.complete(racing, Outcome.OK)
    refused = w.begin(DANA, "push:team0/app")  # refused while not held: nothing wrong
    w.history.complete(refused, Outcome.FAIL)
    messages = w.check()
    assert len(messages) == 2, messages
    assert (
        messages[0].startswith(f"op {before.id} ") and "held no role allowing push:team0/app" in messages[0]
    )
    assert messages[1].startswith(f"op {after.id} ")


def test_a_read_needs_pull_and_the_role_must_cover_the_repository() -> None:
    w = World()
    w.grant(DANA, "viewer", "team1/app")
    read = w.begin(DANA, "pull:team1/app", h.TAG_READ, "team1/app")
    w.history.complete(read, Outcome.OK)
    wrong_repo = w.begin(DANA, "pull:team0/app", h.TAG_READ)
    w.history.complete(wrong_repo, Outcome.OK)
    write = w.begin(DANA, "push:team1/app", repo="team1/app")  # a viewer may not push
    w.history.complete(write, Outcome.OK)
    anonymous = w.begin("anonymous", "pull:team1/app", h.TAG_READ, "team1/app")  # the configuration's
    w.history.complete(anonymous, Outcome.OK)
    messages = w.check()
    assert [m.split(" ")[1] for m in messages] == [str(wrong_repo.id), str(write.id)], messages


def test_a_mount_needs_both_push_and_pull_on_the_source() -> None:
    w = World()
    w.grant(DANA, "editor", "team0/*")
    mount = w.begin(DANA, "pull:team1/app push:team0/app", h.BLOB_MOUNT)
    w.history.complete(mount, Outcome.OK)
    messages = w.check()
    assert len(messages) == 1 and "pull:team1/app" in messages[0] and "push:team0/app" not in messages[0]


def test_a_refusal_while_every_role_was_held_throughout_is_caught() -> None:
    w = World()
    w.grant(DANA, "editor", "team0/*")
    wrong = w.begin(DANA, "push:team0/app")
    wrong.detail.update(refused="access", code="DENIED")
    w.history.complete(wrong, Outcome.FAIL)
    racing = w.begin(DANA, "push:team0/app")
    racing.detail.update(refused="access", code="DENIED")
    w.revoke(DANA, "editor", "team0/*")  # revoked during the request: the refusal may be right
    w.history.complete(racing, Outcome.FAIL)
    config = w.begin("robot+alice", "push:team0/app")
    config.detail.update(refused="access", code="DENIED")  # the configuration lets alice push
    w.history.complete(config, Outcome.FAIL)
    anonymous = w.begin("anonymous", "login")  # anonymous is never logged in: a right 401
    anonymous.detail.update(refused="access", code="UNAUTHORIZED")
    w.history.complete(anonymous, Outcome.FAIL)
    messages = w.check()
    assert [m.split(" ")[1] for m in messages] == [str(wrong.id), str(config.id)], messages
    assert "refused (DENIED)" in messages[0]


def test_a_stale_view_excuses_reads_and_refusals_but_never_an_acknowledged_write() -> None:
    w = World()
    read = w.begin(DANA, "pull:team0/app", h.TAG_READ)
    read.detail["access_stale"] = "1"
    w.history.complete(read, Outcome.OK)
    refusal = w.begin("robot+alice", "push:team0/app")
    refusal.detail.update(access_stale="1", refused="access", code="DENIED")
    w.history.complete(refusal, Outcome.FAIL)
    write = w.begin(DANA, "push:team0/app")
    write.detail["access_stale"] = "1"
    w.history.complete(write, Outcome.OK)
    messages = w.check()
    assert len(messages) == 1 and messages[0].startswith(f"op {write.id} "), messages


def test_an_acknowledged_grant_or_revoke_must_have_been_in_etcd_during_the_request() -> None:
    w = World()

    def change(kind: str, changed: bool, apply: bool) -> Operation:
        op = w.history.invoke("op", kind, "", "r0")
        op.detail.update(grantee=DANA, role="editor", pattern="team0/*")
        if apply:
            (w.grant if kind == h.GRANT else w.revoke)(DANA, "editor", "team0/*")
        w.history.complete(op, Outcome.OK, found=changed)
        return op

    change(h.GRANT, True, True)  # fine
    unchanged = change(h.GRANT, False, False)  # it was there already: fine
    change(h.REVOKE, True, True)  # fine
    never = change(h.GRANT, True, False)  # acknowledged, never written
    change(h.REVOKE, False, False)  # not there: fine
    w.grant(DANA, "editor", "team0/*")
    stayed = change(h.REVOKE, True, False)  # acknowledged, the key stayed
    check_access_changes(w.history, w.monitor, K, w.findings)
    messages = [v.message for v in w.findings.violations]
    assert [v.invariant for v in w.findings.violations] == ["7", "7"], messages
    assert messages[0].startswith(f"op {never.id} ") and messages[1].startswith(f"op {stayed.id} ")
    assert unchanged.ok
