"""Failed logins, counted per user name and per client address.

After ``max_failures`` failed logins within ``window`` seconds, further
attempts from that name or that address are refused for the rest of the
window (429 with ``Retry-After``) without checking the password, so a
brute-force attack costs the registry no bcrypt time.  A success does not
clear the address's count (an attacker with one valid account must not reset
its budget), only the name's.

Memory is bounded: at most ``max_tracked`` keys are kept; when full, the
entry whose window ends first is dropped (the oldest attacker forgotten, not
the newest).  Defaults: 10 failures a minute, 10,000 keys (a few MiB).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Final

from hareg.clock import Clock

__all__ = ["DEFAULT_MAX_FAILURES", "DEFAULT_MAX_TRACKED", "DEFAULT_WINDOW", "LoginLimiter"]

DEFAULT_MAX_FAILURES: Final = 10
DEFAULT_WINDOW: Final = 60.0
DEFAULT_MAX_TRACKED: Final = 10_000


@dataclass(slots=True)
class _Count:
    started: float
    failures: int = 0


@dataclass
class LoginLimiter:
    clock: Clock
    max_failures: int = DEFAULT_MAX_FAILURES
    window: float = DEFAULT_WINDOW
    max_tracked: int = DEFAULT_MAX_TRACKED
    _counts: dict[str, _Count] = field(default_factory=dict)

    def retry_after(self, *keys: str) -> float:
        """Seconds until any of ``keys`` (``user:<name>``, ``addr:<ip>``) may
        try again; 0: it may now."""
        now = self.clock.monotonic()
        wait = 0.0
        for key in keys:
            count = self._counts.get(key)
            if count is None:
                continue
            if now - count.started >= self.window:
                del self._counts[key]
            elif count.failures >= self.max_failures:
                wait = max(wait, count.started + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = self.clock.monotonic()
        for key in keys:
            count = self._counts.get(key)
            if count is None or now - count.started >= self.window:
                self._make_room(now)
                count = self._counts[key] = _Count(now)
            count.failures += 1

    def succeeded(self, key: str) -> None:
        self._counts.pop(key, None)

    def _make_room(self, now: float) -> None:
        if len(self._counts) < self.max_tracked:
            return
        expired = [k for k, c in self._counts.items() if now - c.started >= self.window]
        for key in expired:
            del self._counts[key]
        excess = len(self._counts) - self.max_tracked + 1
        if excess > 0:
            for key in heapq.nsmallest(excess, self._counts, key=lambda k: self._counts[k].started):
                del self._counts[key]

    def __len__(self) -> int:
        return len(self._counts)
