"""skopeo against a running ``hareg serve``, with images built offline by umoci.

Push, pull back byte-identical, inspect, list tags, delete; Docker schema2
conversion; a copy between repositories; a two-platform OCI index pushed with
``--all``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hareg.registry.manifest_format import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST

from .hareg_process import HaregServer

ACCEPT_ALL = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])
TOOL_TIMEOUT = 120

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="skopeo and umoci are needed"
)


def run_tool(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a tool (bounded); fail with its output if it fails."""
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def run(*cmd: str | Path) -> str:
    return run_tool(*cmd).stdout


def skopeo(*args: str | Path) -> str:
    return run("skopeo", "--insecure-policy", *args)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def http_get(url: str, accept: str = ACCEPT_ALL) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass(frozen=True)
class Layout:
    """An OCI image layout directory."""

    path: Path

    def blob(self, digest: str) -> bytes:
        algorithm, _, hexdigest = digest.partition(":")
        return (self.path / "blobs" / algorithm / hexdigest).read_bytes()

    def index(self) -> dict[str, Any]:
        index: dict[str, Any] = json.loads((self.path / "index.json").read_text())
        return index

    def descriptor(self, ref: str) -> dict[str, Any]:
        for d in self.index()["manifests"]:
            if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
                return dict(d)
        raise KeyError(f"{ref} not in {self.path}/index.json")

    def json_blob(self, digest: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.blob(digest))
        return doc

    def reachable(self, digest: str) -> list[str]:
        """The manifest ``digest`` and every blob and manifest it reaches."""
        doc = self.json_blob(digest)
        out = [digest]
        for child in doc.get("manifests", []):
            out += self.reachable(child["digest"])
        if "config" in doc:
            out.append(doc["config"]["digest"])
        out += [layer["digest"] for layer in doc.get("layers", [])]
        return out

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        (self.path / "blobs" / "sha256" / digest.partition(":")[2]).write_bytes(data)
        return digest

    def tag(self, ref: str, descriptor: dict[str, Any]) -> None:
        index = self.index()
        d = dict(descriptor, annotations={"org.opencontainers.image.ref.name": ref})
        index["manifests"] = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != ref
        ] + [d]
        (self.path / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    """An OCI layout with tag ``v1``: several files, one of them 5 MiB of random bytes,
    plus ``amd`` and ``arm`` (the same image for linux/amd64 and linux/arm64)."""
    root = tmp_path_factory.mktemp("umoci")
    files = {
        "hello.txt": b"hello from hareg\n",
        "empty": b"",
        "small.bin": os.urandom(1000),
        "big.bin": os.urandom(5 * 1024 * 1024),
    }
    layout = root / "layout"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:v1")
    for name, data in files.items():
        src = root / name
        src.write_bytes(data)
        run("umoci", "insert", "--image", f"{layout}:v1", src, f"/data/{name}")
    for tag, arch in (("amd", "amd64"), ("arm", "arm64")):
        run(
            "umoci", "config", "--image", f"{layout}:v1", "--tag", tag, "--architecture", arch, "--os", "linux"
        )  # fmt: skip
    yield Layout(layout)
    shutil.rmtree(root, ignore_errors=True)


def test_push_pull_inspect_list(hareg_server: HaregServer, image: Layout, tmp_path: Path) -> None:
    ref = f"docker://{hareg_server.host_port}/e2e/skopeo/basic:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{image.path}:v1", ref)

    pulled = Layout(tmp_path / "out")
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{pulled.path}:v1")

    pushed_digest = image.descriptor("v1")["digest"]
    pulled_digest = pulled.descriptor("v1")["digest"]
    assert pulled_digest == pushed_digest, "the manifest came back rewritten"
    reachable = image.reachable(pushed_digest)
    assert len(reachable) == 2 + 4  # manifest, config, four layers
    assert pulled.reachable(pulled_digest) == reachable
    for digest in reachable:
        data = pulled.blob(digest)
        assert data == image.blob(digest), f"{digest} differs after the round trip"
        assert sha256(data) == digest
    big_layer = max(image.json_blob(pushed_digest)["layers"], key=lambda layer: layer["size"])
    assert big_layer["size"] > 5 * 1024 * 1024 * 0.99  # random bytes do not compress

    info = json.loads(skopeo("inspect", "--tls-verify=false", ref))
    assert info["Digest"] == pushed_digest
    assert info["Layers"] == [layer["digest"] for layer in image.json_blob(pushed_digest)["layers"]]
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["RepoTags"] == ["v1"]
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref).encode()
    assert raw == image.blob(pushed_digest)

    skopeo("copy", "--dest-tls-verify=false", f"oci:{image.path}:v1", ref.replace(":v1", ":v2"))
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", ref.removesuffix(":v1")))
    assert tags["Tags"] == ["v1", "v2"]

    # Every blob served over HTTP with the right digest and length.
    for digest in reachable[1:]:
        url = f"{hareg_server.url}/v2/e2e/skopeo/basic/blobs/{digest}"
        status, headers, body = http_get(url, accept="*/*")
        assert status == 200
        assert headers["Docker-Content-Digest"] == digest
        assert sha256(body) == digest


