"""podman with credentials against ``hareg serve`` with an ``auth`` section.

``podman login`` (``--password-stdin``, an ``--authfile`` in the test's
directory) then push and pull, through the token flow; a wrong password
makes the login fail and leaves the auth file as it was; a viewer pulls but
is refused a push; an editor is refused outside its patterns; anonymous
pulls only where ``anonymous`` has a binding, and pushes nowhere.  The tools
are configured and isolated as in ``test_podman.py`` (vfs storage, every
configuration file in the test's directory, a private ``/var/lib``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .auth_setup import password_of, serving_with_auth
from .hareg_process import HaregServer, wait_no_orphans
from .test_podman import TOOL_TIMEOUT, UPLOADS_ROUTE, Containers, configure, request_counts

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
HTTP_TIMEOUT = 30

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("podman", "buildah", "unshare")),
    reason="podman, buildah and unshare are needed (scripts/bootstrap installs them)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaregServer]:
    bindings = [
        {"subject": "ed", "role": "editor", "repositories": ["team/*", "public/*"]},
        {"subject": "vera", "role": "viewer", "repositories": ["team/*"]},
        {"subject": "anonymous", "role": "viewer", "repositories": ["public/*"]},
    ]
    with serving_with_auth(tmp_path_factory.mktemp("podman-auth"), ["ed", "vera"], bindings) as server:
        yield server


@pytest.fixture
def containers(tmp_path: Path, server: HaregServer) -> Iterator[Containers]:
    """A private, empty image store; skips the test if the tools cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("these tests run podman and buildah rootful: run them as root")
    root = tmp_path / "containers"
    root.mkdir()
    tools = configure(root, server.host_port)
    for tool in ("podman", "buildah"):
        probe = tools.try_run(tool, "images")
        if probe.returncode != 0:
            pytest.skip(f"{tool} cannot run here: {probe.stderr.strip()}")
    yield tools
    wait_no_orphans(root)


def podman_login(
    tools: Containers, server: HaregServer, authfile: Path, user: str, password: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tools.command("podman", "login", "--authfile", authfile, "--tls-verify=false",
                      "--username", user, "--password-stdin", server.host_port),
        input=password + "\n", capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=tools.env,
    )  # fmt: skip


def logged_in(tools: Containers, server: HaregServer, user: str) -> Path:
    """``podman login`` as ``user``; the auth file it wrote."""
    authfile = tools.root / f"{user}-auth.json"
    login = podman_login(tools, server, authfile, user, password_of(user))
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in login.stdout, login.stdout
    assert server.host_port in json.loads(authfile.read_text())["auths"]
    return authfile


def manifest_digest(server: HaregServer, repo: str, tag: str) -> str | None:
    r = requests.get(
        f"{server.url}/v2/{repo}/manifests/{tag}",
        auth=("ed", password_of("ed")),
        headers={"Accept": OCI_MANIFEST},
        timeout=HTTP_TIMEOUT,
    )
    return r.headers["Docker-Content-Digest"] if r.status_code == 200 else None


def refused(proc: subprocess.CompletedProcess[str]) -> None:
    """podman failed, saying it was refused (its words depend on the step:
    ``denied``, ``unauthorized``, or ``403 (Forbidden)`` for a blob it
    already knew of and checked first)."""
    assert proc.returncode != 0, proc.stdout
    message = proc.stderr.lower()
    assert any(word in message for word in ("denied", "unauthorized", "forbidden")), proc.stderr


def test_login_then_push_and_pull(server: HaregServer, containers: Containers) -> None:
    files = {"hello.txt": b"hello from an authenticated podman\n"}
    image = containers.build("auth/app:v1", files)
    image_id = containers.inspect(image)["Id"]
    ref = f"{server.host_port}/team/app:v1"
    push = ("push", "--tls-verify=false", *containers.policy)

    # Without logging in, refused.
    anonymous = containers.root / "anonymous-auth.json"
    anonymous.write_text('{"auths": {}}\n')
    refused(containers.try_run("podman", *push, "--authfile", anonymous, image, f"docker://{ref}"))
    assert manifest_digest(server, "team/app", "v1") is None

    authfile = logged_in(containers, server, "ed")
    digest_file = containers.root / "digest"
    containers.podman(*push, "--authfile", authfile, "--digestfile", digest_file, image, f"docker://{ref}")
    digest = digest_file.read_text().strip()
    assert manifest_digest(server, "team/app", "v1") == digest

    containers.podman("rmi", image)
    assert not containers.exists(image_id)
    pull = ("pull", "--quiet", "--tls-verify=false", *containers.policy)
    refused(containers.try_run("podman", *pull, "--authfile", anonymous, ref))
    assert containers.podman(*pull, "--authfile", authfile, ref) == image_id
    assert containers.inspect(ref)["Digest"] == digest
    assert containers.files(ref, list(files)) == files

    # podman logout forgets the credentials: a pull is refused again.
    containers.podman("logout", "--authfile", authfile, server.host_port)
    containers.podman("rmi", ref)
    refused(containers.try_run("podman", *pull, "--authfile", authfile, ref))


