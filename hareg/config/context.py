"""Where validation records problems and how it reads a YAML mapping.

``ErrorContext`` collects every problem, each naming the field by its YAML
path and saying where it came from (its line, or the environment variable);
``Section`` gives typed access to one mapping and reports unknown keys, with a
"did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from hareg.config.durations import parse_duration

NO_UNSUPPORTED: Final[Mapping[str, str]] = MappingProxyType({})


def show(value: object) -> str:
    """A value as the user would recognise it in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class ErrorContext:
    """Collects problems; knows where each YAML path came from."""

    entries: list[tuple[int, int, str]] = field(default_factory=list)  # (line, order, message)
    lines: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # YAML path -> env variable
    nodes: int = 0  # YAML nodes expanded so far (aliases can multiply them)

    @property
    def errors(self) -> list[str]:
        """File-level and environment problems first, then the file's in line order."""
        return [message for _, _, message in sorted(self.entries)]

    def add(self, message: str, line: int = 0) -> None:
        self.entries.append((line, len(self.entries), message))

    def line_of(self, path: str) -> int:
        """The line of ``path`` or, for a missing field, of its nearest enclosing section; 0 if none."""
        while path:
            if path in self.lines:
                return self.lines[path]
            parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
            if parent == path:  # a top-level key the file does not have
                break
            path = parent
        return 0

    def error(self, path: str, message: str) -> None:
        """Record a problem with ``path``, saying where it came from (its variable or line)."""
        text = f"{path or '<top level>'}: {message}"
        if path in self.sources:
            self.add(f"{text} (from {self.sources[path]})")
            return
        line = self.line_of(path)
        self.add(f"{text} (line {line})" if line else text, line)

    def bad(self, path: str, value: object, expected: str) -> None:
        self.error(path, f"{show(value)} is not allowed; expected {expected}")


def suggest(key: str, known: Iterable[str]) -> str | None:
    def norm(text: str) -> str:
        return text.replace("_", "").replace("-", "").lower()

    candidates = {norm(k): k for k in known}
    if norm(key) in candidates:
        return candidates[norm(key)]
    close = difflib.get_close_matches(norm(key), list(candidates), n=1, cutoff=0.6)
    return candidates[close[0]] if close else None


class Section:
    """Typed access to one YAML mapping; reports unknown keys on creation."""

    def __init__(
        self,
        ctx: ErrorContext,
        path: str,
        data: Mapping[str, object],
        known: tuple[str, ...],
        unsupported: Mapping[str, str] = NO_UNSUPPORTED,
    ) -> None:
        self.ctx, self.path, self.data = ctx, path, data
        for key in data:
            if key in known:
                continue
            sub = join_path(path, key)
            if key in unsupported:
                ctx.error(sub, unsupported[key])
                continue
            suggestion = suggest(key, known)
            if suggestion:
                ctx.error(sub, f"unknown field; did you mean {suggestion!r}?")
            else:
                ctx.error(sub, f"unknown field; expected one of: {', '.join(known)}")

    def at(self, key: str) -> str:
        return join_path(self.path, key)

    def get(self, key: str) -> object:
        return self.data.get(key)

    def mapping(
        self, key: str, known: tuple[str, ...], unsupported: Mapping[str, str] = NO_UNSUPPORTED
    ) -> Section:
        value = self.get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.ctx.bad(self.at(key), value, f"a mapping with the fields {', '.join(known)}")
            value = {}
        return Section(self.ctx, self.at(key), value, known, unsupported)

    def string(self, key: str, default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            hint = f" (quote it: '{show(value)}')" if isinstance(value, (bool, int, float)) else ""
            self.ctx.bad(self.at(key), value, f"a string{hint}")
            return default
        return value

    def opt_string(self, key: str, what: str = "a non-empty string", secret: bool = False) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            if secret and value != "":
                self.ctx.error(self.at(key), f"a non-string value is not allowed; expected {what} or null")
            else:
                self.ctx.bad(self.at(key), value, f"{what} or null")
            return None
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key)
        if value is None or value == "":
            return default
        if value in choices:
            assert isinstance(value, str)
            return value
        expected = f"one of {', '.join(choices)}"
        if isinstance(value, str):
            near = suggest(value, choices)
            if near:
                expected += f" (did you mean {near!r}?)"
        self.ctx.bad(self.at(key), value, expected)
        return default

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.ctx.bad(self.at(key), value, "true or false")
            return default
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.ctx.bad(self.at(key), value, f"an integer >= {minimum}")
            return default
        return value

    def duration(self, key: str, default: float, positive: bool = False) -> float:
        value = self.get(key)
        if value is None:
            return default
        expected = 'a duration with a unit (ns, us, ms, s, m, h) like "30s", "1m30s", "500ms" or "2h"' + (
            " greater than 0" if positive else ""
        )
        if value == 0 and not isinstance(value, bool):
            seconds = 0.0
        elif isinstance(value, str):
            try:
                seconds = parse_duration(value.strip())
            except ValueError:
                self.ctx.bad(self.at(key), value, expected)
                return default
        else:
            self.ctx.bad(self.at(key), value, expected)
            return default
        if seconds < 0 or (positive and seconds == 0):
            self.ctx.bad(self.at(key), value, "a duration " + ("> 0" if positive else ">= 0"))
            return default
        return seconds
