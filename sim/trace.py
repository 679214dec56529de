"""The run's trace: one JSON line per notable event, and a hash over all of them.

Two runs of one seed must produce the same lines (hence the same hash); that
is what ``--check-determinism`` compares.  Lines hold virtual times and names
only, never memory addresses or wall-clock values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any


class Trace:
    _ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # stateless; built once

    def __init__(self, now: Callable[[], float], *, keep: bool = False) -> None:
        self._now = now
        self._hash = hashlib.sha256()
        self.keep = keep  # keep the lines (for replay --trace), not only their hash
        self.lines: list[str] = []
        self.count = 0

    def event(self, what: str, /, **fields: Any) -> None:
        line = self._ENCODER.encode({"t": round(self._now(), 6), "ev": what, **fields})
        self._hash.update(f"{line}\n".encode())
        self.count += 1
        if self.keep:
            self.lines.append(line)

    def digest(self) -> str:
        return self._hash.hexdigest()
