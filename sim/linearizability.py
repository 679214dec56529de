"""The per-tag linearizability checker lives in :mod:`lincheck.register`, where the
benchmarks import it too (they check histories of real clusters); re-exported
here so the simulator's imports stay as they were."""

from lincheck.register import DELETE, DROP, READ, WRITE, RegOp, Verdict, check

__all__ = ["DELETE", "DROP", "READ", "WRITE", "RegOp", "Verdict", "check"]