def test_a_wrong_password_fails_the_login(server: HaregServer, containers: Containers) -> None:
    authfile = containers.root / "auth.json"
    before = authfile.read_text()
    login = podman_login(containers, server, authfile, "ed", "not-the-password")
    assert login.returncode != 0
    assert "invalid username/password" in login.stderr.lower(), login.stderr
    assert authfile.read_text() == before
    unknown = podman_login(containers, server, authfile, "nobody", "nobody-pw")
    assert unknown.returncode != 0
    assert "invalid username/password" in unknown.stderr.lower(), unknown.stderr


def test_a_viewer_pulls_but_is_refused_a_push(server: HaregServer, containers: Containers) -> None:
    image = containers.build("auth/viewer:v1", {"v.txt": b"viewer\n"})
    ed = logged_in(containers, server, "ed")
    push = ("push", "--tls-verify=false", *containers.policy)
    containers.podman(*push, "--authfile", ed, image, f"docker://{server.host_port}/team/shared:v1")

    vera = logged_in(containers, server, "vera")
    refused(containers.try_run("podman", *push, "--authfile", vera, image,
                               f"docker://{server.host_port}/team/vera:v1"))  # fmt: skip
    assert manifest_digest(server, "team/vera", "v1") is None
    containers.podman("rmi", image)
    pulled = containers.podman("pull", "--quiet", "--tls-verify=false", *containers.policy, "--authfile", vera,
                               f"{server.host_port}/team/shared:v1")  # fmt: skip
    assert pulled

    # Nor may the editor push outside its patterns.
    refused(containers.try_run("podman", *push, "--authfile", ed, f"{server.host_port}/team/shared:v1",
                               f"docker://{server.host_port}/other/app:v1"))  # fmt: skip


def test_a_push_with_credentials_mounts_from_a_repository_it_can_pull(
    server: HaregServer, containers: Containers
) -> None:
    """buildah pushing an image podman pushed before mounts a blob from there:
    the token it asks for covers pull on the source as well (a mount refused
    would make it upload instead, and no mount would be counted)."""
    image = containers.build("auth/mounted:v1", {"m.bin": os.urandom(64 * 1024)})
    ed = logged_in(containers, server, "ed")
    push = ("push", "--tls-verify=false", *containers.policy, "--authfile", ed, image)
    containers.podman(*push, f"docker://{server.host_port}/team/source:v1")
    before = request_counts(server)
    containers.buildah(*push, f"docker://{server.host_port}/team/mounted:v1")
    delta = request_counts(server) - before
    assert delta["POST", UPLOADS_ROUTE, "201"] >= 1, delta  # ?mount=...&from=team/source
    assert manifest_digest(server, "team/mounted", "v1") == manifest_digest(server, "team/source", "v1")


def test_anonymous_pulls_only_where_bound(server: HaregServer, containers: Containers) -> None:
    image = containers.build("auth/public:v1", {"p.txt": b"public\n"})
    image_id = containers.inspect(image)["Id"]
    ed = logged_in(containers, server, "ed")
    push = ("push", "--tls-verify=false", *containers.policy, "--authfile", ed, image)
    containers.podman(*push, f"docker://{server.host_port}/public/base:v1")
    containers.podman(*push, f"docker://{server.host_port}/team/private:v1")
    containers.podman("rmi", image)

    anonymous = containers.root / "anonymous-auth.json"
    anonymous.write_text('{"auths": {}}\n')
    pull = ("pull", "--quiet", "--tls-verify=false", *containers.policy, "--authfile", anonymous)
    assert containers.podman(*pull, f"{server.host_port}/public/base:v1") == image_id
    refused(containers.try_run("podman", *pull, f"{server.host_port}/team/private:v1"))
    # Nor may anonymous push where it may pull.
    refused(containers.try_run("podman", "push", "--tls-verify=false", *containers.policy, "--authfile",
                               anonymous, image_id, f"docker://{server.host_port}/public/other:v1"))  # fmt: skip
