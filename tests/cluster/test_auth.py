"""A real ``hareg cluster up`` with an ``auth`` section (one etcd member, the
object store, 2 replicas, haproxy): every replica gets the same users and
the same token key, so a token obtained from one replica is accepted by the
other and through haproxy; a grant, a revoke and a robot account made with
``hareg access`` through one replica apply at once on the other; a request without credentials gets the Bearer
challenge; pushes through haproxy work with credentials (HTTP, and skopeo's
token flow); a changed htpasswd file rolls the replicas onto it on SIGHUP and
tokens issued before stay valid (the key is kept in etcd); a signing key
file named on SIGHUP replaces that key on every replica.  One cluster for
the module, tests in file order."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import yaml
from cli_process import child_env
from e2e.hareg_process import HAREG

from hareg.registry.tokens import TokenIssuer, generate_key_pem

from .cluster_process import EVENT_TIMEOUT, ClusterRun, launch, recorded_pids, wait_for, wait_gone
from .conftest import require_cluster_tools
from .oci import pull_image, push_image

pytestmark = pytest.mark.timeout(300)

SCOPE = "repository:team/app:pull,push"


def user_line(name: str) -> str:
    return f"{name}:{bcrypt.hashpw(f'{name}-pw'.encode(), bcrypt.gensalt(4)).decode()}\n"


def config_text(htpasswd: Path, signing_key: Path | None = None) -> str:
    return yaml.safe_dump(
        {
            "managementState": "Managed",
            "replicas": 2,
            "auth": {
                "htpasswd": {"path": str(htpasswd)},
                "token": {"signingKeyFile": str(signing_key) if signing_key else None},
                "bindings": [
                    {"subject": "ed", "role": "editor", "repositories": ["team/*"]},
                    {"subject": "vera", "role": "viewer", "repositories": ["team/*"]},
                    {"subject": "root", "role": "cluster-admin"},
                ],
            },
        }
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterRun]:
    require_cluster_tools()
    directory = tmp_path_factory.mktemp("auth-cluster")
    htpasswd = directory / "users.htpasswd"
    htpasswd.write_text(user_line("ed") + user_line("vera") + user_line("root"))
    run = launch(directory, args=("--etcd-members", "1"), config_text=config_text(htpasswd))
    pids = recorded_pids(run)
    try:
        yield run
    finally:
        pids |= recorded_pids(run)
        if run.proc.poll() is None:
            code = run.stop(signal.SIGTERM)
            assert code == 0, f"exit code {code}; stderr:\n{run.stderr()[-4000:]}"
        wait_gone(pids)
        shutil.rmtree(directory, ignore_errors=True)


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{user}-pw".encode()).decode()


def get(url: str, authorization: str | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status), resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def token_from(base: str, user: str, scope: str = SCOPE) -> str:
    status, _, body = get(f"{base}/auth/token?service=hareg&scope={scope}", basic(user))
    assert status == 200, body
    token = json.loads(body)["token"]
    assert isinstance(token, str)
    return token


def replica_urls(cluster: ClusterRun) -> list[str]:
    return [r["url"] for r in cluster.info()["replicas"]]


def wait_rolled(cluster: ClusterRun, before: dict[str, int]) -> None:
    def rolled() -> bool:
        now = {r["name"]: r["pid"] for r in cluster.info()["replicas"]}
        return all(now[n] not in (None, before[n]) for n in before) and all(
            get(f"{url}/readyz")[0] == 200 for url in replica_urls(cluster)
        )

    wait_for(rolled, 3 * EVENT_TIMEOUT, "every replica restarted and ready", interval=0.2)


def test_every_replica_reads_the_same_copied_users(cluster: ClusterRun) -> None:
    copy = cluster.dir / "auth" / "htpasswd"
    assert copy.stat().st_mode & 0o777 == 0o600
    assert cluster.config_path is not None
    assert copy.read_text() == (cluster.config_path.parent / "users.htpasswd").read_text()
    replica_config = yaml.safe_load((cluster.dir / "hareg.yaml").read_text())
    assert replica_config["auth"]["htpasswd"]["path"] == str(copy)
    assert replica_config["auth"]["token"]["signingKeyFile"] is None, "the key generated once, kept in etcd"
    assert not (cluster.dir / "auth" / "token-key.pem").exists()


def test_without_credentials_the_bearer_challenge(cluster: ClusterRun) -> None:
    for base in [cluster.url, *replica_urls(cluster)]:
        status, headers, body = get(f"{base}/v2/team/app/manifests/v1")
        assert status == 401, body
        assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
        assert headers["WWW-Authenticate"] == (
            f'Bearer realm="{base}/auth/token",service="hareg",scope="repository:team/app:pull"'
        )
    assert get(f"{cluster.url}/readyz")[0] == 200, "health stays open (haproxy checks it)"


async def test_a_token_from_one_replica_works_on_the_other_and_through_haproxy(cluster: ClusterRun) -> None:
    first, second = replica_urls(cluster)
    token = token_from(first, "ed")
    bearer = {"Authorization": f"Bearer {token}"}
    tag = f"v-{uuid.uuid4().hex[:8]}"
    # Every request of the push goes round robin through haproxy: to both replicas.
    async with aiohttp.ClientSession(headers=bearer) as session:
        image = await push_image(session, cluster.url, "team/app", tag)
        for base in (second, first, cluster.url):
            await pull_image(session, base, "team/app", tag, image)
    # And the other way round: a token of the second replica's, on the first.
    other = token_from(second, "vera", "repository:team/app:pull")
    status, _, body = get(f"{first}/v2/team/app/tags/list", f"Bearer {other}")
    assert status == 200 and tag in json.loads(body)["tags"]
    # A token whose signature is not the cluster's is refused everywhere.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for base in (first, second, cluster.url):
        status, headers, _ = get(f"{base}/v2/team/app/tags/list", f"Bearer {forged}")
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    # A viewer's token does not push; Basic credentials through haproxy do.
    viewer = aiohttp.ClientSession(headers={"Authorization": f"Bearer {other}"})
    async with viewer, viewer.post(f"{cluster.url}/v2/team/app/blobs/uploads/") as resp:
        assert resp.status == 403, await resp.text()
    async with aiohttp.ClientSession(headers={"Authorization": basic("ed")}) as session:
        await push_image(session, cluster.url, "team/app", f"{tag}-basic")


def hareg_access(base: str, *args: str) -> str:
    """``hareg access ...`` as root against one replica; its standard output."""
    env = dict(child_env(), HAREG_REGISTRY=base, HAREG_USERNAME="root", HAREG_PASSWORD="root-pw")
    proc = subprocess.run([*HAREG, "access", *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def post_upload(base: str, authorization: str) -> int:
    request = urllib.request.Request(f"{base}/v2/team/grants/blobs/uploads/", method="POST")
    request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_runtime_grant_and_revoke_apply_at_once_on_the_other_replica(cluster: ClusterRun) -> None:
    first, second = replica_urls(cluster)
    assert post_upload(second, basic("vera")) == 403
    hareg_access(first, "grant", "vera", "editor", "team/*")
    assert post_upload(second, basic("vera")) == 202  # the next request, on the other replica
    hareg_access(first, "revoke", "vera", "editor", "team/*")
    assert post_upload(second, basic("vera")) == 403
    # A robot account made through one replica pushes through the other at once.
    secret = hareg_access(second, "robot", "create", "ci").splitlines()[1]
    robot = "Basic " + base64.b64encode(f"robot+ci:{secret}".encode()).decode()
    hareg_access(second, "grant", "robot+ci", "editor", "team/*")
    assert post_upload(first, robot) == 202
    hareg_access(second, "robot", "delete", "ci")
    assert post_upload(first, robot) == 401


@pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="skopeo and umoci are needed"
)
def test_skopeo_pushes_and_pulls_through_haproxy_with_credentials(
    cluster: ClusterRun, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, timeout=120)
    subprocess.run(["umoci", "new", "--image", f"{layout}:v1"], check=True, timeout=120)
    ref = f"docker://127.0.0.1:{cluster.port}/team/skopeo:v1"

    def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["skopeo", "--insecure-policy", *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    pushed = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "ed:ed-pw", f"oci:{layout}:v1", ref)
    assert pushed.returncode == 0, pushed.stderr
    pulled = skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", "vera:vera-pw", ref, f"oci:{tmp_path}/out:v1"
    )
    assert pulled.returncode == 0, pulled.stderr
    anonymous = skopeo("copy", "--src-tls-verify=false", ref, f"oci:{tmp_path}/anon:v1")
    assert anonymous.returncode != 0
    assert "unauthorized" in anonymous.stderr.lower() or "authentication required" in anonymous.stderr.lower()


def test_a_changed_htpasswd_rolls_the_replicas_and_tokens_stay_valid(cluster: ClusterRun) -> None:
    assert cluster.config_path is not None
    htpasswd = cluster.config_path.parent / "users.htpasswd"
    token = token_from(cluster.url, "vera", "repository:team/app:pull")
    before = {r["name"]: r["pid"] for r in cluster.info()["replicas"]}
    assert get(f"{cluster.url}/v2/", basic("nina"))[0] == 401, "not a user yet"

    # Only the users file changes, not the configuration: the copy changes, so the replicas roll.
    htpasswd.write_text(htpasswd.read_text() + user_line("nina"))
    os.kill(cluster.pid, signal.SIGHUP)

    wait_rolled(cluster, before)
    assert "nina:" in (cluster.dir / "auth" / "htpasswd").read_text()
    for base in replica_urls(cluster):
        assert get(f"{base}/v2/", basic("nina"))[0] == 200
        # A user now, but bound to no role.
        assert get(f"{base}/v2/team/app/tags/list", basic("nina"))[0] == 403
        # Issued before the roll: the restarted replicas read the same key from etcd.
        assert get(f"{base}/v2/team/app/tags/list", f"Bearer {token}")[0] == 200
        status, _, body = get(f"{base}/v2/team/app/manifests/nope", f"Bearer {token}")
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_a_signing_key_file_on_sighup_rotates_the_key_of_every_replica(cluster: ClusterRun) -> None:
    """What docs/security.md says clients notice: tokens signed with the old
    key are refused everywhere; new ones, from any replica, work on all."""
    assert cluster.config_path is not None
    old_token = token_from(cluster.url, "vera", "repository:team/app:pull")
    key_file = cluster.config_path.parent / "token-key.pem"
    key_file.write_bytes(generate_key_pem())
    before = {r["name"]: r["pid"] for r in cluster.info()["replicas"]}
    cluster.config_path.write_text(config_text(cluster.config_path.parent / "users.htpasswd", key_file))
    os.kill(cluster.pid, signal.SIGHUP)
    wait_rolled(cluster, before)

    copy = cluster.dir / "auth" / "token-key.pem"
    assert copy.read_bytes() == key_file.read_bytes() and copy.stat().st_mode & 0o777 == 0o600
    first, second = replica_urls(cluster)
    for base in (first, second, cluster.url):
        status, headers, _ = get(f"{base}/v2/team/app/tags/list", f"Bearer {old_token}")
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    new_token = token_from(first, "vera", "repository:team/app:pull")
    # Signed with the file's key, not the one kept in etcd.
    TokenIssuer(key_file.read_bytes(), "hareg", 300).verifier.verify(new_token, time.time())
    for base in (second, cluster.url):
        assert get(f"{base}/v2/team/app/tags/list", f"Bearer {new_token}")[0] == 200
