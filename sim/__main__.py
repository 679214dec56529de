"""``python -m sim``: see :mod:`sim.cli`.

The process re-executes itself once with ``PYTHONHASHSEED=0``: a seed then
replays to the same trace in any process, not only within one (the registry
and the simulator never iterate over sets of strings to decide what to do,
but a fixed hash seed removes the question).
"""

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, "-m", "sim", *sys.argv[1:]])

from sim.cli import main

raise SystemExit(main())
