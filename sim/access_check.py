"""Invariant 8 of docs/invariants.md: authorization, judged from the history
and the timeline of the runtime grants in etcd.

Every request the simulated HTTP layer admitted notes its subject and what
it needed (``Env.guarded``: ``detail["subject"]``, ``detail["needs"]``).
The roles a subject holds at a point of the run are the configuration's
bindings, which never change, and the runtime grants whose etcd key exists
at that point: ``CommitMonitor`` numbers every commit of a grant key in the
history's order, so the checker knows exactly when each grant was in force,
whatever the outcome the operator was told (an unknown grant may commit
long after its client gave up, on a replica that was paused).  Then:

* **acknowledged** (any ``ok`` operation, a write or a read that returned
  something): for each need, some role allowing it was in force at some
  point between the operation's invocation and its completion.  An
  operation of several requests (a chunked upload) is judged over its whole
  span; a request with two needs (a mount: push here, pull there) need by
  need;
* **refused by the access check** (``detail["refused"]``): some need was
  *not* allowed at some point of the request (a refusal while every need
  was allowed throughout is a wrong 401/403);
* a request whose grants were read from the cache while etcd was unreachable
  (``detail["access_stale"]``: ``ReadBarrier.sync`` reported STALE) is
  judged only when it wrote: a read served then may use grants as they
  were when the replica last heard from etcd (as a stale read may return a
  tag as it was, docs/consistency.md), but a write reaches etcd, and must
  not be acknowledged on a role revoked before the request began;
* (7) an acknowledged grant that changed something wrote its key during the
  request, one that changed nothing found it there; an acknowledged revoke
  saw the key absent at some point of the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hareg.metadata.keys import Keys
from hareg.metadata.records import GrantRecord, decode
from hareg.registry import authz
from hareg.registry.authz import Binding, Role
from sim import history as h
from sim.checkers import CommitMonitor, Findings, _absent, _present, _values_during, _written
from sim.history import History, Operation

__all__ = ["check_access", "check_access_changes"]

Timeline = list[tuple[int, bytes | None]]


@dataclass(frozen=True, slots=True)
class _Grant:
    binding: Binding
    timeline: Timeline


def _grants_by_subject(monitor: CommitMonitor, keys: Keys) -> dict[str, list[_Grant]]:
    prefix = keys.kind_prefix("g")
    out: dict[str, list[_Grant]] = {}
    for key, timeline in monitor.timeline.items():
        if not key.startswith(prefix):
            continue
        record = next(decode(GrantRecord, v) for _, v in timeline if v is not None)
        try:
            role = Role(record.role)
        except ValueError:
            continue
        out.setdefault(record.subject, []).append(
            _Grant(Binding(record.subject, role, (record.pattern,)), timeline)
        )
    return out


def _parse(text: str) -> tuple[str, str | None]:
    """A need as ``Env.guarded`` notes it -> (action, repository or None)."""
    action, _, repo = text.partition(":")
    return action, repo or None


def _config_allows(config: tuple[Binding, ...], subject: str, action: str, repo: str | None) -> bool:
    if action == "login":
        return subject != authz.ANONYMOUS
    if action == "browse":
        return True  # filtered per repository; nothing to judge
    return authz.allowed(config, subject, action, repo)


def _granted(
    grants: Iterable[_Grant], action: str, repo: str | None, span: tuple[int, int]
) -> tuple[bool, bool]:
    """(allowed at some point of ``span``, allowed throughout it) by runtime grants."""
    some = every = False
    for grant in grants:
        if not authz.allowed((grant.binding,), grant.binding.subject, action, repo):
            continue
        values = _values_during(grant.timeline, *span)
        some = some or _present(values)
        every = every or not _absent(values)
    return some, every


def _describe(op: Operation) -> str:
    what = f"{op.repo}{':' + op.tag if op.tag else ''}{'@' + op.digest[7:19] if op.digest else ''}"
    return f"op {op.id} {op.kind} {what} on {op.replica} by {op.detail.get('subject')}"


def check_access(
    history: History, monitor: CommitMonitor, keys: Keys, config: tuple[Binding, ...], findings: Findings
) -> int:
    """Invariant 8; returns how many operations were judged."""
    grants = _grants_by_subject(monitor, keys)
    judged = 0
    for op in history.ops:
        needs_text = op.detail.get("needs")
        if not needs_text or op.complete_seq is None:
            continue
        refused = op.detail.get("refused") == "access"
        if not (op.ok or refused):
            continue
        if op.detail.get("access_stale") and (refused or op.kind in READS):
            continue
        subject = op.detail["subject"]
        span = (op.invoke_seq, op.complete_seq)
        judged += 1
        lacking, held = [], []
        for text in needs_text.split(" "):
            action, repo = _parse(text)
            if _config_allows(config, subject, action, repo):
                held.append(text)
                continue
            some, every = _granted(grants.get(subject, ()), action, repo, span)
            if not some:
                lacking.append(text)
            if every:
                held.append(text)
        if op.ok and lacking:
            findings.add(
                "8",
                op.complete_time or 0.0,
                f"{_describe(op)} acknowledged, but {subject} held no role allowing "
                f"{', '.join(lacking)} at any point of the request",
            )
        elif refused and len(held) == len(needs_text.split(" ")):
            findings.add(
                "8",
                op.complete_time or 0.0,
                f"{_describe(op)} refused ({op.detail.get('code', '?')}), but {subject} held roles allowing "
                f"{needs_text} throughout the request",
            )
    return judged


# Operations that only read (a stale access view may serve them, as a stale read).
READS = frozenset(
    {h.TAG_READ, h.DIGEST_READ, h.BLOB_HEAD, h.REF_CHECK, h.LIST_TAGS, "blob_get", "upload_status"}
)


def check_access_changes(history: History, monitor: CommitMonitor, keys: Keys, findings: Findings) -> None:
    """Invariant 7 for grants and revokes: what was acknowledged was in etcd during the request."""
    for op in history.ops:
        if op.kind not in (h.GRANT, h.REVOKE) or not op.ok or op.complete_seq is None:
            continue
        key = keys.grant(op.detail["grantee"], op.detail["role"], op.detail["pattern"])
        values = _values_during(monitor.timeline.get(key, []), op.invoke_seq, op.complete_seq)
        if op.kind == h.GRANT:
            holds = _written(values) if op.found else _present(values)
        else:
            holds = _absent(values)
        if not holds:
            findings.add(
                "7",
                op.complete_time or 0.0,
                f"op {op.id} {op.kind} of {op.detail['role']} on {op.detail['pattern']} to "
                f"{op.detail['grantee']} acknowledged ({'changed' if op.found else 'unchanged'}), "
                "but etcd never held that during the request",
            )
