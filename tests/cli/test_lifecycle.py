"""``hareg history``, ``hareg rollback`` and ``hareg immutable`` as a user runs
them: the real command in a child process, against a real ``hareg serve``
(embedded etcd, filesystem blobs).  Exit codes 0/1/2, one-line errors, no
tracebacks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_process import PROJECT_ROOT
from e2e.hareg_process import HAREG, HaregServer

from hareg.cli.main import main
from hareg.processes.ports import free_port

pytestmark = [pytest.mark.timeout(180)]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def server(hareg_server: HaregServer) -> HaregServer:
    return hareg_server


@dataclass
class Run:
    code: int
    out: str
    err: str


def hareg(server: HaregServer | None, *args: str, registry_env: bool = True) -> Run:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    env.pop("HAREG_REGISTRY", None)
    if server is not None and registry_env:
        env["HAREG_REGISTRY"] = server.url
    proc = subprocess.run([*HAREG, *args], capture_output=True, text=True, env=env, timeout=60)
    assert TRACEBACK not in proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


def request(url: str, method: str, data: bytes | None = None, content_type: str | None = None) -> int:
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status: int = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(server: HaregServer, repo: str, tag: str | None, seed: str) -> tuple[str, int]:
    """Push a one-layer image (by digest if ``tag`` is None); (manifest
    digest, status of the manifest PUT)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer {seed}\n".encode() * 100
    for blob in (config, layer):
        url = f"{server.url}/v2/{repo}/blobs/uploads/?digest={sha256(blob)}"
        assert request(url, "POST", blob, "application/octet-stream") == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    reference = tag or sha256(manifest)
    status = request(f"{server.url}/v2/{repo}/manifests/{reference}", "PUT", manifest, OCI_MANIFEST)
    return sha256(manifest), status


def short(digest: str) -> str:
    return digest[: len("sha256:") + 12]


def test_history_table_and_json(server: HaregServer) -> None:
    a, _ = push(server, "cli/history", "v1", "a")
    b, _ = push(server, "cli/history", "v1", "b")
    run = hareg(server, "history", "cli/history:v1")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert re.match(r"^SEQ\s+TIME\s+ACTION\s+OLD → NEW\s+REPLICA$", lines[0]), lines[0]
    assert len(lines) == 3
    assert re.match(rf"^1\s+\S+Z\s+push\s+- → {short(a)}\s+\S+$", lines[1]), lines[1]
    assert re.match(rf"^2\s+\S+Z\s+push\s+{short(a)} → {short(b)}\s+\S+$", lines[2]), lines[2]

    run = hareg(server, "history", "cli/history:v1", "--no-trunc")
    assert f"{a} → {b}" in run.out

    run = hareg(server, "history", "cli/history:v1", "--json")
    assert run.code == 0
    entries = json.loads(run.out)
    assert [(e["seq"], e["action"], e["old"], e["new"]) for e in entries] == [
        (1, "push", None, a),
        (2, "push", a, b),
    ]


def test_rollback_by_digest_or_short_prefix(server: HaregServer) -> None:
    a, _ = push(server, "cli/rollback", "latest", "a")
    b, _ = push(server, "cli/rollback", "latest", "b")
    # As the history table shows it; --registry instead of $HAREG_REGISTRY.
    run = hareg(
        server, "rollback", "cli/rollback:latest", short(a), "--registry", server.url, registry_env=False
    )
    assert run.code == 0, run.err
    assert run.out.strip() == f"cli/rollback:latest now points at {a} (history entry 3; was {b})"
    run = hareg(server, "rollback", "cli/rollback:latest", a)
    assert run.code == 0
    assert run.out.strip() == f"cli/rollback:latest already points at {a}; nothing changed"
    run = hareg(server, "rollback", "cli/rollback:latest", b, "--json")
    assert run.code == 0
    assert json.loads(run.out)["action"] == "rollback"
    run = hareg(server, "history", "cli/rollback:latest", "--json")
    assert [(e["action"], e["new"]) for e in json.loads(run.out)] == [
        ("push", a),
        ("push", b),
        ("rollback", a),
        ("rollback", b),
    ]


