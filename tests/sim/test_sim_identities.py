"""Clients with identities and an operator changing grants: what a run exercises."""

from __future__ import annotations

import pytest

from sim import faults
from sim.runner import run

pytestmark = pytest.mark.timeout(120)


def test_clients_are_refused_what_their_roles_deny_while_the_operator_changes_grants() -> None:
    result = run(faults.choose(1, 20.0))
    assert not result.error and result.violations == [], result.violations
    assert result.ops_by_kind["grant"].get("ok", 0) > 0 and result.ops_by_kind["revoke"].get("ok", 0) > 0
    access = result.stats["access"]
    assert access["refused"] > 0 and access["judged"] > access["refused"]


def test_without_identities_nothing_is_checked_or_refused() -> None:
    result = run(faults.choose(1, 20.0, authz=False))
    assert "grant" not in result.ops_by_kind and "revoke" not in result.ops_by_kind
    assert result.stats["access"] == {"judged": 0, "refused": 0}
