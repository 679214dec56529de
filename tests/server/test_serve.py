"""hareg/server/serve.py's pure parts (the process itself: tests/e2e/test_serve.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from e2e.certs import self_signed

from hareg.config.model import Config, EtcdConfig
from hareg.server.serve import StartupError, etcd_ssl_context, split_listen


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


def test_etcd_probes_use_the_etcd_sections_tls(tmp_path: Path) -> None:
    """GET /hareg/v1/members probes etcd as the replica reaches it: plain, or
    with the etcd section's CA and client certificate."""
    assert etcd_ssl_context(Config()) is None
    cert, key, _ = self_signed(tmp_path, "etcd.local")
    tls = Config(etcd=EtcdConfig(ca_file=str(cert), cert_file=str(cert), key_file=str(key)))
    context = etcd_ssl_context(tls)
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