def test_immutable_set_show_enforce_off(server: HaregServer) -> None:
    push(server, "cli/immutable", "v1", "a")
    run = hareg(server, "immutable", "cli/immutable")
    assert (run.code, run.out) == (0, "cli/immutable: no immutable tags\n")
    run = hareg(server, "immutable", "cli/immutable", "--pattern", "v*", "--pattern", "release-*")
    assert run.code == 0, run.err
    assert run.out.splitlines()[1:] == ["  v*", "  release-*"]
    assert "cannot be moved or deleted" in run.out.splitlines()[0]
    run = hareg(server, "immutable", "cli/immutable", "--show", "--json")
    doc = json.loads(run.out)
    assert doc["patterns"] == ["v*", "release-*"]

    b, status = push(server, "cli/immutable", "v1", "b")
    assert status == 409
    assert push(server, "cli/immutable", None, "b") == (b, 201)
    run = hareg(server, "rollback", "cli/immutable:v1", b)
    assert run.code == 1
    assert run.err.strip() == "hareg rollback: tag v1 in cli/immutable is immutable (pattern 'v*') (DENIED)"

    run = hareg(server, "immutable", "cli/immutable", "--off")
    assert (run.code, run.out) == (0, "cli/immutable: no immutable tags\n")
    assert hareg(server, "rollback", "cli/immutable:v1", b).code == 0


def test_registry_refusals_exit_1(server: HaregServer) -> None:
    push(server, "cli/errors", "v1", "a")
    run = hareg(server, "history", "cli/errors:nope")
    assert run.code == 1
    assert (
        run.err.strip()
        == "hareg history: tag nope has no history in repository cli/errors (MANIFEST_UNKNOWN)"
    )
    run = hareg(server, "history", "cli/unknown:v1")
    assert run.code == 1 and "NAME_UNKNOWN" in run.err
    run = hareg(server, "rollback", "cli/errors:v1", "sha256:" + "0" * 64)
    assert run.code == 1 and "is not in repository cli/errors (MANIFEST_UNKNOWN)" in run.err
    run = hareg(server, "rollback", "cli/errors:v1", "deadbeef")
    assert run.code == 1 and "no digest in the history of cli/errors:v1 starts with 'deadbeef'" in run.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["history", "app"], "expected REPO:TAG"),
        (["history", "App:v1"], "invalid repository name"),
        (["history", "app:-v"], "invalid tag"),
        (["history", "localhost:5000/app:v1"], "without a host"),
        (["rollback", "app:v1", "sha256:zz!"], "is not a digest"),
        (["immutable", "Bad"], "invalid repository name"),
        (["immutable", "app", "--pattern", "a/b"], "invalid immutability pattern"),
        (["immutable", "app", "--pattern", "v*", "--off"], "not allowed with argument"),
        (["history", "app:v1", "--registry", "ftp://x"], "expected http://HOST:PORT"),
        (["rollback", "app:v1"], "required"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    run = hareg(None, *args)
    assert run.code == 2, (run.code, run.out, run.err)
    assert message in run.err, run.err


def test_unreachable_registry_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["history", "app:v1", "--registry", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"hareg history: cannot reach the registry at {url}: "), err
    assert err.count("\n") == 1


def test_default_registry_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HAREG_REGISTRY", url)
    assert main(["immutable", "app"]) == 1
    assert f"cannot reach the registry at {url}" in capsys.readouterr().err
    monkeypatch.delenv("HAREG_REGISTRY")
    from hareg.cli.client import DEFAULT_REGISTRY

    assert DEFAULT_REGISTRY == "http://127.0.0.1:5000"


def test_help_lists_the_commands(tmp_path: Path) -> None:
    run = hareg(None, "--help")
    for command in ("history", "rollback", "immutable"):
        assert command in run.out
