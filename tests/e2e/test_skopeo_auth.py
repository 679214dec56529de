"""skopeo with credentials against ``hareg serve`` with an ``auth`` section.

htpasswd users made here with the bcrypt library; skopeo follows the token
flow (401 with a Bearer challenge, then ``/auth/token`` with its
``--dest-creds``/``--src-creds``).  Also: ``hareg serve`` on a non-loopback
address without ``auth`` refuses to start, saying why.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from hareg.cli.client import CliError, Remote, authorization, call

from .hareg_process import HaregServer, launch

TOOL_TIMEOUT = 120

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="skopeo and umoci are needed"
)


def skopeo(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["skopeo", "--insecure-policy", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("umoci-auth")
    path = root / "layout"
    subprocess.run(["umoci", "init", "--layout", str(path)], check=True, timeout=TOOL_TIMEOUT)
    subprocess.run(["umoci", "new", "--image", f"{path}:v1"], check=True, timeout=TOOL_TIMEOUT)
    src = root / "hello.txt"
    src.write_bytes(b"hello from an authenticated push\n")
    subprocess.run(
        ["umoci", "insert", "--image", f"{path}:v1", str(src), "/data/hello.txt"],
        check=True,
        timeout=TOOL_TIMEOUT,
    )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaregServer]:
    root = tmp_path_factory.mktemp("hareg-auth")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(
        "".join(
            f"{name}:{bcrypt.hashpw(f'{name}-pw'.encode(), bcrypt.gensalt(5)).decode()}\n"
            for name in ("ed", "vera", "root")
        )
    )
    config = root / "hareg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "auth": {
                    "htpasswd": {"path": str(htpasswd)},
                    "bindings": [
                        {"subject": "ed", "role": "editor", "repositories": ["team/*", "public/*"]},
                        {"subject": "vera", "role": "viewer", "repositories": ["team/*"]},
                        {"subject": "root", "role": "cluster-admin"},
                        {"subject": "anonymous", "role": "viewer", "repositories": ["public/*"]},
                    ],
                }
            }
        )
    )
    server = launch(root / "data", extra_args=["--config", str(config)])
    try:
        yield server
    finally:
        server.stop()


def status_of(url: str, user: str | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method)
    if user:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(f"{user}:{user}-pw".encode()).decode()
        )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_editor_pushes_and_a_viewer_pulls_but_may_not_push(
    server: HaregServer, layout: Path, tmp_path: Path
) -> None:
    ref = f"docker://{server.host_port}/team/app:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "ed:ed-pw", f"oci:{layout}:v1", ref)
    skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", "vera:vera-pw", ref, f"oci:{tmp_path / 'pulled'}:v1"
    )
    refused = skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", "vera:vera-pw", f"oci:{layout}:v1",
        f"docker://{server.host_port}/team/app:v2", ok=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "denied" in refused.stderr.lower() or "unauthorized" in refused.stderr.lower(), refused.stderr
    # Nor may ed push outside its patterns, nor anyone with a wrong password.
    outside = skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", "ed:ed-pw", f"oci:{layout}:v1",
        f"docker://{server.host_port}/other/app:v1", ok=False,
    )  # fmt: skip
    assert outside.returncode != 0
    wrong = skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", "ed:nope", f"oci:{layout}:v1", ref, ok=False
    )
    assert wrong.returncode != 0


def test_anonymous_pulls_only_where_bound(server: HaregServer, layout: Path, tmp_path: Path) -> None:
    public = f"docker://{server.host_port}/public/base:v1"
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "ed:ed-pw", f"oci:{layout}:v1", public)
    skopeo("copy", "--src-tls-verify=false", public, f"oci:{tmp_path / 'anon'}:v1")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "ed:ed-pw", f"oci:{layout}:v1",
           f"docker://{server.host_port}/team/private:v1")  # fmt: skip
    refused = skopeo(
        "copy", "--src-tls-verify=false", f"docker://{server.host_port}/team/private:v1",
        f"oci:{tmp_path / 'nope'}:v1", ok=False,
    )  # fmt: skip
    assert refused.returncode != 0


def test_cluster_endpoints_only_for_cluster_admin(server: HaregServer) -> None:
    url = f"http://{server.host_port}/hareg/v1/read-only"
    assert status_of(url) == 401
    assert status_of(url, "ed") == 403
    assert status_of(url, "root") == 200
    assert status_of(f"http://{server.host_port}/healthz") == 200


def test_the_token_endpoint_answers_the_spec_fields(server: HaregServer) -> None:
    request = urllib.request.Request(
        f"http://{server.host_port}/auth/token?service=hareg&scope=repository:team/app:pull",
        headers={"Authorization": "Basic " + base64.b64encode(b"vera:vera-pw").decode()},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}


def test_an_exposed_listener_without_auth_refuses_to_start(tmp_path: Path) -> None:
    server = launch(tmp_path / "data", listen="0.0.0.0:0", wait_ready=False)
    assert server.wait_exit() != 0
    stderr = server.stderr()
    assert "refusing to start" in stderr and "auth: {disabled: true}" in stderr, stderr


def test_an_exposed_listener_with_auth_disabled_starts(tmp_path: Path) -> None:
    config = tmp_path / "hareg.yaml"
    config.write_text("auth: {disabled: true}\n")
    # launch() returns once the server printed its ready line.
    server = launch(tmp_path / "data", listen="0.0.0.0:0", extra_args=["--config", str(config)])
    server.stop()


def test_sighup_rereads_htpasswd_and_bindings(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"ed:{bcrypt.hashpw(b'ed-pw', bcrypt.gensalt(5)).decode()}\n")
    config = tmp_path / "hareg.yaml"

    def write_config(role: str) -> None:
        doc = {"auth": {"htpasswd": {"path": str(htpasswd)},
                        "bindings": [{"subject": "ed", "role": role, "repositories": ["team/*"]},
                                     {"subject": "vera", "role": "cluster-admin"}]}}  # fmt: skip
        config.write_text(yaml.safe_dump(doc))

    write_config("viewer")
    server = launch(tmp_path / "data", extra_args=["--config", str(config)])
    try:
        upload = f"http://{server.host_port}/v2/team/app/blobs/uploads/"
        status = f"http://{server.host_port}/hareg/v1/read-only"
        assert status_of(upload, "ed", "POST") == 403
        assert status_of(status, "vera") == 401  # not a user yet
        write_config("editor")
        with htpasswd.open("a") as f:
            f.write(f"vera:{bcrypt.hashpw(b'vera-pw', bcrypt.gensalt(5)).decode()}\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while status_of(status, "vera") != 200:
            assert time.monotonic() < deadline, "the reload was never applied"
            time.sleep(0.05)
        assert status_of(upload, "ed", "POST") == 202
    finally:
        server.stop()


def test_the_cli_sends_credentials_from_the_environment(
    server: HaregServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://{server.host_port}"
    with pytest.raises(CliError, match=r"UNAUTHORIZED.*log in with --username"):
        call(Remote(url, authorization()), "GET", "/hareg/v1/read-only")
    monkeypatch.setenv("HAREG_USERNAME", "ed")
    monkeypatch.setenv("HAREG_PASSWORD", "ed-pw")
    with pytest.raises(CliError, match="DENIED"):
        call(Remote(url, authorization()), "GET", "/hareg/v1/read-only")
    monkeypatch.setenv("HAREG_USERNAME", "root")
    monkeypatch.setenv("HAREG_PASSWORD", "root-pw")
    status, doc = call(Remote(url, authorization()), "GET", "/hareg/v1/read-only")
    assert status == 200 and doc["readOnly"] is False
