"""The simulator's tests: ``sim`` lives at the project root, next to ``hareg``; the
object-store model runs the storage drivers' shared suite (``tests/storage``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
TESTS = str(Path(__file__).resolve().parents[1])  # for the shared storage driver suite
for path in (ROOT, TESTS):
    if path not in sys.path:
        sys.path.insert(0, path)
