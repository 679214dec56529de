"""podman and buildah against a running ``hareg serve``, with images built
offline by buildah (``buildah from scratch``, add files, commit).

A round trip (buildah builds, podman pushes, the local copy is removed, podman
pulls it back: same digest, same files); a second push that re-uses every blob
(HEAD hits, no upload) and a buildah push to another repository that mounts
the layer; a two-platform manifest list made with ``buildah manifest`` and
pushed with ``--all`` (OCI index and Docker manifest list), pulled back by
digest for each platform.

The tools run rootful with no daemon and no global state: storage (the vfs
driver: no kernel mounts, works on any filesystem), containers.conf, the
registries, auth and signature policy files all live in the test's temporary
directory and are passed through environment variables and flags; each
command runs in a private mount namespace in which ``/var/lib`` is a
directory of the test's, because podman 4 and buildah 1.28 write their blob
info cache to ``/var/lib/containers/cache`` whatever their configuration says.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from hareg.registry.manifest_format import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST

from .hareg_process import HaregServer, wait_no_orphans

ACCEPT_ALL = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])
TOOL_TIMEOUT = 120
HTTP_TIMEOUT = 30
UPLOADS_ROUTE = "/v2/{name}/blobs/uploads/"
BLOB_ROUTE = "/v2/{name}/blobs/{digest}"

# Run a command with /var/lib replaced, in a mount namespace of its own, by the
# directory given as $0 (nothing outside the namespace sees the bind mount).
_PRIVATE_VAR_LIB = 'mount --bind "$0" /var/lib && exec "$@"'

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("podman", "buildah", "unshare")),
    reason="podman, buildah and unshare are needed (scripts/bootstrap installs them)",
)


@dataclass(frozen=True)
class Containers:
    """podman and buildah configured only through files under ``root``."""

    root: Path
    env: dict[str, str]

    @property
    def policy(self) -> tuple[str, str]:
        return ("--signature-policy", str(self.root / "policy.json"))

    def command(self, tool: str, *args: str | Path) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _PRIVATE_VAR_LIB,
                str(self.root / "var-lib"), tool, *map(str, args)]  # fmt: skip

    def try_run(self, tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(tool, *args),
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )

    def run(self, tool: str, *args: str | Path) -> str:
        """Run ``tool`` (bounded); fail with its output if it fails."""
        proc = self.try_run(tool, *args)
        assert proc.returncode == 0, (
            f"{tool} {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}"
        )
        return proc.stdout.strip()

    def podman(self, *args: str | Path) -> str:
        return self.run("podman", *args)

    def buildah(self, *args: str | Path) -> str:
        return self.run("buildah", *args)

    def build(self, name: str, files: dict[str, bytes], arch: str = "amd64") -> str:
        """``localhost/NAME``: a one-layer image from scratch with ``files`` under /data."""
        src = self.root / "src" / name
        for path, data in files.items():
            (src / path).parent.mkdir(parents=True, exist_ok=True)
            (src / path).write_bytes(data)
        container = self.buildah("from", "scratch")
        self.buildah("add", container, src, "/data/")
        self.buildah(
            "config", "--arch", arch, "--os", "linux", "--label", f"org.example.name={name}", container
        )
        image = f"localhost/{name}"
        self.buildah("commit", "--quiet", *self.policy, container, image)
        self.buildah("rm", container)
        return image

    def inspect(self, image: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.podman("image", "inspect", image))[0]
        return info

    def files(self, image: str, names: list[str]) -> dict[str, bytes]:
        """The files ``/data/NAME`` of a local image, read from its mounted root
        (with vfs a plain directory, so visible outside the command's namespace)."""
        mounted = Path(self.podman("image", "mount", image))
        try:
            return {name: (mounted / "data" / name).read_bytes() for name in names}
        finally:
            self.podman("image", "unmount", image)

    def exists(self, image: str) -> bool:
        return self.try_run("podman", "image", "exists", image).returncode == 0


def configure(root: Path, registry: str) -> Containers:
    """Write the storage, engine, registries, auth and policy files under ``root``;
    ``registry`` (HOST:PORT) is plain HTTP."""
    for d in ("var-lib", "tmp", "run", "src"):
        (root / d).mkdir()
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run/storage"\n'
    )
    (root / "containers.conf").write_text(
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'  # no systemd here
        'events_logger = "none"\n'
        'lock_type = "file"\n'  # not /dev/shm/libpod_lock
        f'tmp_dir = "{root}/run/libpod"\n'
        f'static_dir = "{root}/storage/libpod"\n'
        f'volume_path = "{root}/storage/volumes"\n'
        f'image_copy_tmp_dir = "{root}/tmp"\n'
        "[network]\n"
        f'network_config_dir = "{root}/networks"\n'
    )
    # No short names (no docker.io); plain HTTP for the commands that have no
    # --tls-verify flag in podman 4.3 (manifest inspect).
    (root / "registries.conf").write_text(
        f'unqualified-search-registries = []\n[[registry]]\nlocation = "{registry}"\ninsecure = true\n'
    )
    (root / "auth.json").write_text('{"auths": {}}\n')
    (root / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    env = dict(
        os.environ,
        CONTAINERS_CONF=str(root / "containers.conf"),
        CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
        CONTAINERS_REGISTRIES_CONF=str(root / "registries.conf"),
        REGISTRY_AUTH_FILE=str(root / "auth.json"),
        XDG_RUNTIME_DIR=str(root / "run"),
        TMPDIR=str(root / "tmp"),
    )
    return Containers(root, env)


@pytest.fixture
def containers(tmp_path: Path, hareg_server: HaregServer) -> Iterator[Containers]:
    """A private, empty image store; skips the test if the tools cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("these tests run podman and buildah rootful: run them as root")
    root = tmp_path / "containers"
    root.mkdir()
    tools = configure(root, hareg_server.host_port)
    for tool in ("podman", "buildah"):
        probe = tools.try_run(tool, "images")
        if probe.returncode != 0:
            pytest.skip(f"{tool} cannot run here: {probe.stderr.strip()}")
    yield tools
    wait_no_orphans(root)  # no podman or buildah process outlives its command


def manifest(server: HaregServer, repo: str, reference: str) -> requests.Response:
    r = requests.get(
        f"{server.url}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_ALL}, timeout=HTTP_TIMEOUT
    )
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"].startswith("sha256:")
    return r


def request_counts(server: HaregServer) -> Counter[tuple[str, str, str]]:
    """``hareg_http_requests_total`` by (method, route, status)."""
    r = requests.get(f"{server.url}/metrics", timeout=HTTP_TIMEOUT)
    assert r.status_code == 200
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name == "hareg_http_requests_total":
                counts[s.labels["method"], s.labels["route"], s.labels["status"]] += int(s.value)
    return counts


FILES = {"hello.txt": b"hello from podman\n", "empty": b"", "nested/random.bin": os.urandom(256 * 1024)}


def test_build_push_remove_pull(hareg_server: HaregServer, containers: Containers) -> None:
    image = containers.build("e2e/app:v1", FILES)
    image_id = containers.inspect(image)["Id"]
    repo = "e2e/podman/app"
    ref = f"{hareg_server.host_port}/{repo}:v1"
    digest_file = containers.root / "digest"
    containers.podman(
        "push",
        "--tls-verify=false",
        *containers.policy,
        "--digestfile",
        digest_file,
        image,
        f"docker://{ref}",
    )
    digest = digest_file.read_text().strip()

    # What the registry holds: an OCI manifest whose config is the local image.
    r = manifest(hareg_server, repo, "v1")
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == OCI_MANIFEST
    pushed = r.json()
    assert pushed["config"]["digest"] == f"sha256:{image_id}"
    assert len(pushed["layers"]) == 1
    for blob in [pushed["config"], *pushed["layers"]]:
        url = f"{hareg_server.url}/v2/{repo}/blobs/{blob['digest']}"
        assert requests.head(url, timeout=HTTP_TIMEOUT).status_code == 200

    containers.podman("rmi", image)
    assert not containers.exists(image)
    assert not containers.exists(image_id)

    pulled_id = containers.podman("pull", "--quiet", "--tls-verify=false", *containers.policy, ref)
    assert pulled_id == image_id
    info = containers.inspect(ref)
    assert info["Digest"] == digest
    assert f"{hareg_server.host_port}/{repo}@{digest}" in info["RepoDigests"]
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")
    assert info["Labels"]["org.example.name"] == "e2e/app:v1"
    assert containers.files(ref, list(FILES)) == FILES

    # podman sees the tag through the registry API too.
    assert (
        containers.podman(
            "search", "--list-tags", "--tls-verify=false", f"{hareg_server.host_port}/{repo}"
        ).split()[-1]
        == "v1"
    )


def test_second_push_reuses_blobs(hareg_server: HaregServer, containers: Containers) -> None:
    image = containers.build("e2e/reused:v1", {"layer.bin": os.urandom(64 * 1024)})
    repo = "e2e/podman/reused"
    push = ("push", "--tls-verify=false", *containers.policy, image)
    containers.podman(*push, f"docker://{hareg_server.host_port}/{repo}:first")
    before = request_counts(hareg_server)
    containers.podman(*push, f"docker://{hareg_server.host_port}/{repo}:second")
    delta = request_counts(hareg_server) - before

    # Every blob was found by HEAD (the layer under its compressed digest, from
    # podman's blob info cache); nothing was uploaded; only the manifest was put.
    assert delta["HEAD", BLOB_ROUTE, "200"] >= 2, delta
    assert delta["POST", UPLOADS_ROUTE, "202"] == 0, delta
    assert sum(n for (method, route, _), n in delta.items() if method == "PATCH") == 0, delta
    assert delta["PUT", "/v2/{name}/manifests/{reference}", "201"] == 1, delta
    first = manifest(hareg_server, repo, "first")
    assert manifest(hareg_server, repo, "second").content == first.content

    # buildah pushing it to another repository mounts the layer from the first.
    before = request_counts(hareg_server)
    containers.buildah(*push, f"docker://{hareg_server.host_port}/e2e/buildah/mounted:v1")
    delta = request_counts(hareg_server) - before
    assert delta["POST", UPLOADS_ROUTE, "201"] >= 1, delta  # ?mount=...&from=e2e/podman/reused
    mounted = manifest(hareg_server, "e2e/buildah/mounted", "v1")
    assert mounted.content == first.content


@pytest.mark.parametrize(
    ("push_format", "list_type", "child_type"),
    [("oci", OCI_INDEX, OCI_MANIFEST), ("v2s2", DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)],
    ids=["oci-index", "docker-list"],
)
def test_manifest_list_push_all_pull_by_digest(
    hareg_server: HaregServer, containers: Containers, push_format: str, list_type: str, child_type: str
) -> None:
    content = {
        arch: {"arch.txt": f"built for {arch}\n".encode(), "blob.bin": os.urandom(4096)}
        for arch in ("amd64", "arm64")
    }
    images = {arch: containers.build(f"e2e/multi-{arch}:v1", files, arch) for arch, files in content.items()}
    local_list = "localhost/e2e/multi:v1"
    containers.buildah("manifest", "create", local_list)
    for image in images.values():
        containers.buildah("manifest", "add", local_list, image)

    repo = f"e2e/buildah/multi-{push_format}"
    digest_file = containers.root / "list-digest"
    containers.buildah(
        "manifest", "push", "--all", "--format", push_format, "--tls-verify=false", *containers.policy,
        "--digestfile", digest_file, local_list, f"docker://{hareg_server.host_port}/{repo}:v1",
    )  # fmt: skip
    digest = digest_file.read_text().strip()

    r = manifest(hareg_server, repo, "v1")
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Type"] == list_type
    index = r.json()
    assert index["mediaType"] == list_type
    children = {child["platform"]["architecture"]: child for child in index["manifests"]}
    assert sorted(children) == ["amd64", "arm64"]
    for child in children.values():
        assert child["platform"]["os"] == "linux"
        assert child["mediaType"] == child_type
        got = manifest(hareg_server, repo, child["digest"])
        assert got.headers["Content-Type"] == child_type
        assert got.headers["Docker-Content-Digest"] == child["digest"]

    containers.podman("rmi", "--all")  # the store is this test's own
    assert containers.podman("images", "--quiet", "--all") == ""

    by_digest = f"{hareg_server.host_port}/{repo}@{digest}"
    # podman 4.3 prints any list in the Docker list's shape: compare the entries.
    remote = json.loads(containers.podman("manifest", "inspect", by_digest))
    assert [(m["digest"], m["platform"]) for m in remote["manifests"]] == [
        (m["digest"], m["platform"]) for m in index["manifests"]
    ]
    for arch, files in content.items():
        image_id = containers.podman(
            "pull", "--quiet", "--arch", arch, "--tls-verify=false", *containers.policy, by_digest
        )
        info = containers.inspect(image_id)
        assert info["Architecture"] == arch
        assert info["Digest"] == digest  # what it was pulled by: the list
        assert f"{hareg_server.host_port}/{repo}@{children[arch]['digest']}" in info["RepoDigests"]
        assert containers.files(image_id, list(files)) == files