def test_delete(hareg_server: HaregServer, image: Layout) -> None:
    repo = "e2e/skopeo/deleted"
    ref = f"docker://{hareg_server.host_port}/{repo}:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{image.path}:v1", ref)
    digest = image.descriptor("v1")["digest"]
    assert http_get(f"{hareg_server.url}/v2/{repo}/manifests/{digest}")[0] == 200

    skopeo("delete", "--tls-verify=false", ref)

    for reference in ("v1", digest):
        status, _, body = http_get(f"{hareg_server.url}/v2/{repo}/manifests/{reference}")
        assert status == 404, body
        assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", ref.removesuffix(":v1")))
    assert tags["Tags"] == []
    # Deleting it again is a clear failure, not a crash.
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", "delete", "--tls-verify=false", ref],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert proc.returncode != 0
    assert "500" not in proc.stderr


def test_docker_schema2_conversion(hareg_server: HaregServer, image: Layout, tmp_path: Path) -> None:
    ref = f"docker://{hareg_server.host_port}/e2e/skopeo/docker:v1"
    skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2", f"oci:{image.path}:v1", ref)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref).encode()
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    status, headers, body = http_get(f"{hareg_server.url}/v2/e2e/skopeo/docker/manifests/v1")
    assert status == 200
    assert headers["Content-Type"] == DOCKER_MANIFEST
    assert body == raw
    assert headers["Docker-Content-Digest"] == sha256(raw)
    # The layers are the same bytes under the same digests.
    oci_layers = [layer["digest"] for layer in image.json_blob(image.descriptor("v1")["digest"])["layers"]]
    assert [layer["digest"] for layer in manifest["layers"]] == oci_layers

    pulled = Layout(tmp_path / "out")
    skopeo("copy", "--src-tls-verify=false", ref, f"docker-archive:{tmp_path / 'image.tar'}")
    skopeo("copy", "--src-tls-verify=false", ref, f"oci:{pulled.path}:v1")
    for digest in oci_layers:
        assert pulled.blob(digest) == image.blob(digest)


def test_copy_between_repositories(hareg_server: HaregServer, image: Layout) -> None:
    src = f"docker://{hareg_server.host_port}/e2e/skopeo/source:v1"
    dst = f"docker://{hareg_server.host_port}/e2e/other/target:copied"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{image.path}:v1", src)
    copy = run_tool("skopeo", "--insecure-policy", "--debug", "copy", "--src-tls-verify=false",
                    "--dest-tls-verify=false", src, dst)  # fmt: skip
    # Same registry: skopeo mounts the layers (POST ?mount=&from=) instead of uploading them.
    assert "mount OK" in copy.stderr
    digest = image.descriptor("v1")["digest"]
    assert json.loads(skopeo("inspect", "--tls-verify=false", dst))["Digest"] == digest
    for blob in image.reachable(digest)[1:]:
        status, _, body = http_get(f"{hareg_server.url}/v2/e2e/other/target/blobs/{blob}", accept="*/*")
        assert status == 200
        assert sha256(body) == blob


@dataclass(frozen=True)
class MultiArch:
    digest: str
    body: bytes
    children: list[dict[str, Any]]


