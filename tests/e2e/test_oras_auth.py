"""The ``oras`` Python client with credentials against ``hareg serve`` with
an ``auth`` section.

``login`` keeps the credentials in a docker config file under the test's
directory (oras-py's login writes it without asking the registry).  A push
sends them as Basic credentials (oras-py's ``basic`` backend: hareg accepts
Basic on ``/v2/``); a pull follows the token flow (the default ``token``
backend: 401 challenge, ``/auth/token`` with Basic, the request again with
the token).  oras-py's token backend cannot push to a registry that answers
the spec's 401 ``insufficient_scope`` (distribution does too): it keeps the
pull-only token its first HEAD got and sends it again, refreshing only on a
403.  A viewer is refused a push; without credentials, nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import oras.client
import pytest
import requests

from .auth_setup import password_of, serving_with_auth
from .hareg_process import HaregServer

TIMEOUT = 30
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONTENT = b"pushed with credentials\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaregServer]:
    bindings = [
        {"subject": "ed", "role": "editor", "repositories": ["team/*"]},
        {"subject": "vera", "role": "viewer", "repositories": ["team/*"]},
    ]
    with serving_with_auth(tmp_path_factory.mktemp("oras-auth"), ["ed", "vera"], bindings) as server:
        yield server


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """oras also reads ~/.docker/config.json, and pushes only files under the
    working directory: a home and a working directory of the test's."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "note.txt").write_bytes(CONTENT)
    return tmp_path


def login(server: HaregServer, user: str, backend: str = "token") -> tuple[oras.client.OrasClient, str]:
    """A client logged in as ``user``, and the docker config file holding the credentials."""
    config = Path(f"{user}-config.json").resolve()
    client = oras.client.OrasClient(hostname=server.host_port, insecure=True, auth_backend=backend)
    client.login(user, password_of(user), hostname=server.host_port, config_path=str(config))
    assert json.loads(config.read_text())["auths"][server.host_port]["auth"]
    return client, str(config)


def manifest_status(server: HaregServer, repo: str, tag: str) -> int:
    r = requests.get(
        f"{server.url}/v2/{repo}/manifests/{tag}",
        auth=("ed", password_of("ed")),
        headers={"Accept": OCI_MANIFEST},
        timeout=TIMEOUT,
    )
    return r.status_code


def test_push_with_credentials_and_pull_through_the_token_flow(server: HaregServer, workdir: Path) -> None:
    ed, ed_config = login(server, "ed", backend="basic")
    target = f"{server.host_port}/team/notes:v1"
    pushed = ed.push(target=target, files=["note.txt"], config_path=ed_config)
    assert pushed.status_code == 201, pushed.text
    assert manifest_status(server, "team/notes", "v1") == 200
    # Not for anonymous callers.
    assert requests.get(f"{server.url}/v2/team/notes/manifests/v1", timeout=TIMEOUT).status_code == 401

    vera, vera_config = login(server, "vera")
    files = vera.pull(target=target, outdir=str(workdir / "pulled"), config_path=vera_config)
    assert [Path(f).read_bytes() for f in files] == [CONTENT]
    assert vera.auth.token  # the pull went through the token flow


def test_a_viewer_is_refused_a_push(server: HaregServer) -> None:
    vera, vera_config = login(server, "vera", backend="basic")
    with pytest.raises(ValueError, match="DENIED"):
        vera.push(target=f"{server.host_port}/team/vera:v1", files=["note.txt"], config_path=vera_config)
    assert manifest_status(server, "team/vera", "v1") == 404


def test_an_editor_is_refused_outside_its_patterns(server: HaregServer) -> None:
    ed, ed_config = login(server, "ed", backend="basic")
    with pytest.raises(ValueError, match="DENIED"):
        ed.push(target=f"{server.host_port}/other/notes:v1", files=["note.txt"], config_path=ed_config)


def test_without_credentials_nothing_is_pushed_or_pulled(server: HaregServer, workdir: Path) -> None:
    ed, ed_config = login(server, "ed", backend="basic")
    target = f"{server.host_port}/team/private:v1"
    assert ed.push(target=target, files=["note.txt"], config_path=ed_config).status_code == 201

    stranger = oras.client.OrasClient(hostname=server.host_port, insecure=True)
    with pytest.raises(ValueError, match="UNAUTHORIZED"):
        stranger.push(target=f"{server.host_port}/team/anon:v1", files=["note.txt"])
    assert manifest_status(server, "team/anon", "v1") == 404
    with pytest.raises(ValueError, match="Unauthorized"):  # oras-py words it so for a pull
        stranger.pull(target=target, outdir=str(workdir / "anon"))
    assert not (workdir / "anon" / "note.txt").exists()
