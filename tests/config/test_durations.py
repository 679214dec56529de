"""hareg.config.durations: Go's duration syntax, parsed and formatted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hareg.config.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("-0", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1h0m0s", 3600.0),
        ("2h45m", 9900.0),
        ("-1.5s", -1.5),
        ("+5s", 5.0),
        ("300us", 0.0003),
        ("300\u00b5s", 0.0003),
        ("300\u03bcs", 0.0003),
        ("1ns", 1e-9),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("60m", 3600.0),
    ],
)
def test_parse_duration_accepts_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "30", "s", "1x", "1h 30m", "--1s", ".s", "1h30", "one second", "1e3s", "9999999999h"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (90, "1m30s"),
        (1.5, "1.5s"),
        (0.25, "250ms"),
        (0.0000015, "1.5us"),
        (1e-9, "1ns"),
        (3600.5, "1h0.5s"),
        (-30, "-30s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_format_duration_round_trips(nanoseconds: int) -> None:
    text = format_duration(nanoseconds / 1e9)
    assert parse_duration(text) == pytest.approx(nanoseconds / 1e9, rel=1e-12, abs=1e-9)
