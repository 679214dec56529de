"""The per-tag register checker (Wing & Gong / Porcupine search)."""

from __future__ import annotations

import random
import time

from sim.linearizability import DELETE, DROP, READ, WRITE, RegOp, check


def op(kind: str, value: str | None, call: int, ret: int | None) -> RegOp:
    return RegOp(kind, value, call, ret)


def test_sequential_history() -> None:
    assert check([op(WRITE, "a", 1, 2), op(READ, "a", 3, 4), op(DELETE, None, 5, 6), op(READ, None, 7, 8)]).ok


def test_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    verdict = check([op(WRITE, "a", 1, 2), op(WRITE, "b", 3, 4), op(READ, "a", 5, 6)])
    assert not verdict.ok and verdict.stuck == 2


def test_concurrent_write_may_be_seen_or_not() -> None:
    assert check([op(WRITE, "a", 1, 2), op(WRITE, "b", 3, 8), op(READ, "a", 4, 5), op(READ, "b", 6, 7)]).ok
    # ... but not seen, then unseen again.
    assert not check(
        [op(WRITE, "a", 1, 2), op(WRITE, "b", 3, 10), op(READ, "b", 4, 5), op(READ, "a", 6, 7)]
    ).ok


def test_unknown_outcome_may_apply_late_or_never() -> None:
    lost = op(WRITE, "b", 3, None)  # a timeout: may apply at any point after its call
    assert check([op(WRITE, "a", 1, 2), lost, op(READ, "a", 4, 5), op(READ, "b", 20, 21)]).ok
    assert check([op(WRITE, "a", 1, 2), lost, op(READ, "a", 20, 21)]).ok
    # Not before it was invoked.
    assert not check([op(WRITE, "a", 1, 2), op(READ, "b", 3, 4), op(WRITE, "b", 5, None)]).ok


def test_two_deletes_cannot_both_find_the_tag() -> None:
    history = [op(WRITE, "a", 1, 2), op(DELETE, None, 3, 10), op(DELETE, None, 4, 5)]
    assert not check(history).ok
    assert check([op(WRITE, "a", 1, 2), op(DELETE, None, 3, 10), op(READ, None, 4, 5)]).ok


def test_manifest_delete_drops_only_its_digest() -> None:
    assert check([op(WRITE, "a", 1, 2), op(DROP, "b", 3, 4), op(READ, "a", 5, 6)]).ok
    assert not check([op(WRITE, "a", 1, 2), op(DROP, "a", 3, 4), op(READ, "a", 5, 6)]).ok


def test_a_few_hundred_operations_with_unknowns_stay_fast() -> None:
    """A correct register's history with 300 operations, 10% of unknown outcome."""
    rng = random.Random(7)
    value: str | None = None
    ops: list[RegOp] = []
    clock = 0
    pending: list[tuple[str, str | None, int, int]] = []
    for i in range(300):
        clock += 1
        kind = rng.choice([WRITE, READ, READ, DELETE])
        start = clock
        clock += 1
        if kind == WRITE:
            value = f"d{i}"
            pending.append((WRITE, value, start, clock))
        elif kind == READ:
            pending.append((READ, value, start, clock))
        elif value is not None:
            value = None
            pending.append((DELETE, None, start, clock))
        else:
            pending.append((READ, None, start, clock))
    for kind, v, start, end in pending:
        unknown = kind == WRITE and rng.random() < 0.1
        # Widen each interval a little so that operations overlap.
        ops.append(
            RegOp(
                kind, v, start * 10 - rng.randint(0, 12), None if unknown else end * 10 + rng.randint(0, 12)
            )
        )
    started = time.perf_counter()
    verdict = check(ops)
    assert verdict.ok and not verdict.inconclusive
    assert time.perf_counter() - started < 5.0
