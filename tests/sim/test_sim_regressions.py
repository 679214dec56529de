"""Seeds on which the simulator found registry bugs, kept as regression tests:
each one failed before its fix (see docs/simulation.md, "Findings").  A change
to the workload or the models gives a seed another run, so these guard the
scenarios only as long as the simulator stays as it was; the mutation-checked
unit tests beside each fix are the lasting guard."""

from __future__ import annotations

import pytest

from sim import faults
from sim.runner import run

# The fault kinds a seed drew when it failed: the ``late`` fault came later, and
# a seed that draws it runs another world (its other faults are unchanged).
BEFORE_LATE = tuple(kind for kind in faults.FAULT_KINDS if kind != "late")


@pytest.mark.parametrize(
    ("seed", "duration", "bug"),
    [
        (6, 60.0, "re-sending an unverified unknown-outcome txn broke tag linearizability"),
        (154, 60.0, "delete_manifest wrote a second 'delete' history entry for a tag deleted meanwhile"),
        (5325, 60.0, "GC deleted an index's child in an earlier batch than the index"),
        (48, 20.0, "a manifest delete was acknowledged on someone else's delete"),
        (175, 20.0, "a manifest delete was acknowledged on someone else's delete"),
        # A bug of the simulator's network model, not of the registry (tests/sim/test_sim_network.py).
        (777, 20.0, "a watch message lost in flight was skipped, not the end of the stream"),
        (9576, 20.0, "an upload acknowledged on the strength of an earlier upload's link"),
        # A checker that asked more than docs/gc.md promises after a HEAD (tests/sim/test_sim_checkers.py).
        (8032, 20.0, "a HEAD-confirmed layer guarded for the whole grace window instead of half"),
    ],
)
def test_seed_stays_clean(seed: int, duration: float, bug: str) -> None:
    # Without the hostile clients (which came later) a seed runs as it did when it failed.
    result = run(faults.choose(seed, duration, hostile=False, allowed=BEFORE_LATE))
    assert not result.error, result.error
    assert [v.to_json() for v in result.violations] == [], bug


@pytest.mark.parametrize(
    ("seed", "bug"),
    [
        (5817, "a pull by tag read from etcd read its tag and its manifest at two revisions"),
        (7384, "a lost delete verified by 'the key is gone' was acknowledged under the read-only switch"),
        (7610, "a mount answered 'already linked' from a cache served stale while etcd had no leader"),
    ],
)
def test_seed_with_hostile_clients_stays_clean(seed: int, bug: str) -> None:
    # Without the identities (which came later) the seed runs as it did when it failed.
    result = run(faults.choose(seed, 20.0, authz=False, allowed=BEFORE_LATE))
    assert not result.error, result.error
    assert [v.to_json() for v in result.violations] == [], bug
