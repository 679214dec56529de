"""Refusals of ``hareg serve`` with an ``auth`` section, seen by real clients.

* Bearer tokens handed to skopeo as they are (``--registry-token``): one
  signed with the configured key (``auth.token.signingKeyFile``) for the
  right audience pulls; an expired one, one signed with another key, one for
  another audience and one for another repository are refused.
* The ``/hareg/v1`` cluster endpoints over real HTTP: refused to anonymous
  callers, viewers, editors and even an admin of every repository; served
  to a cluster-admin, with Basic credentials or a token from ``/auth/token``.
* Brute force with ``skopeo login``: after the configured number of wrong
  passwords from one address, 429 (skopeo: "too many requests"), even for
  the right password.
* At the most verbose log level, no password, token or password hash
  reaches the server's log.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hareg.registry.login_limits import DEFAULT_MAX_FAILURES
from hareg.registry.tokens import Grant, TokenIssuer, generate_key_pem

from .auth_setup import password_of, serving_with_auth
from .hareg_process import HaregServer

TOOL_TIMEOUT = 120
HTTP_TIMEOUT = 30
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
USERS = ("vera", "ed", "ada", "root")
BINDINGS = [
    {"subject": "vera", "role": "viewer", "repositories": ["team/*"]},
    {"subject": "ed", "role": "editor", "repositories": ["team/*"]},
    {"subject": "ada", "role": "admin", "repositories": ["*"]},
    {"subject": "root", "role": "cluster-admin"},
    {"subject": "anonymous", "role": "viewer", "repositories": ["public/*"]},
]
# Every cluster endpoint (hareg/http/app.py) and a request that changes nothing much.
CLUSTER_REQUESTS = [
    ("GET", "/hareg/v1/status", None),
    ("GET", "/hareg/v1/pruner", None),
    ("GET", "/hareg/v1/read-only", None),
    ("PUT", "/hareg/v1/read-only", {"readOnly": True}),
    ("POST", "/hareg/v1/prune", None),
    ("POST", "/hareg/v1/fsck", None),
]

needs_skopeo = pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is needed")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def key_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token-key") / "key.pem"
    path.write_bytes(generate_key_pem())
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-refusals")


@pytest.fixture(scope="module")
def server(root: Path, key_pem: Path) -> Iterator[HaregServer]:
    with serving_with_auth(
        root, USERS, BINDINGS, token={"signingKeyFile": str(key_pem)}, extra={"logLevel": "TraceAll"}
    ) as server:
        yield server


def call(
    server: HaregServer,
    method: str,
    path: str,
    user: str | None = None,
    *,
    bearer: str | None = None,
    **kw: Any,
) -> requests.Response:
    headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {bearer}"} if bearer else {})}
    auth = (user, password_of(user)) if user else None
    return requests.request(method, server.url + path, auth=auth, headers=headers, timeout=HTTP_TIMEOUT, **kw)


@pytest.fixture(scope="module")
def pushed(server: HaregServer) -> bytes:
    """``team/app:v1``, pushed by the editor with Basic credentials: its manifest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = b"a layer pushed with credentials\n" * 10
    for blob in (config, layer):
        r = call(
            server, "POST", "/v2/team/app/blobs/uploads/", "ed", params={"digest": sha256(blob)}, data=blob
        )
        assert r.status_code == 201, r.text
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                    "size": len(layer)}],
    }).encode()  # fmt: skip
    r = call(server, "PUT", "/v2/team/app/manifests/v1", "ed", data=manifest,
             headers={"Content-Type": OCI_MANIFEST})  # fmt: skip
    assert r.status_code == 201, r.text
    return manifest


def skopeo_inspect(
    server: HaregServer, token: str, repo: str = "team/app"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--registry-token", token,
         f"docker://{server.host_port}/{repo}:v1"],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


PULL_TEAM_APP = [Grant("repository", "team/app", ("pull",))]


@needs_skopeo
def test_skopeo_pulls_with_a_good_token(server: HaregServer, key_pem: Path, pushed: bytes) -> None:
    token = TokenIssuer(key_pem.read_bytes(), "hareg", 300).issue("vera", PULL_TEAM_APP, time.time(), "good")
    proc = skopeo_inspect(server, token)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.encode() == pushed


