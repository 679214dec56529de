"""Cron schedules (the pruner's and the scheduled integrity check's): 5
fields or a macro, as Vixie cron and Kubernetes CronJobs read them.  Imports
no YAML, so the service layer can use it without the configuration reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

_CRON_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day-of-week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_MACROS: Final = MappingProxyType(
    {
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    }
)
_DAYS_IN_MONTH: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February at its longest


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron schedule.  Weekdays are 0-6 with 0 = Sunday.

    As in Vixie cron and Kubernetes CronJobs, when both the day-of-month and
    the day-of-week fields are restricted (neither starts with '*'), a day
    matches if it matches either; otherwise it must match both.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_or_weekday: bool

    def matches_day(self, when: datetime) -> bool:
        day = when.day in self.days
        weekday = (when.weekday() + 1) % 7 in self.weekdays
        return (day or weekday) if self.day_or_weekday else (day and weekday)

    def matches(self, when: datetime) -> bool:
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self.matches_day(when)
        )

    def next_after(self, after: datetime) -> datetime:
        """The first matching minute strictly after ``after``, in its own (wall-clock) time zone."""
        when = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(1_000_000):
            if when.month not in self.months:
                year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
                when = when.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self.matches_day(when):
                when = when.replace(hour=0, minute=0) + timedelta(days=1)
            elif when.hour not in self.hours:
                when = when.replace(minute=0) + timedelta(hours=1)
            elif when.minute not in self.minutes:
                when += timedelta(minutes=1)
            else:
                return when
        raise RuntimeError("cron schedule never fires")  # parse_cron rejects such schedules


def _cron_value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isascii() or not text.isdigit():
        hint = f" or a name like {names[0]}" if names else ""
        raise ValueError(f"{name} {text!r} is not a number{hint}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is out of range {low}-{high}")
    return value


def _cron_field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"{name} field {text!r} has an empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isascii() or not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name} step {step_text!r} is not a number >= 1")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _cron_value(first, name, low, high, names)
            end = _cron_value(last, name, low, high, names)
            if start > end:
                raise ValueError(f"{name} range {base!r} runs backwards")
        else:
            start = _cron_value(base, name, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_cron(text: str) -> CronSchedule:
    """Parse a 5-field cron schedule (or @daily, @hourly, ...); ValueError says why not."""
    spec = text
    if text.strip().startswith("@"):
        macro = _CRON_MACROS.get(text.strip().lower())
        if macro is None:
            raise ValueError(f"unknown macro {text.strip()!r}; expected one of {', '.join(_CRON_MACROS)}")
        spec = macro
    fields = spec.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    parsed = [
        _cron_field(text_field, name, low, high, names)
        for text_field, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True)
    ]
    minutes, hours, days, months, weekdays = parsed
    weekdays = frozenset(d % 7 for d in weekdays)
    either = not fields[2].startswith("*") and not fields[4].startswith("*")
    if not either and not any(d <= _DAYS_IN_MONTH[m - 1] for m in months for d in days):
        raise ValueError("it never fires (no month in it has such a day)")
    return CronSchedule(minutes, hours, days, months, weekdays, either)
