"""routes: ``hareg serve`` answers on a TLS listener per route with the
configured certificate, beside the plain listener; a certificate that cannot
be loaded is a clear start-up error."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
from pathlib import Path

import pytest
import yaml

from hareg.processes.ports import free_port

from .certs import self_signed
from .hareg_process import Launcher

HOSTNAME = "registry.example.test"


def write_config(path: Path, routes: list[dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump({"routes": routes}))
    return path


def route(port: int, cert: Path, key: Path, name: str = "public") -> dict[str, object]:
    return {
        "name": name,
        "hostname": HOSTNAME,
        "listen": f"127.0.0.1:{port}",
        "certificateFile": str(cert),
        "keyFile": str(key),
    }


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_tls_route_presents_the_configured_certificate(hareg_launcher: Launcher, tmp_path: Path) -> None:
    cert, key, der = self_signed(tmp_path, HOSTNAME)
    tls_port = free_port()
    config = write_config(tmp_path / "hareg.yaml", [route(tls_port, cert, key)])
    server = hareg_launcher(tmp_path / "data", extra_args=["--config", str(config)])

    # The handshake, checked against the configured CA and host name.
    context = ssl.create_default_context(cafile=str(cert))
    with (
        socket.create_connection(("127.0.0.1", tls_port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=HOSTNAME) as tls,
    ):
        assert tls.getpeercert(binary_form=True) == der
        subject = dict(item[0] for item in tls.getpeercert()["subject"])
        assert subject["commonName"] == HOSTNAME
        assert tls.version() in ("TLSv1.2", "TLSv1.3")

    # The same registry on both listeners: push in plain HTTP, pull over TLS.
    blob = b"served over tls" * 5000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    plain = http.client.HTTPConnection(*server.host_port.split(":"), timeout=30)
    status, _ = request(plain, "POST", f"/v2/tls/app/blobs/uploads/?digest={digest}", blob)
    assert status == 201
    # (The certificate names 127.0.0.1 too, so HTTPS to the address verifies.)
    conn = http.client.HTTPSConnection("127.0.0.1", tls_port, context=context, timeout=30)
    status, body = request(conn, "GET", "/v2/")
    assert status == 200 and json.loads(body) == {}
    status, body = request(conn, "GET", f"/v2/tls/app/blobs/{digest}")
    assert status == 200 and body == blob
    conn.close()
    plain.close()

    # An untrusting client is refused: the certificate is really the one we made.
    with (
        socket.create_connection(("127.0.0.1", tls_port), timeout=30) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname=HOSTNAME)


@pytest.mark.parametrize("problem", ["missing", "not-pem", "wrong-key", "no-key"])
def test_a_certificate_that_cannot_load_stops_start_up(
    hareg_launcher: Launcher, tmp_path: Path, problem: str
) -> None:
    cert, key, _ = self_signed(tmp_path, HOSTNAME)
    if problem == "missing":
        cert = tmp_path / "nowhere.crt"
        expected = f"route 'public': cannot read certificateFile {cert}: No such file or directory"
    elif problem == "not-pem":
        cert.write_text("this is not a certificate\n")
        expected = f"route 'public': certificateFile {cert} holds no PEM certificate"
    elif problem == "wrong-key":
        _, key, _ = self_signed(tmp_path, "other.example.test", name="other")
        expected = f"route 'public': keyFile {key} is not the key of certificateFile {cert}"
    else:
        key.write_text(cert.read_text())
        expected = f"route 'public': keyFile {key} holds no PEM private key"
    config = write_config(tmp_path / "hareg.yaml", [route(free_port(), cert, key)])
    server = hareg_launcher(tmp_path / "data", extra_args=["--config", str(config)], wait_ready=False)
    assert server.wait_exit() == 1
    stderr = server.stderr()
    assert expected in stderr, stderr
    assert "Traceback" not in stderr
    # Nothing was started: no etcd was spawned for a registry that cannot serve.
    assert not (tmp_path / "data" / "etcd" / "data").exists()
