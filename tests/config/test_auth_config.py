"""The auth section: its fields, and errors that name the field and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .support import errors_of, load


def test_no_auth_section_is_none_and_an_empty_one_has_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, {}).auth is None
    auth = load(tmp_path, {"auth": {}}).auth
    assert auth is not None
    assert (auth.disabled, auth.htpasswd_path, auth.bindings) == (False, None, ())
    assert (auth.token.audience, auth.token.expiry, auth.token.issuer) == ("hareg", 300.0, None)


def test_disabled_from_the_environment(tmp_path: Path) -> None:
    auth = load(tmp_path, {}, {"HAREG_AUTH_DISABLED": "true"}).auth
    assert auth is not None and auth.disabled


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"disabled": "yes"}, 'auth.disabled: "yes" is not allowed; expected true or false'),
        ({"token": {"expiry": "0s"}}, 'auth.token.expiry: "0s" is not allowed; expected a duration > 0'),
        ({"token": {"jwks": "/k.json"}}, "auth.token.issuer: is required when jwks is set"),
        ({"bindings": {}}, "auth.bindings: a mapping is not allowed; expected a list of bindings"),
        (
            {"bindings": [{"subject": "a", "role": "owner", "repositories": ["x"]}]},
            'auth.bindings[0].role: "owner" is not allowed; expected one of viewer, editor, admin, cluster-admin',
        ),
        ({"bindings": [{"role": "viewer", "repositories": ["x"]}]}, "auth.bindings[0].subject: is required"),
        (
            {"bindings": [{"subject": "a", "role": "viewer"}]},
            "auth.bindings[0].repositories: is required for role viewer",
        ),
        (
            {"bindings": [{"subject": "a", "role": "viewer", "repositories": [""]}]},
            'auth.bindings[0].repositories[0]: "" is not allowed; expected a non-empty glob',
        ),
        (
            {"bindings": [{"subject": "a", "role": "viewer", "repositories": ["x"], "repos": 1}]},
            "auth.bindings[0].repos: unknown field",
        ),
        ({"tokens": {}}, "auth.tokens: unknown field; did you mean 'token'?"),
    ],
)
def test_invalid_auth_fields(tmp_path: Path, auth: dict[str, Any], message: str) -> None:
    errors = errors_of(tmp_path, {"auth": auth})
    assert any(message in e for e in errors), errors


def test_a_cluster_admin_binding_needs_no_repositories(tmp_path: Path) -> None:
    auth = load(tmp_path, {"auth": {"bindings": [{"subject": "root", "role": "cluster-admin"}]}}).auth
    assert auth is not None and auth.bindings[0].role == "cluster-admin"


def test_a_bad_role_is_one_problem(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, {"auth": {"bindings": [{"subject": "x", "role": "owner"}]}})
    assert len(errors) == 1 and "auth.bindings[0].role" in errors[0], errors


def test_trusted_proxies_are_networks_naming_the_bad_item(tmp_path: Path) -> None:
    auth = load(tmp_path, {"auth": {"trustedProxies": ["127.0.0.1", "10.0.0.0/8", "::1"]}}).auth
    assert auth is not None and auth.trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    errors = errors_of(tmp_path, {"auth": {"trustedProxies": ["127.0.0.1", "haproxy"]}})
    assert any(e.startswith("auth.trustedProxies[1]") and "CIDR" in e for e in errors), errors
    from_env = load(tmp_path, {"auth": {}}, {"HAREG_AUTH_TRUSTED_PROXIES": "127.0.0.1, 10.1.0.0/16"}).auth
    assert from_env is not None and from_env.trusted_proxies == ("127.0.0.1/32", "10.1.0.0/16")
