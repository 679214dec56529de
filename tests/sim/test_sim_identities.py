"""Clients with identities and an operator changing grants: what a run exercises."""

from __future__ import annotations

import pytest

from sim import faults
from sim.runner import run

pytestmark = pytest.mark.timeout(120)


def test_clients_are_refused_what_their_roles_deny_while_the_operator_changes_grants() -> None:
    # A few seeds: under one seed's faults every revoke may meet an outage.
    done = {"grant": 0, "revoke": 0}
    refused = judged = 0
    for seed in (1, 2, 3):
        result = run(faults.choose(seed, 20.0))
        assert not result.error and result.violations == [], result.violations
        for kind in done:
            done[kind] += result.ops_by_kind.get(kind, {}).get("ok", 0)
        refused += result.stats["access"]["refused"]
        judged += result.stats["access"]["judged"]
    assert done["grant"] > 0 and done["revoke"] > 0, done
    assert refused > 0 and judged > refused


def test_without_identities_nothing_is_checked_or_refused() -> None:
    result = run(faults.choose(1, 20.0, authz=False))
    assert "grant" not in result.ops_by_kind and "revoke" not in result.ops_by_kind
    assert result.stats["access"] == {"judged": 0, "refused": 0}
