"""The ``oras`` Python client against a running ``hareg serve``: artifacts with a
``subject``, found through the referrers API (with its ``artifactType`` filter)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oras.client
import oras.oci
import pytest
import requests

from .hareg_process import HaregServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1"
REPO = "e2e/oras/app"
TIMEOUT = 30


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Pushed:
    digest: str
    size: int
    body: bytes


@pytest.fixture(scope="module")
def client(hareg_server: HaregServer) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=hareg_server.host_port, insecure=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("oras")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def get_manifest(server: HaregServer, repo: str, reference: str) -> Pushed:
    r = requests.get(
        f"{server.url}/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}, timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text
    return Pushed(r.headers["Docker-Content-Digest"], len(r.content), r.content)


def referrers(
    server: HaregServer, repo: str, digest: str, artifact_type: str | None = None
) -> requests.Response:
    params = {"artifactType": artifact_type} if artifact_type is not None else None
    r = requests.get(f"{server.url}/v2/{repo}/referrers/{digest}", params=params, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].split(";")[0] == OCI_INDEX
    return r


def descriptors(response: requests.Response) -> dict[str, dict[str, Any]]:
    index = response.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    return {d["digest"]: d for d in index["manifests"]}


@pytest.fixture(scope="module")
def subject(hareg_server: HaregServer, client: oras.client.OrasClient, workdir: Path) -> Pushed:
    """An ordinary image (config + one gzip layer) pushed with oras as ``REPO:v1``."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    files = [f"{write(workdir / 'layer.tar.gz', os.urandom(300_000))}:{LAYER_GZIP}"]
    response = client.push(
        target=f"{hareg_server.host_port}/{REPO}:v1",
        files=files,
        manifest_config=f"{write(workdir / 'config.json', config.encode())}:{IMAGE_CONFIG}",
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201
    pushed = get_manifest(hareg_server, REPO, "v1")
    assert response.headers["Docker-Content-Digest"] == pushed.digest
    return pushed


def as_subject(pushed: Pushed) -> oras.oci.Subject:
    return oras.oci.Subject(mediaType=OCI_MANIFEST, digest=pushed.digest, size=pushed.size)


def test_push_with_subject_via_oras_push(
    hareg_server: HaregServer, client: oras.client.OrasClient, workdir: Path, subject: Pushed
) -> None:
    sbom = json.dumps({"spdxVersion": "SPDX-2.3", "name": "app"}).encode()
    response = client.push(
        target=f"{hareg_server.host_port}/{REPO}:sbom",
        files=[f"{write(workdir / 'sbom.spdx.json', sbom)}:application/spdx+json"],
        # oras-py sets no artifactType: the referrers API reports config.mediaType then.
        manifest_config=f"{write(workdir / 'sbom-config.json', b'{}')}:{SBOM_TYPE}",
        manifest_annotations={"org.example.kind": "sbom"},
        subject=as_subject(subject),
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject.digest
    referrer = get_manifest(hareg_server, REPO, "sbom")
    assert json.loads(referrer.body)["subject"]["digest"] == subject.digest

    found = descriptors(referrers(hareg_server, REPO, subject.digest))
    assert referrer.digest in found
    d = found[referrer.digest]
    assert d == {
        "mediaType": OCI_MANIFEST,
        "digest": referrer.digest,
        "size": referrer.size,
        "artifactType": SBOM_TYPE,
        "annotations": {"org.example.kind": "sbom"},
    }

    # And the artifact pulls back intact with oras.
    out = workdir / "pulled-sbom"
    files = client.pull(target=f"{hareg_server.host_port}/{REPO}:sbom", outdir=str(out))
    assert [Path(f).name for f in files] == ["sbom.spdx.json"]
    assert Path(files[0]).read_bytes() == sbom


def test_artifact_type_and_filter(
    hareg_server: HaregServer, client: oras.client.OrasClient, workdir: Path, subject: Pushed
) -> None:
    """A manifest with an explicit artifactType and the empty config, its blobs
    uploaded through oras (chunked for the signature), the manifest through oras."""
    container = client.get_container(f"{hareg_server.host_port}/{REPO}")
    empty = write(workdir / "empty.json", b"{}")
    empty_desc = {"mediaType": OCI_EMPTY, "digest": sha256(b"{}"), "size": 2}
    signature = os.urandom(3 * 1024 * 1024 + 17)
    sig_path = write(workdir / "signature.bin", signature)
    sig_layer = oras.oci.NewLayer(str(sig_path), media_type="application/octet-stream")
    assert sig_layer["digest"] == sha256(signature)
    for path, layer, chunked in ((empty, empty_desc, False), (sig_path, sig_layer, True)):
        response = client.upload_blob(str(path), container, layer, do_chunked=chunked, chunk_size=1024 * 1024)
        assert response.status_code in (200, 201), response.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": empty_desc,
        "layers": [sig_layer],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.size},
        "annotations": {"org.example.signer": "e2e"},
    }
    response = client.upload_manifest(manifest, client.get_container(f"{hareg_server.host_port}/{REPO}:sig"))
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject.digest
    sig_digest = response.headers["Docker-Content-Digest"]

    everything = descriptors(referrers(hareg_server, REPO, subject.digest))
    assert everything[sig_digest]["artifactType"] == SIGNATURE_TYPE
    assert everything[sig_digest]["annotations"] == {"org.example.signer": "e2e"}
    assert {d["artifactType"] for d in everything.values()} >= {SIGNATURE_TYPE, SBOM_TYPE}

    filtered = referrers(hareg_server, REPO, subject.digest, SIGNATURE_TYPE)
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert list(descriptors(filtered)) == [sig_digest]

    only_sbom = descriptors(referrers(hareg_server, REPO, subject.digest, SBOM_TYPE))
    assert [d["artifactType"] for d in only_sbom.values()] == [SBOM_TYPE]

    none = referrers(hareg_server, REPO, subject.digest, "application/vnd.example.nothing")
    assert none.headers["OCI-Filters-Applied"] == "artifactType"
    assert descriptors(none) == {}

    # The chunked upload arrived intact.
    blob = client.get_blob(container, sig_layer["digest"])
    assert blob.status_code == 200
    assert blob.content == signature


