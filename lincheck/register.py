"""Linearizability of one tag, as a register, from a recorded history.

The algorithm is Wing & Gong's search with Lowe's memoization, as Porcupine
implements it: walk the history's call/return events in order, try to
linearize a pending call at its model step, backtrack when a return comes
for an operation not yet linearized, and never revisit a (set of linearized
operations, register value) configuration.  Operations whose outcome is
unknown have their return at infinity: they may take effect at any point
after their call, or never (which is the same as at the very end).

The register's value is the digest the tag names (None: no tag).  Steps:

* ``write d``   a manifest PUT by tag or a rollback: value := d
* ``delete``    a tag DELETE that found the tag: requires value != None; := None
* ``read v``    a GET by tag (a 404 reads None; so does a tag DELETE that
                found nothing): requires value == v
* ``drop d``    a manifest DELETE by digest (or one of unknown outcome, or a
                tag DELETE of unknown outcome with d None): if value == d
                (or d is None): := None
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WRITE, DELETE, READ, DROP = "write", "delete", "read", "drop"
_INFINITY = 1 << 62


@dataclass(frozen=True, slots=True)
class RegOp:
    kind: str
    value: str | None
    call: int  # position of the call in real-time order
    ret: int | None  # position of the return; None: unknown outcome (never returned)
    ref: int = -1  # the history operation it came from


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    inconclusive: bool = False  # the search ran out of budget
    steps: int = 0
    # On failure: the longest prefix of operations that could be linearized, and
    # the operation that could not be placed after it.
    partial: tuple[int, ...] = ()
    stuck: int = -1


def _step(value: str | None, op: RegOp) -> tuple[bool, str | None]:
    if op.kind == WRITE:
        return True, op.value
    if op.kind == READ:
        return value == op.value, value
    if op.kind == DELETE:
        return value is not None, None
    # DROP
    if op.value is None or value == op.value:
        return True, None
    return True, value


@dataclass(slots=True)
class _Entry:
    op: int  # index into ops
    is_call: bool
    time: int
    match: _Entry | None = None
    prev: _Entry | None = None
    next: _Entry | None = None


def check(ops: Sequence[RegOp], initial: str | None = None, *, budget: int = 2_000_000) -> Verdict:
    """Is there a linearization of ``ops`` on a register starting at ``initial``?"""
    if not ops:
        return Verdict(True)
    events: list[tuple[int, int, int]] = []  # (time, 0 return before 1 call at equal times, op)
    for i, op in enumerate(ops):
        events.append((op.call, 1, i))
        events.append((op.ret if op.ret is not None else _INFINITY + i, 0, i))
    events.sort()
    head = _Entry(-1, False, -1)
    calls: dict[int, _Entry] = {}
    prev = head
    for time, kind, i in events:
        node = _Entry(i, kind == 1, time, prev=prev)
        prev.next = node
        prev = node
        if kind == 1:
            calls[i] = node
        else:
            calls[i].match = node
            node.match = calls[i]

    def lift(entry: _Entry) -> None:
        assert entry.prev is not None and entry.match is not None
        entry.prev.next = entry.next
        if entry.next is not None:
            entry.next.prev = entry.prev
        match = entry.match
        assert match.prev is not None
        match.prev.next = match.next
        if match.next is not None:
            match.next.prev = match.prev

    def unlift(entry: _Entry) -> None:
        match = entry.match
        assert match is not None and match.prev is not None and entry.prev is not None
        match.prev.next = match
        if match.next is not None:
            match.next.prev = match
        entry.prev.next = entry
        if entry.next is not None:
            entry.next.prev = entry

    state = initial
    linearized = 0
    cache: set[tuple[int, str | None]] = {(0, initial)}
    stack: list[tuple[_Entry, str | None]] = []
    best: tuple[int, ...] = ()
    stuck = -1
    steps = 0
    entry: _Entry | None = head.next
    while head.next is not None:
        steps += 1
        if steps > budget:
            return Verdict(True, inconclusive=True, steps=steps)
        assert entry is not None
        if entry.is_call:
            ok, new_state = _step(state, ops[entry.op])
            if ok:
                key = (linearized | (1 << entry.op), new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((entry, state))
                    state = new_state
                    linearized |= 1 << entry.op
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # A return for an operation not linearized yet: undo the last choice.
            if len(stack) > len(best):
                best = tuple(e.op for e, _ in stack)
                stuck = entry.op
            if not stack:
                return Verdict(False, steps=steps, partial=best, stuck=stuck)
            top, state = stack.pop()
            linearized &= ~(1 << top.op)
            unlift(top)
            entry = top.next
    return Verdict(True, steps=steps)
