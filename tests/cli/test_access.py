"""``hareg access`` as a user runs it: the real command in a child process
against a real ``hareg serve`` with an ``auth`` section, and a robot account
it creates pushing with skopeo."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import yaml
from cli_process import PROJECT_ROOT
from e2e.hareg_process import HAREG, HaregServer, launch

pytestmark = [pytest.mark.timeout(300)]

TRACEBACK = "Traceback (most recent call last)"
TOOL_TIMEOUT = 120


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaregServer]:
    root = tmp_path_factory.mktemp("hareg-access")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(
        "".join(
            f"{n}:{bcrypt.hashpw(f'{n}-pw'.encode(), bcrypt.gensalt(4)).decode()}\n" for n in ("root", "ed")
        )
    )
    config = root / "hareg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "auth": {
                    "htpasswd": {"path": str(htpasswd)},
                    "bindings": [{"subject": "root", "role": "cluster-admin"}],
                }
            }
        )
    )
    server = launch(root / "data", extra_args=["--config", str(config)])
    try:
        yield server
    finally:
        server.stop()


def hareg(server: HaregServer, *args: str, user: str | None = None, stdin: str | None = None) -> Run:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), HAREG_REGISTRY=server.url)
    for name in ("HAREG_USERNAME", "HAREG_PASSWORD"):
        env.pop(name, None)
    if user is not None:
        env.update(HAREG_USERNAME=user, HAREG_PASSWORD=f"{user}-pw")
    proc = subprocess.run(
        [*HAREG, *args], capture_output=True, text=True, env=env, timeout=60, input=stdin or ""
    )
    assert TRACEBACK not in proc.stderr, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_grant_list_and_revoke(server: HaregServer) -> None:
    run = hareg(server, "access", "grant", "ed", "editor", "team/*", "--username", "root", "--password-stdin",
                stdin="root-pw\n")  # fmt: skip
    assert run.code == 0, run.err
    assert run.out.strip() == "granted editor on team/* to ed"
    again = hareg(server, "access", "grant", "ed", "editor", "team/*", user="root")
    assert again.code == 0 and "already granted" in again.out
    listed = hareg(server, "access", "list", user="root")
    assert listed.code == 0
    lines = listed.out.splitlines()
    assert lines[0].split() == ["SUBJECT", "ROLE", "REPOSITORIES", "SOURCE", "BY"]
    assert any(line.split()[:4] == ["root", "cluster-admin", "*", "config"] for line in lines)
    assert any(
        line.split()[:3] == ["ed", "editor", "team/*"] and line.split()[-1] == "root" for line in lines
    )
    assert hareg(server, "access", "revoke", "ed", "editor", "team/*", user="root").code == 0
    gone = hareg(server, "access", "revoke", "ed", "editor", "team/*", user="root")
    assert gone.code == 1 and "no such runtime grant" in gone.err


def test_refusals_are_one_clear_line(server: HaregServer) -> None:
    anonymous = hareg(server, "access", "list")
    assert anonymous.code == 1
    assert "UNAUTHORIZED" in anonymous.err and "--username" in anonymous.err
    assert len(anonymous.err.strip().splitlines()) == 1
    editor = hareg(server, "access", "grant", "ed", "admin", "team/*", user="ed")
    assert editor.code == 1 and "DENIED" in editor.err
    wrong = hareg(server, "access", "list", "--username", "root", "--password-stdin", stdin="guess\n")
    assert wrong.code == 1 and "invalid user name or password" in wrong.err
    no_user = hareg(server, "access", "list", "--password-stdin", stdin="x\n")
    assert no_user.code == 2 and "--password-stdin needs --username" in no_user.err
    bad_role = hareg(server, "access", "grant", "ed", "owner", "x", user="root")
    assert bad_role.code == 2 and "invalid choice" in bad_role.err
    bad_pattern = hareg(server, "access", "grant", "ed", "cluster-admin", "team/*", user="root")
    assert bad_pattern.code == 1 and "pattern: cluster-admin covers every repository" in bad_pattern.err


@pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="skopeo and umoci are needed"
)
def test_a_robot_account_pushes_with_skopeo_until_deleted(server: HaregServer, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    for cmd in (["umoci", "init", "--layout", str(layout)], ["umoci", "new", "--image", f"{layout}:v1"]):
        subprocess.run(cmd, check=True, timeout=TOOL_TIMEOUT)
    created = hareg(server, "access", "robot", "create", "ci", user="root")
    assert created.code == 0, created.err
    secret = created.out.splitlines()[1]
    assert secret.startswith("hrs_") and "robot+ci" in created.out
    assert hareg(server, "access", "grant", "robot+ci", "editor", "ci/*", user="root").code == 0
    listed = hareg(server, "access", "robot", "list", user="root")
    assert "robot+ci" in listed.out and secret not in listed.out

    def push(tag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "--dest-creds",
             f"robot+ci:{secret}", f"oci:{layout}:v1", f"docker://{server.url.removeprefix('http://')}/ci/app:{tag}"],
            capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    first = push("v1")
    assert first.returncode == 0, first.stderr
    deleted = hareg(server, "access", "robot", "delete", "ci", user="root")
    assert deleted.code == 0 and "deleted, with its grants" in deleted.out
    refused = push("v2")
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "authentication" in refused.stderr.lower(), (
        refused.stderr
    )