@needs_skopeo
@pytest.mark.parametrize("problem", ["expired", "wrongly signed", "wrong audience", "another repository"])
def test_skopeo_is_refused_an_unacceptable_token(
    server: HaregServer, key_pem: Path, pushed: bytes, problem: str
) -> None:
    pem, now, repo = key_pem.read_bytes(), time.time(), "team/app"
    if problem == "expired":
        token = TokenIssuer(pem, "hareg", 300).issue("vera", PULL_TEAM_APP, now - 3600, "old")
    elif problem == "wrongly signed":
        token = TokenIssuer(generate_key_pem(), "hareg", 300).issue("vera", PULL_TEAM_APP, now, "forged")
    elif problem == "wrong audience":
        token = TokenIssuer(pem, "another-registry", 300).issue("vera", PULL_TEAM_APP, now, "elsewhere")
    else:
        token, repo = TokenIssuer(pem, "hareg", 300).issue("vera", PULL_TEAM_APP, now, "narrow"), "team/other"
        assert call(server, "GET", "/v2/team/other/tags/list", "root").status_code == 404  # it may not exist
    proc = skopeo_inspect(server, token, repo)
    assert proc.returncode != 0, proc.stdout
    assert "unauthorized" in proc.stderr.lower(), proc.stderr
    # The same token over plain HTTP: 401, and the challenge says why.
    r = call(server, "GET", f"/v2/{repo}/manifests/v1", bearer=token, headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    error = "insufficient_scope" if problem == "another repository" else "invalid_token"
    assert f'error="{error}"' in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("user", "status", "code"), [
    (None, 401, "UNAUTHORIZED"), ("vera", 403, "DENIED"), ("ed", 403, "DENIED"), ("ada", 403, "DENIED"),
])  # fmt: skip
def test_cluster_endpoints_are_refused_to_all_but_cluster_admin(
    server: HaregServer, user: str | None, status: int, code: str
) -> None:
    for method, path, body in CLUSTER_REQUESTS:
        r = call(server, method, path, user, json=body)
        assert (r.status_code, r.json()["errors"][0]["code"]) == (status, code), (method, path, r.text)
    # Nor does a token get them there: the token endpoint grants no cluster scope.
    if user is not None:
        r = call(
            server, "GET", "/auth/token", user, params={"service": "hareg", "scope": "registry:cluster:*"}
        )
        assert r.status_code == 200
        r = call(server, "GET", "/hareg/v1/status", bearer=r.json()["token"])
        assert r.status_code == 403, r.text
    assert call(server, "GET", "/hareg/v1/read-only", "root").json()["readOnly"] is False


def test_cluster_endpoints_serve_a_cluster_admin(server: HaregServer) -> None:
    assert call(server, "GET", "/hareg/v1/status", "root").status_code == 200
    assert call(server, "GET", "/hareg/v1/pruner", "root").status_code == 200
    r = call(server, "GET", "/auth/token", "root", params={"service": "hareg", "scope": "registry:cluster:*"})
    token = r.json()["token"]
    r = call(server, "PUT", "/hareg/v1/read-only", bearer=token, json={"readOnly": True})
    assert r.status_code == 200, r.text
    try:
        assert call(server, "GET", "/hareg/v1/read-only", bearer=token).json()["readOnly"] is True
    finally:
        r = call(server, "PUT", "/hareg/v1/read-only", "root", json={"readOnly": False})
        assert r.status_code == 200, r.text


def test_nothing_secret_reaches_the_log(
    server: HaregServer, root: Path, key_pem: Path, pushed: bytes
) -> None:
    """At TraceAll, after logins, token requests, uses and refusals."""
    r = call(
        server, "GET", "/auth/token", "ed", params={"service": "hareg", "scope": "repository:team/app:pull"}
    )
    token = r.json()["token"]
    assert call(server, "GET", "/v2/team/app/manifests/v1", bearer=token).status_code == 200
    assert call(server, "GET", "/v2/", bearer=token + "x").status_code == 401
    wrong = requests.get(f"{server.url}/v2/", auth=("vera", "a-wrong-secret"), timeout=HTTP_TIMEOUT)
    assert wrong.status_code == 401
    log = server.stderr()
    assert '"logger": "hareg.audit"' in log  # the log is there, and verbose
    hashes = [line.split(":", 1)[1] for line in (root / "htpasswd").read_text().splitlines()]
    for secret in [token, token.split(".")[2], "a-wrong-secret", *map(password_of, USERS), "Basic ",
                   key_pem.read_text().splitlines()[1], *hashes]:  # fmt: skip
        assert secret not in log, f"{secret[:12]}... reached the log"


@needs_skopeo
def test_brute_force_with_skopeo_login_is_answered_429(tmp_path: Path) -> None:
    """A server of its own: the lockout covers the client's address."""
    authfile = tmp_path / "auth.json"

    def login(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["skopeo", "login", "--tls-verify=false", "--authfile", str(authfile), "--username", "ed",
             "--password-stdin", server.host_port],
            input=password + "\n", capture_output=True, text=True, timeout=TOOL_TIMEOUT,
        )  # fmt: skip

    with serving_with_auth(tmp_path, ["ed"], BINDINGS[1:2]) as server:
        assert login(password_of("ed")).returncode == 0  # the right password works at first
        for attempt in range(DEFAULT_MAX_FAILURES):
            proc = login(f"guess-{attempt}")
            assert proc.returncode != 0
            assert "invalid username/password" in proc.stderr, proc.stderr
        for password in ("guess-again", password_of("ed")):
            proc = login(password)
            assert proc.returncode != 0
            assert "too many requests" in proc.stderr, proc.stderr
        r = requests.get(f"{server.url}/v2/", auth=("ed", password_of("ed")), timeout=HTTP_TIMEOUT)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
