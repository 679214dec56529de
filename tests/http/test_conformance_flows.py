"""The checks of the OCI distribution-spec conformance suite (conformance/
01_pull, 02_push, 03_discovery, 04_management and the data of setup.go),
re-expressed against the in-process registry.

Each test walks one workflow in the suite's order (setup, checks, teardown),
accepting exactly the statuses the suite accepts; the last test runs all four
workflows one after another in one namespace, as the suite does.

Each runs twice: against an open registry, and against one with an ``auth``
section, through the suite's own client with ``OCI_USERNAME`` and
``OCI_PASSWORD`` (``token_flow.py``): every request goes first without
credentials, is challenged, and is sent again with a token from
``/auth/token``.  The user is an editor of the workflows' repositories.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import (
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    SPEC_CODES,
    sha256,
)
from token_flow import SuiteClient, access_control, parse_challenge, write_htpasswd
from yarl import URL

from hareg.config.model import BindingConfig
from hareg.http.app import init_app
from hareg.registry.service import Registry

# The suite's list of acceptable error codes (it still lists two schema1-era ones).
SUITE_ERROR_CODES = SPEC_CODES - {"TOOMANYREQUESTS"} | {"MANIFEST_UNVERIFIED", "TAG_INVALID"}
NONEXISTENT_MANIFEST = ".INVALID_MANIFEST_NAME"
TEST_TAG = "tagtest0"
EMPTY_LAYER_TAG = "emptylayer"
ANNOTATION_KEY = "org.opencontainers.conformance.test"
ARTIFACT_TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
ARTIFACT_TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
ARTIFACT_TYPE_INDEX = "application/vnd.food.stand"


def ok(status: int) -> bool:
    return 200 <= status < 300


def layer_tarball() -> bytes:
    """A small gzipped tar with one text file, like the suite's test layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        content = b"you bothered to find out what was in here. Congratulations!\n"
        info = tarfile.TarInfo("test.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), mtime=0)


def desc(media_type: str, content: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(content), "size": len(content), **extra}


def indented(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent="\t").encode()


@dataclass
class Blob:
    content: bytes
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        self.digest = sha256(self.content)


@dataclass
class SuiteData:
    """The suite's fixtures (setup.go): one config and manifest per workflow, a
    shared layer, the chunked and streamed blobs, and the referrers artifacts."""

    configs: list[Blob]
    layer: Blob
    manifests: list[Blob]
    empty_layer_manifest: Blob
    blob_a: Blob
    blob_b: Blob
    chunk1: bytes
    chunk2: bytes
    dummy_digest: str
    ref_blob_a: Blob
    ref_blob_b: Blob
    refs_a_config: Blob
    refs_b_config: Blob
    refs_a_layer: Blob
    refs_b_layer: Blob
    refs_c_layer: Blob
    refs_index: Blob
    annotations: dict[str, str]  # referrer digest -> the annotation value it carries


def suite_data(seed: int) -> SuiteData:
    rng = random.Random(seed)
    letters = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"
    configs = [
        Blob(
            indented(
                {
                    "author": "".join(rng.choice(letters) for _ in range(16)),
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": []},
                }
            )
        )
        for _ in range(5)
    ]
    layer = Blob(layer_tarball())
    layer_desc = desc("application/vnd.oci.image.layer.v1.tar+gzip", layer.content)

    def config_desc(config: Blob) -> dict[str, Any]:
        # The suite embeds the config (data) and a field no spec defines.
        return desc(
            "application/vnd.oci.image.config.v1+json",
            config.content,
            data=base64.b64encode(config.content).decode(),
            newUnspecifiedField=base64.b64encode(b"hello world").decode(),
        )

    manifests = [
        Blob(
            indented(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": config_desc(c),
                    "layers": [layer_desc],
                }
            )
        )
        for c in configs
    ]
    empty_layer_manifest = Blob(
        indented({"schemaVersion": 2, "config": config_desc(configs[1]), "layers": []})
    )
    blob_a = Blob(rng.randbytes(42))
    blob_b = Blob(rng.randbytes(42))
    empty = desc(OCI_EMPTY, EMPTY_JSON)
    ref_blob_a = Blob(b"NHL Peanut Butter on my NHL bagel")
    ref_blob_b = Blob(b"NBA Strawberry Jam on my NBA croissant")
    subject4 = desc(OCI_MANIFEST, manifests[4].content)

    def artifact(**doc: Any) -> Blob:
        return Blob(indented({"schemaVersion": 2, "mediaType": OCI_MANIFEST, **doc}))

    refs_a_config = artifact(
        config=desc(ARTIFACT_TYPE_A, ref_blob_a.content),
        subject=subject4,
        layers=[empty],
        annotations={ANNOTATION_KEY: "test config a"},
    )
    refs_b_config = artifact(
        config=desc(ARTIFACT_TYPE_B, ref_blob_b.content),
        subject=subject4,
        layers=[empty],
        annotations={ANNOTATION_KEY: "test config b"},
    )
    refs_a_layer = artifact(
        artifactType=ARTIFACT_TYPE_A,
        config=empty,
        subject=subject4,
        layers=[desc(ARTIFACT_TYPE_A, ref_blob_a.content)],
        annotations={ANNOTATION_KEY: "test layer a"},
    )
    refs_b_layer = artifact(
        artifactType=ARTIFACT_TYPE_B,
        config=empty,
        subject=subject4,
        layers=[desc(ARTIFACT_TYPE_B, ref_blob_b.content)],
        annotations={ANNOTATION_KEY: "test layer b"},
    )
    refs_c_layer = artifact(  # like B's, on a subject that is never pushed
        artifactType=ARTIFACT_TYPE_B,
        config=empty,
        subject=desc(OCI_MANIFEST, manifests[3].content),
        layers=[desc(ARTIFACT_TYPE_B, ref_blob_b.content)],
    )
    refs_index = Blob(
        indented(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "artifactType": ARTIFACT_TYPE_INDEX,
                "manifests": [
                    desc(OCI_MANIFEST, refs_a_config.content),
                    desc(OCI_MANIFEST, refs_a_layer.content),
                ],
                "subject": subject4,
                "annotations": {ANNOTATION_KEY: "test index"},
            }
        )
    )
    annotations = {
        refs_a_config.digest: "test config a",
        refs_b_config.digest: "test config b",
        refs_a_layer.digest: "test layer a",
        refs_b_layer.digest: "test layer b",
        refs_index.digest: "test index",
    }
    half = len(blob_b.content) // 2 + 1
    return SuiteData(
        configs,
        layer,
        manifests,
        empty_layer_manifest,
        blob_a,
        blob_b,
        blob_b.content[:half],
        blob_b.content[half:],
        sha256(b"hello world"),
        ref_blob_a,
        ref_blob_b,
        refs_a_config,
        refs_b_config,
        refs_a_layer,
        refs_b_layer,
        refs_c_layer,
        refs_index,
        annotations,
    )


