"""hareg.server.auth.exposure_problem: no auth section is allowed on loopback listeners only."""

from __future__ import annotations

import pytest

from hareg.config.model import AuthConfig, Config
from hareg.server.auth import exposure_problem, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.5", False), ("registry.example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_auth_on_an_exposed_listener_is_refused_naming_it() -> None:
    problem = exposure_problem(Config(), [("listen 0.0.0.0:5000", "0.0.0.0"), ("route r", "127.0.0.1")])
    assert problem is not None
    assert "listen 0.0.0.0:5000 (0.0.0.0)" in problem and "route r" not in problem
    assert "auth: {disabled: true}" in problem


def test_loopback_only_or_any_auth_section_may_start() -> None:
    assert exposure_problem(Config(), [("listen", "127.0.0.1")]) is None
    assert exposure_problem(Config(auth=AuthConfig(disabled=True)), [("listen", "0.0.0.0")]) is None
    assert exposure_problem(Config(auth=AuthConfig()), [("listen", "0.0.0.0")]) is None
