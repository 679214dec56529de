"""hareg.upstream.outbound: which proxy a request to an upstream goes through."""

from __future__ import annotations

import pytest

from hareg.config.model import ProxyConfig
from hareg.upstream.outbound import proxy_for

PROXIES = ProxyConfig(http="http://p:3128", https="http://s:3128", no_proxy="")


@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("http://r.example.com/v2/", "", "http://p:3128"),
        ("https://r.example.com/v2/", "", "http://s:3128"),
        ("https://r.example.com/v2/", "example.com", None),
        ("https://r.example.com/v2/", ".example.com", None),
        ("https://example.com/v2/", ".example.com", None),
        ("https://notexample.com/v2/", "example.com", "http://s:3128"),
        ("https://r.example.com:5000/v2/", "r.example.com:5000", None),
        ("https://r.example.com/v2/", "r.example.com:5000", "http://s:3128"),
        ("http://10.1.2.3:5000/v2/", "10.0.0.0/8", None),
        ("http://11.1.2.3:5000/v2/", "10.0.0.0/8", "http://p:3128"),
        ("http://[::1]:5000/v2/", "[::1]:5000", None),
        ("http://[::1]:5000/v2/", "::1", None),
        ("https://anything/v2/", "a.com, *", None),
    ],
)
def test_no_proxy_rules(url: str, no_proxy: str, expected: str | None) -> None:
    assert proxy_for(url, ProxyConfig(PROXIES.http, PROXIES.https, no_proxy)) == expected


def test_no_proxy_configured_means_direct() -> None:
    assert proxy_for("https://r.example.com/v2/", ProxyConfig()) is None
    assert proxy_for("http://r.example.com/v2/", ProxyConfig(https="http://s:3128")) is None