def test_subject_pushed_after_referrer(
    hareg_server: HaregServer, client: oras.client.OrasClient, workdir: Path
) -> None:
    """The spec lets a referrer arrive before its subject; it is listed all the same."""
    missing = Pushed(sha256(b"an image that is not pushed yet"), 31, b"")
    response = client.push(
        target=f"{hareg_server.host_port}/e2e/oras/early:note",
        files=[f"{write(workdir / 'note.txt', b'early')}:text/plain"],
        manifest_config=f"{write(workdir / 'note-config.json', b'{}')}:application/vnd.example.note.v1",
        subject=as_subject(missing),
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201, response.text
    found = descriptors(referrers(hareg_server, "e2e/oras/early", missing.digest))
    assert [d["artifactType"] for d in found.values()] == ["application/vnd.example.note.v1"]


def test_no_referrers_and_deleted_referrer(
    hareg_server: HaregServer, client: oras.client.OrasClient, workdir: Path, subject: Pushed
) -> None:
    assert descriptors(referrers(hareg_server, REPO, sha256(b"nothing refers to this"))) == {}

    response = client.push(
        target=f"{hareg_server.host_port}/{REPO}:temporary",
        files=[f"{write(workdir / 'tmp.txt', b'short-lived')}:text/plain"],
        manifest_config=f"{write(workdir / 'tmp-config.json', b'{}')}:application/vnd.example.temporary.v1",
        subject=as_subject(subject),
        disable_path_validation=True,
        quiet=True,
    )
    assert response.status_code == 201
    digest = response.headers["Docker-Content-Digest"]
    assert digest in descriptors(referrers(hareg_server, REPO, subject.digest))
    r = requests.delete(f"{hareg_server.url}/v2/{REPO}/manifests/{digest}", timeout=TIMEOUT)
    assert r.status_code == 202, r.text
    assert digest not in descriptors(referrers(hareg_server, REPO, subject.digest))
