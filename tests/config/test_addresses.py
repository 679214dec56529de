"""hareg.config.addresses: host:port and the URL other replicas reach this one at."""

from __future__ import annotations

import pytest

from hareg.config.addresses import advertised_url, split_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        (":5000", ("", 5000)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("localhost:80", ("localhost", 80)),
        ("registry.example.com:443", ("registry.example.com", 443)),
    ],
)
def test_split_host_port_valid(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["5000", "host:0", "host:65536", "::1:5000", "[::1]5000", "[nope]:80", "bad_host:80",
             "300.1.1.1:80", "host:abc", "host:", "-host:80"],
)  # fmt: skip
def test_split_host_port_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


@pytest.mark.parametrize(
    ("configured", "host", "port", "expected"),
    [
        (None, "127.0.0.1", 5000, "http://127.0.0.1:5000"),
        (None, "registry.example.com", 5000, "http://registry.example.com:5000"),
        (None, "::1", 5000, "http://[::1]:5000"),
        # A wildcard address reaches nothing from another machine: the host name instead.
        (None, "0.0.0.0", 5000, "http://node-7:5000"),
        (None, "::", 5001, "http://node-7:5001"),
        (None, "", 5000, "http://node-7:5000"),
        ("https://r0.example.com:5443/", "0.0.0.0", 5000, "https://r0.example.com:5443"),
    ],
)
def test_advertised_url(configured: str | None, host: str, port: int, expected: str) -> None:
    assert advertised_url(configured, host, port, "node-7") == expected
