"""Go-style durations, as the OpenShift APIs write them (``format: duration``).

``parse_duration`` accepts what Go's ``time.ParseDuration`` accepts: an
optional sign, then one or more decimal numbers each followed by a unit
(``ns``, ``us``/``µs``/``μs``, ``ms``, ``s``, ``m``, ``h``), e.g. ``"30s"``,
``"1m30s"``, ``"1.5h"``, ``"500ms"``; ``"0"`` is the only number allowed
without a unit.  The result is in seconds.  Arithmetic is exact (integer
nanoseconds) until the final conversion to float, and, as in Go, a duration
must fit in a signed 64-bit count of nanoseconds (about 292 years).

``format_duration`` writes the shortest form that both Go and
``parse_duration`` read back: only the non-zero components, largest first
(``3600`` -> ``"1h"``, ``5400`` -> ``"1h30m"``, ``1.5`` -> ``"1.5s"``,
``0.25`` -> ``"250ms"``, ``0`` -> ``"0s"``), rounded to the nanosecond.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from types import MappingProxyType
from typing import Final

__all__ = ["format_duration", "parse_duration"]

_NS_PER_UNIT: Final = MappingProxyType(
    {
        "ns": 1,
        "us": 1_000,
        "\u00b5s": 1_000,  # micro sign, as Go writes it
        "\u03bcs": 1_000,  # Greek small letter mu
        "ms": 1_000_000,
        "s": 1_000_000_000,
        "m": 60 * 1_000_000_000,
        "h": 3600 * 1_000_000_000,
    }
)
_COMPONENT = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")
_MAX_NS = 2**63 - 1
_EXAMPLES = 'a number with a unit (ns, us, ms, s, m, h), like "30s", "1m30s", "500ms" or "2h"'


def parse_duration(text: str) -> float:
    """Parse a Go duration string into seconds; ValueError says what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"duration must be a string, not {type(text).__name__}")
    body = text
    negative = False
    if body[:1] in ("+", "-"):
        negative = body[0] == "-"
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"invalid duration {text!r}; expected {_EXAMPLES}")
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _COMPONENT.match(body, pos)
        number, unit = (match.group(1), match.group(2)) if match else ("", "")
        if number in ("", "."):
            raise ValueError(f"invalid duration {text!r}; expected {_EXAMPLES}")
        if not unit:
            raise ValueError(f"missing unit in duration {text!r}; expected {_EXAMPLES}")
        if unit not in _NS_PER_UNIT:
            raise ValueError(f"unknown unit {unit!r} in duration {text!r}; expected {_EXAMPLES}")
        total += Fraction(number) * _NS_PER_UNIT[unit]
        assert match is not None
        pos = match.end()
    nanoseconds = math.floor(total)
    if nanoseconds > _MAX_NS + (1 if negative else 0):
        raise ValueError(f"duration {text!r} is out of range (at most about 292 years)")
    seconds = nanoseconds / 1_000_000_000
    return -seconds if negative else seconds


def format_duration(seconds: float) -> str:
    """Format seconds as a short Go duration string (see the module docstring)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"seconds must be a number, not {type(seconds).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    ns = round(Fraction(seconds) * 1_000_000_000)
    if ns < 0:
        return "-" + _format_ns(-ns)
    return _format_ns(ns)


def _decimal(whole: int, fraction: int, digits: int) -> str:
    if fraction == 0:
        return str(whole)
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def _format_ns(ns: int) -> str:
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _decimal(ns // 1_000, ns % 1_000, 3) + "us"
    if ns < 1_000_000_000:
        return _decimal(ns // 1_000_000, ns % 1_000_000, 6) + "ms"
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        parts.append(_decimal(rest // 1_000_000_000, rest % 1_000_000_000, 9) + "s")
    return "".join(parts)