@pytest.fixture(scope="module")
def multi_arch(image: Layout) -> MultiArch:
    """An OCI index of the ``amd`` and ``arm`` images, tagged ``multi`` in the layout."""
    children = []
    for tag, arch in (("amd", "amd64"), ("arm", "arm64")):
        d = image.descriptor(tag)
        children.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": d["digest"],
                "size": d["size"],
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
        config = image.json_blob(image.json_blob(d["digest"])["config"]["digest"])
        assert config["architecture"] == arch
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    digest = image.add_blob(body)
    image.tag("multi", {"mediaType": OCI_INDEX, "digest": digest, "size": len(body)})
    return MultiArch(digest, body, children)


def test_multi_platform_index(
    hareg_server: HaregServer, image: Layout, multi_arch: MultiArch, tmp_path: Path
) -> None:
    index_digest, index_bytes, children = multi_arch.digest, multi_arch.body, multi_arch.children
    repo = "e2e/skopeo/multi"
    ref = f"docker://{hareg_server.host_port}/{repo}:latest"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{image.path}:multi", ref)

    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref).encode()
    assert raw == index_bytes
    status, headers, body = http_get(f"{hareg_server.url}/v2/{repo}/manifests/latest")
    assert status == 200
    assert headers["Content-Type"] == OCI_INDEX
    assert headers["Docker-Content-Digest"] == index_digest
    assert body == index_bytes
    for child in children:
        status, headers, body = http_get(f"{hareg_server.url}/v2/{repo}/manifests/{child['digest']}")
        assert status == 200
        assert headers["Content-Type"] == OCI_MANIFEST
        assert body == image.blob(child["digest"])

    for arch, child in zip(("amd64", "arm64"), children, strict=True):
        # skopeo resolves the index to this platform's image (its Digest is the index's).
        info = json.loads(skopeo("inspect", "--tls-verify=false", "--override-arch", arch, ref))
        assert info["Architecture"] == arch
        assert info["Digest"] == index_digest
        assert info["Layers"] == [layer["digest"] for layer in image.json_blob(child["digest"])["layers"]]
        by_digest = ref.replace(":latest", f"@{child['digest']}")
        assert json.loads(skopeo("inspect", "--tls-verify=false", by_digest))["Architecture"] == arch

    pulled = Layout(tmp_path / "out")
    skopeo("copy", "--all", "--src-tls-verify=false", ref, f"oci:{pulled.path}:latest")
    assert pulled.descriptor("latest")["digest"] == index_digest
    for digest in image.reachable(index_digest):
        assert pulled.blob(digest) == image.blob(digest)

    # A child that an index references cannot be deleted from under it.
    req = urllib.request.Request(
        f"{hareg_server.url}/v2/{repo}/manifests/{children[0]['digest']}", method="DELETE"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    assert http_get(f"{hareg_server.url}/v2/{repo}/manifests/{children[0]['digest']}")[0] == 200


def test_docker_manifest_list(hareg_server: HaregServer, image: Layout, multi_arch: MultiArch) -> None:
    """``--all --format v2s2`` turns the index into a Docker manifest list of schema2 images."""
    repo = "e2e/skopeo/list"
    ref = f"docker://{hareg_server.host_port}/{repo}:latest"
    skopeo("copy", "--all", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{image.path}:multi", ref)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", ref).encode()
    manifest_list = json.loads(raw)
    assert manifest_list["mediaType"] == DOCKER_MANIFEST_LIST
    status, headers, body = http_get(f"{hareg_server.url}/v2/{repo}/manifests/latest")
    assert (status, headers["Content-Type"], body) == (200, DOCKER_MANIFEST_LIST, raw)
    archs = []
    for child in manifest_list["manifests"]:
        assert child["mediaType"] == DOCKER_MANIFEST
        status, headers, body = http_get(f"{hareg_server.url}/v2/{repo}/manifests/{child['digest']}")
        assert (status, headers["Content-Type"], sha256(body)) == (200, DOCKER_MANIFEST, child["digest"])
        archs.append(child["platform"]["architecture"])
    assert archs == ["amd64", "arm64"]
    info = json.loads(skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64", ref))
    assert info["Architecture"] == "arm64"
