"""The client's address behind trusted load balancers (hareg/registry/forwarded.py)."""

from __future__ import annotations

import pytest

from hareg.registry.forwarded import MAX_HOPS, client_address, networks

PROXIES = networks(["127.0.0.1/32", "10.1.0.0/16"])


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("192.0.2.7", ["203.0.113.9"], "192.0.2.7"),  # not a proxy: its header is not believed
        ("127.0.0.1", [], "127.0.0.1"),  # a proxy that forwarded nothing
        ("127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        ("127.0.0.1", ["198.51.100.1, 203.0.113.9"], "203.0.113.9"),  # the client wrote the left one
        ("127.0.0.1", ["203.0.113.9, 10.1.2.3"], "203.0.113.9"),  # two proxies in a row
        ("127.0.0.1", ["203.0.113.9", "10.1.2.3"], "203.0.113.9"),  # one header line per hop
        ("127.0.0.1", ["10.1.0.1, 10.1.0.2"], "127.0.0.1"),  # only proxies: the nearest one
        ("127.0.0.1", ["not-an-address"], "127.0.0.1"),
        ("127.0.0.1", ["2001:db8::1"], "2001:db8::1"),
        (None, ["203.0.113.9"], "unknown"),
    ],
)
def test_the_rightmost_untrusted_hop_is_the_client(peer: str | None, header: list[str], client: str) -> None:
    assert client_address(peer, header, PROXIES) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("127.0.0.1", ["203.0.113.9"], ()) == "127.0.0.1"


def test_a_long_chain_is_cut() -> None:
    chain = ", ".join(["10.1.0.1"] * (MAX_HOPS + 5))
    assert client_address("127.0.0.1", [f"203.0.113.9, {chain}"], PROXIES) == "127.0.0.1"
