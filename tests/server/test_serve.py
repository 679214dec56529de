"""hareg/server/serve.py's pure parts (the process itself: tests/e2e/test_serve.py)."""

from __future__ import annotations

import pytest

from hareg.server.serve import StartupError, split_listen


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        (":5000", ("0.0.0.0", 5000)),  # an empty host is every interface, as configuration.md says
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:5000", ("::1", 5000)),
        ("registry.local:0", ("registry.local", 0)),
    ],
)
def test_split_listen(listen: str, expected: tuple[str, int]) -> None:
    assert split_listen(listen) == expected


@pytest.mark.parametrize("listen", ["5000", "host:", "host:port", "host:70000"])
def test_split_listen_refuses_what_is_not_host_port(listen: str) -> None:
    with pytest.raises(StartupError, match="must be HOST:PORT"):
        split_listen(listen)
