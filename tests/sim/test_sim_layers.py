"""The simulator runs the service layer and below, never the HTTP adapters:
importing it loads neither hareg.http nor aiohttp (checked in a fresh
interpreter, since this test process has loaded both for other tests)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import sim.cli, sim.runner, sim.workload
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "aiohttp" or m.startswith("hareg.http"))
assert not loaded, loaded
"""


def test_the_simulator_loads_no_http_code() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
