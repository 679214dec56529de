"""hareg.config.cron: 5-field schedules and macros, and when they fire next."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from hareg.config.cron import parse_cron


@pytest.mark.parametrize(
    "schedule",
    [
        "0 0 * * *",
        "*/15 * * * *",
        "0 9-17 * * MON-FRI",
        "0 0 1,15 * *",
        "30 2 * JAN,jul *",
        "5/10 * * * *",
        "0 0 * * 7",
        "0-30/10 0,12 1-7 */2 sun",
        "@daily",
        "@HOURLY",
        "0 0 29 2 *",
    ],
)
def test_cron_valid(schedule: str) -> None:
    parse_cron(schedule)


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ("0 0 * *", "expected 5 fields"),
        ("0 0 * * * *", "expected 5 fields"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("a * * * *", "not a number"),
        ("1,,2 * * * *", "empty list item"),
        ("* * * FOO *", "not a number"),
        ("0 0 31 2 *", "never fires"),
        ("@every 5m", "unknown macro"),
    ],
)
def test_cron_invalid(schedule: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_cron(schedule)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("0 0 * * *", datetime(2024, 3, 5, 13, 0), datetime(2024, 3, 6, 0, 0)),
        ("*/15 * * * *", datetime(2024, 3, 5, 10, 7, 30), datetime(2024, 3, 5, 10, 15)),
        ("*/15 * * * *", datetime(2024, 3, 5, 10, 15), datetime(2024, 3, 5, 10, 30)),
        ("0 0 29 2 *", datetime(2023, 3, 1), datetime(2024, 2, 29)),
        ("0 12 * * MON", datetime(2024, 3, 5), datetime(2024, 3, 11, 12, 0)),
        ("0 0 1 1 *", datetime(2024, 12, 31, 23, 59), datetime(2025, 1, 1)),
        # Both day fields restricted: either may match (the 13th, or any Friday).
        ("0 0 13 * FRI", datetime(2024, 3, 1, 1, 0), datetime(2024, 3, 8)),
        ("0 0 13 * FRI", datetime(2024, 3, 12, 1, 0), datetime(2024, 3, 13)),
        # Day-of-week given with '*': both must match.
        ("0 0 */2 * MON", datetime(2024, 3, 1), datetime(2024, 3, 11)),
    ],
)
def test_cron_next_after(schedule: str, after: datetime, expected: datetime) -> None:
    cron = parse_cron(schedule)
    assert cron.next_after(after) == expected
    assert cron.matches(expected)


def test_cron_next_after_keeps_time_zone() -> None:
    after = datetime(2024, 3, 5, 13, 0, tzinfo=UTC)
    assert parse_cron("@hourly").next_after(after) == datetime(2024, 3, 5, 14, 0, tzinfo=UTC)
