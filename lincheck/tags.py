"""A client history of tag writes and reads, checked tag by tag.

Each tag is a register (:mod:`lincheck.register`): a write sets the digest it
names, a read must see the digest it names then (``None``: no such tag).
Operations carry the positions of their call and return in one real-time
order (a counter bumped at every call and every return the recorder sees):

* a write or read that **failed** (the server certainly did nothing: a 4xx, a
  refused connection) is left out;
* a write of **unknown** outcome (a 5xx, a timeout, a reset) has no return: it
  may take effect at any point after its call, or never;
* a read of unknown outcome told the client nothing and is left out;
* a read marked **exempt** was answered when the registry may serve from its
  cache without a quorum read (etcd unreachable, by design: docs/consistency.md):
  it is not linearized, but what it returned must be a digest some write of
  that tag had started before the read returned (a stale value, never a
  made-up one).

This is the bookkeeping the simulator's checker does for its own history
(``sim/checkers.py``), for a history recorded anywhere else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from lincheck import register as reg

WRITE = "write"
READ = "read"


@dataclass(frozen=True, slots=True)
class TagOp:
    id: int
    kind: str  # WRITE or READ
    repo: str
    tag: str
    value: str | None  # the digest written, or read (None: the tag did not exist)
    call: int
    ret: int | None  # None: the outcome is unknown
    failed: bool = False  # certainly did not take effect
    exempt: bool = False  # a read that may be stale by design (see the module's docstring)


@dataclass(frozen=True, slots=True)
class Violation:
    repo: str
    tag: str
    op: int  # the id of the operation that could not be placed (-1: unknown)
    message: str


@dataclass(slots=True)
class TagReport:
    checked_ops: int = 0  # operations that took part in a linearizability check
    registers: int = 0  # tags checked
    exempt_reads: int = 0  # stale-by-design reads, checked only for having been written
    inconclusive: int = 0  # tags whose search ran out of budget (counted as passing)
    violations: list[Violation] = field(default_factory=list)


def register_ops(ops: Iterable[TagOp]) -> dict[tuple[str, str], list[reg.RegOp]]:
    """Per-tag register operations: failed ones, unknown reads and exempt reads left out."""
    out: dict[tuple[str, str], list[reg.RegOp]] = defaultdict(list)
    for op in ops:
        if op.failed or (op.kind == READ and (op.ret is None or op.exempt)):
            continue
        kind = reg.WRITE if op.kind == WRITE else reg.READ
        out[(op.repo, op.tag)].append(reg.RegOp(kind, op.value, op.call, op.ret, op.id))
    return out


def check_tags(ops: Iterable[TagOp], *, budget: int = 2_000_000) -> TagReport:
    """Every tag's operations linearizable (starting from no tag); exempt reads
    return a digest that was written.  Every violation is listed with a message."""
    ops = list(ops)
    by_id = {op.id: op for op in ops}
    report = TagReport()
    for (repo, tag), reg_ops in sorted(register_ops(ops).items()):
        report.registers += 1
        report.checked_ops += len(reg_ops)
        verdict = reg.check(reg_ops, None, budget=budget)
        if verdict.inconclusive:
            report.inconclusive += 1
            continue
        if verdict.ok:
            continue
        stuck = by_id.get(reg_ops[verdict.stuck].ref) if verdict.stuck >= 0 else None
        placed = [by_id[reg_ops[i].ref] for i in verdict.partial]
        last_write = next((o for o in reversed(placed) if o.kind == WRITE), None)
        what = (
            f"cannot place op {stuck.id} ({stuck.kind} {stuck.value}, call {stuck.call}, return {stuck.ret})"
            if stuck
            else "no linearization"
        )
        after = f" after {len(placed)} ops ending with write {last_write.value}" if last_write else ""
        report.violations.append(
            Violation(
                repo, tag, stuck.id if stuck else -1, f"{repo}:{tag}: {len(reg_ops)} ops; {what}{after}"
            )
        )
    written: dict[tuple[str, str], list[tuple[int, str | None]]] = defaultdict(list)
    for op in ops:
        if op.kind == WRITE and not op.failed:
            written[(op.repo, op.tag)].append((op.call, op.value))
    for op in ops:
        if op.kind != READ or not op.exempt or op.failed or op.ret is None:
            continue
        report.exempt_reads += 1
        if op.value is None:
            continue  # a stale cache may not know a tag yet
        seen = {value for call, value in written[(op.repo, op.tag)] if call < op.ret}
        if op.value not in seen:
            report.violations.append(
                Violation(
                    op.repo, op.tag, op.id, f"{op.repo}:{op.tag}: read {op.value}, which no write had set"
                )
            )
    return report


def as_dict(report: TagReport, *, examples: int = 10) -> dict[str, object]:
    """The JSON form: ``{"checked_ops", "violations", "examples", ...}``."""
    return {
        "checked_ops": report.checked_ops,
        "violations": len(report.violations),
        "examples": [v.message for v in report.violations[:examples]],
        "tags": report.registers,
        "exempt_reads": report.exempt_reads,
        "inconclusive_tags": report.inconclusive,
    }
