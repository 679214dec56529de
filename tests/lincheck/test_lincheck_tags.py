"""The per-tag check of a client history (lincheck/tags.py): a stale read is
caught, failed and unknown operations count as what they may have done, and
reads exempt as stale by design must still return a written digest."""

from __future__ import annotations

from lincheck.tags import READ, WRITE, TagOp, as_dict, check_tags


def _op(i: int, kind: str, value: str | None, call: int, ret: int | None, **kw: bool) -> TagOp:
    return TagOp(i, kind, "r", "latest", value, call, ret, **kw)


def test_a_read_of_the_previous_digest_after_a_write_returned_is_caught() -> None:
    ops = [
        _op(0, WRITE, "A", 1, 2),
        _op(1, WRITE, "B", 3, 4),
        _op(2, READ, "A", 5, 6),  # B was acknowledged before this read began
    ]
    report = check_tags(ops)
    assert report.checked_ops == 3 and len(report.violations) == 1
    assert report.violations[0].op == 2
    doc = as_dict(report)
    assert doc["violations"] == 1 and "cannot place op 2" in str(doc["examples"])


def test_a_read_overlapping_the_write_may_see_either_digest() -> None:
    for seen in ("A", "B"):
        ops = [_op(0, WRITE, "A", 1, 2), _op(1, WRITE, "B", 3, 6), _op(2, READ, seen, 4, 5)]
        assert check_tags(ops).violations == []


def test_unknown_writes_may_apply_late_or_never_and_failed_ones_never() -> None:
    unknown = [_op(0, WRITE, "A", 1, 2), _op(1, WRITE, "B", 3, None), _op(2, READ, "A", 5, 6),
               _op(3, READ, "B", 7, 8)]  # fmt: skip
    assert check_tags(unknown).violations == []
    failed = [_op(0, WRITE, "A", 1, 2), _op(1, WRITE, "B", 3, 4, failed=True), _op(2, READ, "B", 5, 6)]
    assert len(check_tags(failed).violations) == 1


def test_exempt_reads_are_not_linearized_but_must_return_a_written_digest() -> None:
    stale = [_op(0, WRITE, "A", 1, 2), _op(1, WRITE, "B", 3, 4), _op(2, READ, "A", 5, 6, exempt=True)]
    report = check_tags(stale)
    assert report.violations == [] and report.exempt_reads == 1
    made_up = [_op(0, WRITE, "A", 1, 2), _op(1, READ, "Z", 3, 4, exempt=True)]
    assert [v.op for v in check_tags(made_up).violations] == [1]