def relative(location: str) -> str:
    url = URL(location)
    return str(url.relative()) if url.is_absolute() else location


async def post_put(client: SuiteClient, name: str, blob: Blob) -> None:
    r = await client.post(f"/v2/{name}/blobs/uploads/")
    r = await client.put(
        relative(r.headers["Location"]),
        params={"digest": blob.digest},
        data=blob.content,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert ok(r.status), r.status


async def put_manifest(
    client: SuiteClient, name: str, reference: str, blob: Blob, media_type: str = OCI_MANIFEST
) -> Any:
    return await client.put(
        f"/v2/{name}/manifests/{reference}", data=blob.content, headers={"Content-Type": media_type}
    )


async def check_error_codes(r: Any) -> None:
    doc = await r.json(content_type=None)
    assert doc["errors"], doc
    assert doc["errors"][0]["code"] in SUITE_ERROR_CODES


# ---------------------------------------------------------------------- pull


async def pull_workflow(client: SuiteClient, name: str, d: SuiteData) -> None:
    # Setup
    await post_put(client, name, d.configs[0])
    await post_put(client, name, d.configs[1])
    await post_put(client, name, d.layer)
    assert ok((await put_manifest(client, name, TEST_TAG, d.manifests[0])).status)
    assert ok((await put_manifest(client, name, d.manifests[1].digest, d.manifests[1])).status)
    tag = TEST_TAG

    # Pull blobs
    assert (await client.head(f"/v2/{name}/blobs/{d.dummy_digest}")).status == 404
    r = await client.head(f"/v2/{name}/blobs/{d.configs[0].digest}")
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == d.configs[0].digest
    assert (await client.get(f"/v2/{name}/blobs/{d.dummy_digest}")).status == 404
    assert (await client.get(f"/v2/{name}/blobs/{d.configs[0].digest}")).status == 200

    # Pull manifests
    accept = {"Accept": OCI_MANIFEST}
    assert (await client.head(f"/v2/{name}/manifests/{NONEXISTENT_MANIFEST}")).status == 404
    for m in d.manifests[:2]:
        r = await client.head(f"/v2/{name}/manifests/{m.digest}", headers=accept)
        assert r.status == 200
        assert r.headers["Docker-Content-Digest"] == m.digest
    r = await client.head(f"/v2/{name}/manifests/{tag}", headers=accept)
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == d.manifests[0].digest
    assert (await client.get(f"/v2/{name}/manifests/{NONEXISTENT_MANIFEST}")).status == 404
    for m in d.manifests[:2]:
        r = await client.get(f"/v2/{name}/manifests/{m.digest}", headers=accept)
        assert r.status == 200
        assert await r.read() == m.content
    r = await client.get(f"/v2/{name}/manifests/{tag}", headers=accept)
    assert r.status == 200
    assert await r.read() == d.manifests[0].content

    # Error codes: a GET (current suite) and a PUT (earlier suites) of a malformed digest.
    r = await client.get(
        f"/v2/{name}/manifests/sha256:totallywrong", data=b"blablabla", headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status in (400, 404)
    if r.status == 400:
        await check_error_codes(r)
    r = await client.put(
        f"/v2/{name}/manifests/sha256:totallywrong", data=b"blablabla", headers={"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 400
    await check_error_codes(r)

    # Teardown (manifests before blobs, the suite's default)
    for m in d.manifests[:2]:
        r = await client.delete(f"/v2/{name}/manifests/{m.digest}")
        assert ok(r.status) or r.status == 405
    for blob in (d.configs[0], d.configs[1], d.layer):
        r = await client.delete(f"/v2/{name}/blobs/{blob.digest}")
        assert ok(r.status) or r.status in (404, 405)


# ---------------------------------------------------------------------- push


async def push_workflow(client: SuiteClient, name: str, crossmount: str, d: SuiteData) -> None:
    # Blob Upload Streamed
    r = await client.post(f"/v2/{name}/blobs/uploads/")
    assert r.headers.get("Location")
    r = await client.patch(
        relative(r.headers["Location"]),
        data=d.blob_a.content,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 202
    r = await client.put(
        relative(r.headers["Location"]),
        params={"digest": d.blob_a.digest},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status == 201
    assert r.headers.get("Location")

    # Blob Upload Monolithic
    config = d.configs[1]
    assert (await client.get(f"/v2/{name}/blobs/{d.dummy_digest}")).status == 404
    r = await client.post(
        f"/v2/{name}/blobs/uploads/",
        params={"digest": config.digest},
        data=config.content,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.headers.get("Location")
    assert r.status in (201, 202)
    single_post = r.status
    r = await client.get(f"/v2/{name}/blobs/{config.digest}")
    assert r.status == (404 if single_post == 202 else 200)
    r = await client.post(f"/v2/{name}/blobs/uploads/")
    assert r.status == 202
    r = await client.put(
        relative(r.headers["Location"]),
        params={"digest": config.digest},
        data=config.content,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.headers.get("Location")
    assert r.status == 201
    assert (await client.get(f"/v2/{name}/blobs/{config.digest}")).status == 200
    r = await client.post(f"/v2/{name}/blobs/uploads/")
    r = await client.put(
        relative(r.headers["Location"]),
        params={"digest": d.layer.digest},
        data=d.layer.content,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.headers.get("Location")
    assert r.status == 201
    assert (await client.get(f"/v2/{name}/blobs/{d.layer.digest}")).status == 200

    # Blob Upload Chunked
    range1 = f"0-{len(d.chunk1) - 1}"
    range2 = f"{len(d.chunk1)}-{len(d.blob_b.content) - 1}"
    r = await client.post(f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.headers.get("Location")
    assert "OCI-Chunk-Min-Length" not in r.headers or int(r.headers["OCI-Chunk-Min-Length"]) <= len(d.chunk1)
    r = await client.patch(
        relative(r.headers["Location"]),
        data=d.chunk2,
        headers={"Content-Type": "application/octet-stream", "Content-Range": range2},
    )
    assert r.status == 416
    r = await client.post(f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    assert r.headers.get("Location")
    previous = relative(r.headers["Location"])
    r = await client.patch(
        previous, data=d.chunk1, headers={"Content-Type": "application/octet-stream", "Content-Range": range1}
    )
    assert r.status == 202
    assert r.headers["Range"] == range1
    r = await client.patch(  # retrying the first chunk
        previous, data=d.chunk1, headers={"Content-Type": "application/octet-stream", "Content-Range": range1}
    )
    assert r.status == 416
    r = await client.get(previous)  # stale upload URL: where does it stand?
    assert r.status == 204
    assert r.headers.get("Location")
    assert r.headers["Range"] == range1
    r = await client.patch(
        relative(r.headers["Location"]),
        data=d.chunk2,
        headers={"Content-Type": "application/octet-stream", "Content-Range": range2},
    )
    assert r.status == 202
    assert r.headers.get("Location")
    r = await client.put(
        relative(r.headers["Location"]),
        params={"digest": d.blob_b.digest},
        headers={"Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert r.status == 201
    assert r.headers.get("Location")
    # The older suite's variant: the final chunk in the PUT.
    r = await client.post(f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
    r = await client.patch(
        relative(r.headers["Location"]),
        data=d.chunk1,
        headers={"Content-Type": "application/octet-stream", "Content-Range": range1},
    )
    assert r.status == 202
    r = await client.put(
        relative(r.headers["Location"]),
        params={"digest": d.blob_b.digest},
        data=d.chunk2,
        headers={"Content-Type": "application/octet-stream", "Content-Range": range2},
    )
    assert r.status == 201
    assert r.headers.get("Location")

    # Cross-Repository Blob Mount
    r = await client.post(f"/v2/{crossmount}/blobs/uploads/", params={"mount": d.dummy_digest})
    assert r.status == 202
    assert r.headers.get("Location")
    r = await client.post(f"/v2/{crossmount}/blobs/uploads/", params={"mount": d.blob_a.digest, "from": name})
    assert r.status in (201, 202)
    if r.status == 201:
        assert relative(r.headers["Location"]) == f"/v2/{crossmount}/blobs/{d.blob_a.digest}"
        assert (await client.get(relative(r.headers["Location"]))).status == 200
        # Automatic content discovery (mount without from) is not offered: a new session.
        r = await client.post(f"/v2/{crossmount}/blobs/uploads/", params={"mount": d.blob_a.digest})
        assert r.status == 202
    else:
        assert relative(r.headers["Location"]).startswith(f"/v2/{crossmount}/blobs/uploads/")

    # Manifest Upload
    assert (await client.get(f"/v2/{name}/manifests/{NONEXISTENT_MANIFEST}")).status == 404
    for i in range(4):
        r = await put_manifest(client, name, f"test{i}", d.manifests[1])
        assert r.headers.get("Location")
        assert r.status == 201
    r = await put_manifest(client, name, EMPTY_LAYER_TAG, d.empty_layer_manifest)
    assert r.status == 201, "image manifest with no layers is not supported"
    assert r.headers.get("Location")
    r = await client.get(f"/v2/{name}/manifests/{d.manifests[1].digest}", headers={"Accept": OCI_MANIFEST})
    assert r.status == 200

    # Teardown
    for reference in (d.manifests[1].digest, d.empty_layer_manifest.digest):
        r = await client.delete(f"/v2/{name}/manifests/{reference}")
        assert ok(r.status) or r.status == 405
    for blob in (config, d.layer):
        r = await client.delete(f"/v2/{name}/blobs/{blob.digest}")
        assert ok(r.status) or r.status in (404, 405)


# ----------------------------------------------------------------- discovery


async def discovery_workflow(client: SuiteClient, name: str, d: SuiteData) -> None:
    # Setup
    await post_put(client, name, d.configs[2])
    await post_put(client, name, d.layer)
    for i in range(4):
        assert ok((await put_manifest(client, name, f"test{i}", d.manifests[2])).status)
    r = await client.get(f"/v2/{name}/tags/list")
    tag_list = (await r.json())["tags"]

    # References setup
    assert sha256(EMPTY_JSON) == EMPTY_JSON_DIGEST
    await post_put(client, name, Blob(EMPTY_JSON))
    await post_put(client, name, d.ref_blob_a)
    subject4, subject3 = d.manifests[4].digest, d.manifests[3].digest
    for artifact in (d.refs_a_config, d.refs_a_layer):
        r = await put_manifest(client, name, artifact.digest, artifact)
        assert ok(r.status)
        assert r.headers["OCI-Subject"] == subject4
    r = await put_manifest(client, name, d.refs_index.digest, d.refs_index, OCI_INDEX)
    assert ok(r.status)
    assert r.headers["OCI-Subject"] == subject4
    await post_put(client, name, d.configs[4])
    await post_put(client, name, d.layer)
    assert ok((await put_manifest(client, name, TEST_TAG, d.manifests[4])).status)
    await post_put(client, name, d.ref_blob_b)
    for artifact in (d.refs_b_config, d.refs_b_layer):
        r = await put_manifest(client, name, artifact.digest, artifact)
        assert ok(r.status)
        assert r.headers["OCI-Subject"] == subject4
    r = await put_manifest(client, name, d.refs_c_layer.digest, d.refs_c_layer)  # its subject is never pushed
    assert ok(r.status)
    assert r.headers["OCI-Subject"] == subject3

    # Listing tags
    r = await client.get(f"/v2/{name}/tags/list")
    assert r.status == 200
    tag_list = (await r.json())["tags"]
    num_tags = len(tag_list)
    assert num_tags == 5
    half = num_tags // 2
    r = await client.get(f"/v2/{name}/tags/list", params={"n": str(half)})
    assert r.status == 200
    tag_list = (await r.json())["tags"]
    assert len(tag_list) == half
    r = await client.get(f"/v2/{name}/tags/list", params={"n": str(half), "last": tag_list[half - 1]})
    assert r.status == 200
    rest = (await r.json())["tags"]
    assert len(rest) <= half
    assert tag_list[half - 1] not in rest

    # Listing references
    async def referrers(digest: str, **params: str) -> tuple[list[dict[str, Any]], str | None]:
        r = await client.get(f"/v2/{name}/referrers/{digest}", params=params)
        assert r.status == 200
        assert r.headers["Content-Type"] == OCI_INDEX
        return (await r.json(content_type=None))["manifests"], r.headers.get("OCI-Filters-Applied")

    found, _ = await referrers(d.dummy_digest)
    assert found == []
    found, _ = await referrers(subject4)
    assert len(found) == 5
    assert found[0]["digest"] != found[1]["digest"]
    for entry in found:
        assert entry["annotations"] == {ANNOTATION_KEY: d.annotations[entry["digest"]]}
    found, filters = await referrers(subject4, artifactType=ARTIFACT_TYPE_A)
    assert filters == "artifactType"
    assert len(found) == 2
    for entry in found:
        assert entry["annotations"] == {ANNOTATION_KEY: d.annotations[entry["digest"]]}
    found, _ = await referrers(subject3)
    assert [entry["digest"] for entry in found] == [d.refs_c_layer.digest]

    # Teardown
    references = [
        d.refs_index.digest,
        d.manifests[2].digest,
        d.manifests[4].digest,
        d.refs_a_config.digest,
        d.refs_a_layer.digest,
        TEST_TAG,
        d.refs_b_config.digest,
        d.refs_b_layer.digest,
        d.refs_c_layer.digest,
    ]
    for reference in references:
        r = await client.delete(f"/v2/{name}/manifests/{reference}")
        assert ok(r.status) or r.status in (404, 405), (reference, r.status, await r.text())
    for blob in (d.configs[2], d.layer):
        r = await client.delete(f"/v2/{name}/blobs/{blob.digest}")
        assert ok(r.status) or r.status == 405, (r.status, await r.text())
    for reference in (d.refs_index.digest, d.refs_a_config.digest, d.refs_a_layer.digest, subject4):
        r = await client.delete(f"/v2/{name}/manifests/{reference}")
        assert ok(r.status) or r.status in (404, 405)
    for reference in (d.refs_b_config.digest, d.refs_b_layer.digest):
        r = await client.delete(f"/v2/{name}/manifests/{reference}")
        assert ok(r.status) or r.status in (404, 405)
    for digest in (d.configs[4].digest, d.ref_blob_a.digest, d.ref_blob_b.digest, EMPTY_JSON_DIGEST):
        r = await client.delete(f"/v2/{name}/blobs/{digest}")
        assert ok(r.status) or r.status in (404, 405), (digest, r.status, await r.text())


# ---------------------------------------------------------------- management


async def management_workflow(client: SuiteClient, name: str, d: SuiteData) -> None:
    # Setup
    await post_put(client, name, d.configs[3])
    await post_put(client, name, d.layer)
    tag_to_delete = TEST_TAG
    assert ok((await put_manifest(client, name, tag_to_delete, d.manifests[3])).status)
    r = await client.get(f"/v2/{name}/tags/list")
    assert r.status == 200
    num_tags = len((await r.json())["tags"])

    # Manifest delete
    r = await client.delete(f"/v2/{name}/manifests/{tag_to_delete}")
    assert r.status in (400, 202, 405)
    if r.status == 400:
        assert (await r.json())["errors"][0]["code"] == "UNSUPPORTED"
    assert r.status == 202  # hareg deletes tags
    r = await client.delete(f"/v2/{name}/manifests/{d.manifests[3].digest}")
    assert r.status in (202, 404)
    r = await client.get(f"/v2/{name}/manifests/{d.manifests[3].digest}")
    assert r.status in (404, 200)
    assert r.status == 404  # hareg deletes manifests
    r = await client.get(f"/v2/{name}/tags/list")
    assert r.status == 200
    assert len((await r.json())["tags"]) < num_tags

    # Blob delete
    for blob in (d.configs[3], d.layer):
        r = await client.delete(f"/v2/{name}/blobs/{blob.digest}")
        assert r.status in (202, 404, 405)
        assert r.status == 202  # hareg deletes blobs
    assert (await client.get(f"/v2/{name}/blobs/{d.configs[3].digest}")).status == 404

    # Error codes (07): deleting the tag again still answers with a spec code.
    r = await client.delete(f"/v2/{name}/manifests/{tag_to_delete}")
    await check_error_codes(r)


# --------------------------------------------------------------------- tests


# OCI_USERNAME / OCI_PASSWORD, and the role the workflows need on their repositories.
SUITE_USER = ("suite", "suite-pw")
SUITE_BINDINGS = (BindingConfig("suite", "editor", ("conformance/*", "conformance-*", "myorg/*")),)


@pytest.fixture
def data() -> SuiteData:
    return suite_data(seed=20240101)


@pytest.fixture(params=["open", "with-credentials"])
async def client(
    request: pytest.FixtureRequest, registry: Registry, tmp_path: Path
) -> AsyncIterator[SuiteClient]:
    if request.param == "open":
        async with TestClient(TestServer(init_app(registry))) as open_client:
            yield SuiteClient(open_client, None)
        return
    htpasswd = write_htpasswd(tmp_path / "htpasswd", dict([SUITE_USER]))
    access = await access_control(registry, htpasswd, SUITE_BINDINGS)
    async with TestClient(TestServer(init_app(registry, access=access))) as auth_client:
        suite = SuiteClient(auth_client, SUITE_USER)
        yield suite
    # Nothing was answered without credentials: each request was challenged
    # first and served only with the token the flow fetched.
    assert suite.sent > 0
    assert suite.challenged == suite.tokens == suite.sent, vars(suite)


async def test_pull(client: SuiteClient, data: SuiteData) -> None:
    await pull_workflow(client, "conformance/pull", data)


async def test_push(client: SuiteClient, data: SuiteData) -> None:
    await push_workflow(client, "conformance/push", f"conformance-{uuid.uuid4()}", data)


async def test_content_discovery(client: SuiteClient, data: SuiteData) -> None:
    await discovery_workflow(client, "conformance/discovery", data)


async def test_content_management(client: SuiteClient, data: SuiteData) -> None:
    await management_workflow(client, "conformance/management", data)


async def test_base_api_route(client: SuiteClient) -> None:
    r = await client.get("/v2/")
    assert r.status == 200


async def test_all_workflows_in_one_namespace(client: SuiteClient, data: SuiteData) -> None:
    """The suite runs every workflow against one repository, in order; each
    teardown must leave the next workflow a clean slate (the shared layer blob
    is deleted and pushed again several times)."""
    name = "myorg/myrepo"
    await pull_workflow(client, name, data)
    await push_workflow(client, name, f"conformance-{uuid.uuid4()}", data)
    await discovery_workflow(client, name, data)
    await management_workflow(client, name, data)


async def test_a_mount_is_challenged_for_both_repositories(registry: Registry, tmp_path: Path) -> None:
    """A mount needs push on the target and pull on ``from``: the challenge
    must name both (as distribution's does, space-separated), or a client
    that asks for the challenge's scope gets a token that cannot mount."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", dict([SUITE_USER]))
    access = await access_control(registry, htpasswd, SUITE_BINDINGS)
    async with TestClient(TestServer(init_app(registry, access=access))) as anonymous:
        r = await anonymous.post(
            "/v2/conformance/target/blobs/uploads/",
            params={"mount": sha256(b"x"), "from": "conformance/source"},
        )
        assert r.status == 401
        scope = parse_challenge(r.headers["WWW-Authenticate"])[1].get("scope", "")
        assert sorted(scope.split(" ")) == [
            "repository:conformance/source:pull",
            "repository:conformance/target:pull,push",
        ], scope
