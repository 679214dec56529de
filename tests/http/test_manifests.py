"""Manifests: /v2/<name>/manifests/<reference>."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from kv_hooks import HookedKV
from oci_helpers import (
    DOCKER_FOREIGN_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    blob_files,
    config_blob,
    descriptor,
    dumps,
    expect_error,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    sha256,
    sha512,
    snapshot,
)
from registries import serving

from hareg.config.model import LimitsConfig
from hareg.kv.base import Compare, Put, RangeResult, TxnOp
from hareg.kv.etcd import EtcdKV
from hareg.metadata.store import DEFAULT_INLINE_LIMIT
from hareg.processes.etcd import EtcdProcess
from hareg.registry.manifest_format import MAX_MANIFEST_BYTES, UrlPolicy
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

MISSING = sha256(b"not pushed")


async def get_manifest(client: Client, repo: str, reference: str, media_type: str) -> bytes:
    r = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_type})
    assert r.status == 200, (r.status, await r.text())
    assert r.headers["Content-Type"] == media_type
    body = await r.read()
    assert r.headers["Docker-Content-Digest"] == sha256(body)
    return body


async def tags_of(client: Client, repo: str) -> list[str]:
    r = await client.get(f"/v2/{repo}/tags/list")
    assert r.status == 200
    tags: list[str] = (await r.json())["tags"]
    return tags


# ------------------------------------------------------------------- push/pull


async def test_put_by_tag_then_get_and_head_by_tag_and_digest(client: Client) -> None:
    image = await push_image(client, "repo", "v1")
    for reference in ("v1", image.digest):
        assert await get_manifest(client, "repo", reference, OCI_MANIFEST) == image.body
        r = await client.head(f"/v2/repo/manifests/{reference}")
        assert r.status == 200
        assert r.headers["Docker-Content-Digest"] == image.digest
        assert r.headers["Content-Length"] == str(len(image.body))
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert await r.read() == b""


async def test_put_response_headers(client: Client) -> None:
    config, layer = config_blob(), b"layer"
    for blob in (config, layer):
        await push_blob(client, "repo", blob)
    body = image_manifest(config, [layer])
    r = await put_manifest(client, "repo", "latest", body)
    assert r.status == 201
    digest = sha256(body)
    assert r.headers["Location"] == f"/v2/repo/manifests/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert "OCI-Subject" not in r.headers
    # The Location is pullable.
    assert (await client.get(r.headers["Location"])).status == 200


async def test_put_by_digest_creates_no_tag(client: Client) -> None:
    image = await push_image(client, "repo")
    assert await get_manifest(client, "repo", image.digest, OCI_MANIFEST) == image.body
    assert await tags_of(client, "repo") == []


async def test_put_by_sha512_digest(client: Client) -> None:
    config, layer = config_blob(), b"layer"
    for blob in (config, layer):
        await push_blob(client, "repo", blob)
    body = image_manifest(config, [layer])
    digest = sha512(body)
    r = await put_manifest(client, "repo", digest, body)
    assert r.status == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"] == f"/v2/repo/manifests/{digest}"
    r = await client.get(f"/v2/repo/manifests/{digest}")
    assert r.status == 200 and await r.read() == body
    assert r.headers["Docker-Content-Digest"] == digest


async def test_exact_bytes_are_kept(client: Client) -> None:
    """Whitespace, key order and unknown fields survive byte for byte."""
    config, layer = config_blob(), b"layer"
    for blob in (config, layer):
        await push_blob(client, "repo", blob)
    body = (
        b'{  "layers":[%s],\n\t"config" : %s , "schemaVersion":2,"mediaType":"%s","x-unknown":{"a":[1,2]}}  \n'
        % (
            json.dumps(descriptor("application/vnd.oci.image.layer.v1.tar", layer)).encode(),
            json.dumps(descriptor("application/vnd.oci.image.config.v1+json", config, data="e30=")).encode(),
            OCI_MANIFEST.encode(),
        )
    )
    assert (await put_manifest(client, "repo", "v1", body)).status == 201
    assert await get_manifest(client, "repo", "v1", OCI_MANIFEST) == body


async def test_content_type_parameters_are_ignored(client: Client) -> None:
    config, layer = config_blob(), b"layer"
    for blob in (config, layer):
        await push_blob(client, "repo", blob)
    body = image_manifest(config, [layer])
    r = await put_manifest(client, "repo", "v1", body, f"{OCI_MANIFEST}; charset=utf-8")
    assert r.status == 201, await r.text()
    r = await client.get("/v2/repo/manifests/v1")
    assert r.headers["Content-Type"] == OCI_MANIFEST


async def test_manifest_without_media_type_field(client: Client) -> None:
    config, layer = config_blob(), b"layer"
    for blob in (config, layer):
        await push_blob(client, "repo", blob)
    body = image_manifest(config, [layer], media_type=None)
    assert (await put_manifest(client, "repo", "v1", body, OCI_MANIFEST)).status == 201
    assert await get_manifest(client, "repo", "v1", OCI_MANIFEST) == body


async def test_manifest_with_no_layers(client: Client) -> None:
    config = config_blob()
    await push_blob(client, "repo", config)
    body = image_manifest(config, [], media_type=None)
    r = await put_manifest(client, "repo", "emptylayer", body)
    assert r.status == 201
    assert await get_manifest(client, "repo", "emptylayer", OCI_MANIFEST) == body


async def test_oci_index(client: Client) -> None:
    amd = await push_image(client, "repo", seed="amd64")
    arm = await push_image(client, "repo", seed="arm64")
    body = index_manifest([(OCI_MANIFEST, amd.body), (OCI_MANIFEST, arm.body)])
    r = await put_manifest(client, "repo", "multi", body, OCI_INDEX)
    assert r.status == 201
    assert await get_manifest(client, "repo", "multi", OCI_INDEX) == body
    assert await get_manifest(client, "repo", sha256(body), OCI_INDEX) == body


async def test_index_of_an_index(client: Client) -> None:
    image = await push_image(client, "repo")
    inner = index_manifest([(OCI_MANIFEST, image.body)])
    assert (await put_manifest(client, "repo", sha256(inner), inner, OCI_INDEX)).status == 201
    outer = index_manifest([(OCI_INDEX, inner)])
    assert (await put_manifest(client, "repo", "outer", outer, OCI_INDEX)).status == 201


async def test_index_with_missing_child_is_manifest_blob_unknown(client: Client) -> None:
    image = await push_image(client, "repo")
    ghost = image_manifest(config_blob("ghost"), [])
    body = index_manifest([(OCI_MANIFEST, image.body), (OCI_MANIFEST, ghost)])
    entry = await expect_error(
        await put_manifest(client, "repo", "multi", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN"
    )
    assert entry["detail"]["manifests"] == [sha256(ghost)]
    await expect_error(await client.get("/v2/repo/manifests/multi"), 404, "MANIFEST_UNKNOWN")
    await expect_error(await client.get(f"/v2/repo/manifests/{sha256(body)}"), 404, "MANIFEST_UNKNOWN")


async def test_index_child_from_another_repository_is_unknown(client: Client) -> None:
    image = await push_image(client, "other")
    body = index_manifest([(OCI_MANIFEST, image.body)])
    await expect_error(
        await put_manifest(client, "repo", "multi", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN"
    )


async def test_docker_schema2_manifest_and_manifest_list(client: Client) -> None:
    image = await push_image(client, "repo", "v1", media_type=DOCKER_MANIFEST)
    assert await get_manifest(client, "repo", "v1", DOCKER_MANIFEST) == image.body
    body = index_manifest([(DOCKER_MANIFEST, image.body)], media_type=DOCKER_LIST)
    assert (await put_manifest(client, "repo", "list", body, DOCKER_LIST)).status == 201
    assert await get_manifest(client, "repo", "list", DOCKER_LIST) == body


async def test_artifact_with_artifact_type_and_empty_config(client: Client) -> None:
    assert await push_blob(client, "repo", EMPTY_JSON) == EMPTY_JSON_DIGEST
    payload = b"an sbom"
    await push_blob(client, "repo", payload)
    body = image_manifest(
        EMPTY_JSON,
        [payload],
        config_type=OCI_EMPTY,
        layer_type="application/spdx+json",
        artifact_type="application/vnd.example.sbom.v1",
    )
    assert (await put_manifest(client, "repo", "sbom", body)).status == 201
    assert await get_manifest(client, "repo", "sbom", OCI_MANIFEST) == body


async def test_artifact_with_custom_config_media_type(client: Client) -> None:
    image = await push_image(
        client,
        "repo",
        "helm",
        config=b'{"name":"chart"}',
        config_type="application/vnd.cncf.helm.config.v1+json",
    )
    assert await get_manifest(client, "repo", "helm", OCI_MANIFEST) == image.body


async def test_artifact_with_no_layers_at_all(client: Client) -> None:
    await push_blob(client, "repo", EMPTY_JSON)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing",
        "config": descriptor(OCI_EMPTY, EMPTY_JSON),
        "layers": [descriptor(OCI_EMPTY, EMPTY_JSON)],
    }
    assert (await put_manifest(client, "repo", "thing", dumps(doc))).status == 201


# ------------------------------------------------------------------ references


async def test_missing_layer_is_manifest_blob_unknown_and_no_tag_is_created(
    client: Client, registry: Registry
) -> None:
    config = config_blob()
    await push_blob(client, "repo", config)
    body = image_manifest(config, [b"never pushed layer"])
    before = await snapshot(registry)
    entry = await expect_error(await put_manifest(client, "repo", "v1", body), 400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["blobs"] == [sha256(b"never pushed layer")]
    assert await snapshot(registry) == before
    await expect_error(await client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert await tags_of(client, "repo") == []


async def test_missing_config_in_a_new_repository(client: Client, registry: Registry) -> None:
    body = image_manifest(config_blob(), [])
    before = await snapshot(registry)
    entry = await expect_error(await put_manifest(client, "fresh", "v1", body), 400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["blobs"] == [sha256(config_blob())]
    assert await snapshot(registry) == before
    await expect_error(await client.get("/v2/fresh/tags/list"), 404, "NAME_UNKNOWN")


async def test_blob_of_another_repository_does_not_count(client: Client) -> None:
    config, layer = config_blob(), b"layer"
    for blob in (config, layer):
        await push_blob(client, "other", blob)
    await push_blob(client, "repo", config)
    body = image_manifest(config, [layer])
    entry = await expect_error(await put_manifest(client, "repo", "v1", body), 400, "MANIFEST_BLOB_UNKNOWN")
    assert entry["detail"]["blobs"] == [sha256(layer)]


async def test_large_manifest_with_missing_blob_leaves_storage_unchanged(
    client: Client, registry: Registry
) -> None:
    """Over the inline limit the body goes to the blob store: a refused push must not leave it there."""
    config = config_blob()
    await push_blob(client, "repo", config)
    doc = json.loads(image_manifest(config, [b"missing"]))
    doc["annotations"] = {"pad": "x" * (DEFAULT_INLINE_LIMIT + 1000)}
    body = dumps(doc)
    before = await snapshot(registry)
    await expect_error(await put_manifest(client, "repo", "big", body), 400, "MANIFEST_BLOB_UNKNOWN")
    assert await snapshot(registry) == before


# ---------------------------------------------------------------- bad manifests


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"\xff\xfe\x00", b'{"schemaVersion": 2,}', b"[" * 100_000 + b"]" * 100_000],
    ids=["empty", "truncated", "text", "binary", "trailing-comma", "deeply-nested"],
)
async def test_malformed_json_is_manifest_invalid(client: Client, registry: Registry, body: bytes) -> None:
    before = await snapshot(registry)
    await expect_error(await put_manifest(client, "repo", "v1", body), 400, "MANIFEST_INVALID")
    assert await snapshot(registry) == before


@pytest.mark.parametrize("body", [b"[]", b'"manifest"', b"null", b"42", b"true"])
async def test_non_object_json_is_manifest_invalid(client: Client, body: bytes) -> None:
    await expect_error(await put_manifest(client, "repo", "v1", body), 400, "MANIFEST_INVALID")


async def test_schema_version_1_is_refused(client: Client) -> None:
    body = dumps({"schemaVersion": 1, "name": "repo", "tag": "v1", "fsLayers": [], "history": []})
    for media_type in (None, "application/vnd.docker.distribution.manifest.v1+prettyjws", OCI_MANIFEST):
        r = await put_manifest(client, "repo", "v1", body, media_type)
        await expect_error(r, 400, "MANIFEST_INVALID")


async def test_content_type_must_match_media_type(client: Client) -> None:
    image = await push_image(client, "repo")
    for wrong in (OCI_INDEX, DOCKER_MANIFEST, "application/json"):
        await expect_error(
            await put_manifest(client, "repo", "v2", image.body, wrong), 400, "MANIFEST_INVALID"
        )
    await expect_error(await client.get("/v2/repo/manifests/v2"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    "media_type", ["application/vnd.example.unknown+json", "text/plain", "application/json"]
)
async def test_unsupported_media_type_is_refused(client: Client, media_type: str) -> None:
    await push_blob(client, "repo", config_blob())
    doc = json.loads(image_manifest(config_blob(), []))
    doc["mediaType"] = media_type
    await expect_error(
        await put_manifest(client, "repo", "v1", dumps(doc), media_type), 400, "MANIFEST_INVALID"
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("config"),
        lambda d: d.update(config="sha256:abc"),
        lambda d: d["config"].update(digest="sha256:nothex"),
        lambda d: d["config"].update(digest="md5:" + "0" * 32),
        lambda d: d["config"].update(size=-1),
        lambda d: d["config"].update(size="12"),
        lambda d: d["config"].pop("mediaType"),
        lambda d: d.update(layers={"not": "a list"}),
        lambda d: d.update(layers=[42]),
        lambda d: d.update(annotations={"a": 1}),
        lambda d: d.update(annotations=["a"]),
        lambda d: d.update(subject="sha256:abc"),
        lambda d: d.update(manifests=[]),
        lambda d: d.update(schemaVersion=3),
        lambda d: d.pop("schemaVersion"),
        lambda d: d.update(mediaType=7),
        lambda d: d.update(artifactType=["x"]),
        lambda d: d.update(annotations={"a": "\ud800"}),
        lambda d: d["config"].update(mediaType="application/\udfff"),
    ],
)
async def test_invalid_fields_are_manifest_invalid(client: Client, registry: Registry, mutate: Any) -> None:
    config = config_blob()
    await push_blob(client, "repo", config)
    doc = json.loads(image_manifest(config, []))
    mutate(doc)
    body = json.dumps(doc).encode()  # ascii: lone surrogates become \u escapes
    before = await snapshot(registry)
    await expect_error(await put_manifest(client, "repo", "v1", body), 400, "MANIFEST_INVALID")
    assert await snapshot(registry) == before


async def test_digest_in_url_not_matching_body_is_digest_invalid(client: Client, registry: Registry) -> None:
    image = await push_image(client, "repo")
    other = image.body + b" "
    before = await snapshot(registry)
    entry = await expect_error(await put_manifest(client, "repo", image.digest, other), 400, "DIGEST_INVALID")
    assert entry["detail"] == {"expected": image.digest, "actual": sha256(other)}
    await expect_error(
        await put_manifest(client, "repo", sha512(image.body + b"x"), image.body), 400, "DIGEST_INVALID"
    )
    assert await snapshot(registry) == before


@pytest.mark.parametrize(
    "reference", ["sha256:totallywrong", "sha256:" + "0" * 63, "md5:" + "0" * 32, "SHA256:" + "0" * 64]
)
async def test_malformed_digest_reference(client: Client, reference: str) -> None:
    image = await push_image(client, "repo")
    await expect_error(await put_manifest(client, "repo", reference, image.body), 400, "DIGEST_INVALID")
    r = await client.get(f"/v2/repo/manifests/{reference}")
    assert r.status in (400, 404)
    await expect_error(r, r.status, "DIGEST_INVALID" if r.status == 400 else "MANIFEST_UNKNOWN")


@pytest.mark.parametrize("tag", ["-leading-dash", ".leading-dot", "a" * 129, "a+b", "tag!", "tag/x"])
async def test_invalid_tag_on_put_is_400(client: Client, registry: Registry, tag: str) -> None:
    image = await push_image(client, "repo")
    before = await snapshot(registry)
    await expect_error(
        await put_manifest(client, "repo", tag.replace("/", "%2F"), image.body), 400, "MANIFEST_INVALID"
    )
    assert await snapshot(registry) == before


async def test_longest_tag_is_accepted(client: Client) -> None:
    image = await push_image(client, "repo")
    tag = "T" + "a" * 127
    assert (await put_manifest(client, "repo", tag, image.body)).status == 201
    assert await get_manifest(client, "repo", tag, OCI_MANIFEST) == image.body


@pytest.mark.parametrize("tag", [".INVALID_MANIFEST_NAME", "-x", "a" * 129])
async def test_get_of_an_invalid_tag_is_404(client: Client, tag: str) -> None:
    """The conformance suite pulls '.INVALID_MANIFEST_NAME' and expects 404."""
    await push_image(client, "repo", "v1")
    await expect_error(await client.get(f"/v2/repo/manifests/{tag}"), 404, "MANIFEST_UNKNOWN")
    assert (await client.head(f"/v2/repo/manifests/{tag}")).status == 404


async def test_unknown_manifest_and_repository_are_404(client: Client) -> None:
    await expect_error(await client.get("/v2/nosuch/manifests/latest"), 404, "MANIFEST_UNKNOWN")
    await expect_error(await client.get(f"/v2/nosuch/manifests/{MISSING}"), 404, "MANIFEST_UNKNOWN")
    await push_image(client, "repo", "v1")
    await expect_error(await client.get("/v2/repo/manifests/v2"), 404, "MANIFEST_UNKNOWN")
    await expect_error(await client.get(f"/v2/repo/manifests/{MISSING}"), 404, "MANIFEST_UNKNOWN")
    assert (await client.head("/v2/repo/manifests/v2")).status == 404


# ------------------------------------------------------------------------ size


def padded_index(size: int) -> bytes:
    """An empty OCI index padded with an annotation to exactly ``size`` bytes."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
        "annotations": {"pad": ""},
    }
    base = len(json.dumps(doc).encode())
    doc["annotations"]["pad"] = "x" * (size - base)
    body = json.dumps(doc).encode()
    assert len(body) == size
    return body


async def test_manifest_of_exactly_4_mib_is_accepted(client: Client, registry: Registry) -> None:
    body = padded_index(MAX_MANIFEST_BYTES)
    digest = sha256(body)
    r = await put_manifest(client, "repo", "big", body, OCI_INDEX)
    assert r.status == 201, await r.text()
    assert r.headers["Docker-Content-Digest"] == digest
    assert await get_manifest(client, "repo", "big", OCI_INDEX) == body
    r = await client.head(f"/v2/repo/manifests/{digest}")
    assert r.headers["Content-Length"] == str(MAX_MANIFEST_BYTES)
    # Past the inline limit the bytes live in the blob store.
    assert digest.split(":")[1] in blob_files(registry)


async def test_manifest_just_over_the_inline_limit(client: Client) -> None:
    body = padded_index(DEFAULT_INLINE_LIMIT + 1)
    assert (await put_manifest(client, "repo", "mid", body, OCI_INDEX)).status == 201
    assert await get_manifest(client, "repo", "mid", OCI_INDEX) == body


async def test_manifest_over_4_mib_is_413(client: Client, registry: Registry) -> None:
    body = padded_index(MAX_MANIFEST_BYTES + 1)
    before = await snapshot(registry)
    await expect_error(await put_manifest(client, "repo", "huge", body, OCI_INDEX), 413, "MANIFEST_INVALID")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]

    r = await client.put("/v2/repo/manifests/huge", data=chunked(), headers={"Content-Type": OCI_INDEX})
    await expect_error(r, 413, "MANIFEST_INVALID")
    assert await snapshot(registry) == before


# ------------------------------------------------------------------------ tags


async def test_multiple_tags_on_a_digest_push(client: Client) -> None:
    image = await push_image(client, "repo")
    tags = ["1.2.3", "1.2", "1", "latest"]
    r = await client.put(
        f"/v2/repo/manifests/{image.digest}",
        data=image.body,
        headers={"Content-Type": OCI_MANIFEST},
        params=[("tag", t) for t in tags],
    )
    assert r.status == 201
    got = [t.strip() for header in r.headers.getall("OCI-Tag") for t in header.split(",")]
    assert sorted(got) == sorted(tags)
    assert await tags_of(client, "repo") == sorted(tags)
    for tag in tags:
        assert await get_manifest(client, "repo", tag, OCI_MANIFEST) == image.body


async def test_ten_tags_in_one_push(client: Client) -> None:
    image = await push_image(client, "repo")
    tags = [f"t{i}" for i in range(10)]
    r = await put_manifest(client, "repo", image.digest, image.body, params=[("tag", t) for t in tags])
    assert r.status == 201
    assert len(r.headers.getall("OCI-Tag")) == 10


async def test_invalid_tag_param_creates_nothing(client: Client, registry: Registry) -> None:
    image = await push_image(client, "repo")
    before = await snapshot(registry)
    r = await put_manifest(
        client, "repo", image.digest, image.body, params=[("tag", "good"), ("tag", "-bad")]
    )
    await expect_error(r, 400, "MANIFEST_INVALID")
    assert await snapshot(registry) == before


async def test_tag_move_then_get_returns_the_new_one(client: Client) -> None:
    first = await push_image(client, "repo", "latest", seed="one")
    second = await push_image(client, "repo", "latest", seed="two")
    assert first.digest != second.digest
    assert await get_manifest(client, "repo", "latest", OCI_MANIFEST) == second.body
    # The old manifest is still there by digest.
    assert await get_manifest(client, "repo", first.digest, OCI_MANIFEST) == first.body
    # And back again.
    assert (await put_manifest(client, "repo", "latest", first.body)).status == 201
    assert await get_manifest(client, "repo", "latest", OCI_MANIFEST) == first.body


async def test_repushing_the_same_manifest_is_idempotent(client: Client) -> None:
    image = await push_image(client, "repo", "v1")
    for _ in range(3):
        r = await put_manifest(client, "repo", "v1", image.body)
        assert r.status == 201
        assert r.headers["Docker-Content-Digest"] == image.digest
    assert await tags_of(client, "repo") == ["v1"]


# ---------------------------------------------------------------------- delete


async def test_delete_by_tag_keeps_the_manifest(client: Client) -> None:
    image = await push_image(client, "repo", "v1")
    assert (await put_manifest(client, "repo", "v2", image.body)).status == 201
    r = await client.delete("/v2/repo/manifests/v1")
    assert r.status == 202
    await expect_error(await client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert await get_manifest(client, "repo", image.digest, OCI_MANIFEST) == image.body
    assert await get_manifest(client, "repo", "v2", OCI_MANIFEST) == image.body
    assert await tags_of(client, "repo") == ["v2"]
    await expect_error(await client.delete("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_delete_by_digest_removes_its_tags(client: Client) -> None:
    image = await push_image(client, "repo", "v1")
    other = await push_image(client, "repo", "keep", seed="other")
    assert (await put_manifest(client, "repo", "v2", image.body)).status == 201
    r = await client.delete(f"/v2/repo/manifests/{image.digest}")
    assert r.status == 202
    for reference in ("v1", "v2", image.digest):
        await expect_error(await client.get(f"/v2/repo/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
        assert (await client.head(f"/v2/repo/manifests/{reference}")).status == 404
    assert await tags_of(client, "repo") == ["keep"]
    assert await get_manifest(client, "repo", "keep", OCI_MANIFEST) == other.body
    await expect_error(await client.delete(f"/v2/repo/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")


async def test_delete_unknown_manifest_is_404(client: Client) -> None:
    await expect_error(await client.delete(f"/v2/nosuch/manifests/{MISSING}"), 404, "MANIFEST_UNKNOWN")
    await expect_error(await client.delete("/v2/nosuch/manifests/latest"), 404, "MANIFEST_UNKNOWN")
    await push_image(client, "repo", "v1")
    await expect_error(await client.delete(f"/v2/repo/manifests/{MISSING}"), 404, "MANIFEST_UNKNOWN")


async def test_delete_of_a_child_referenced_by_an_index_is_400_naming_the_index(
    client: Client, registry: Registry
) -> None:
    child = await push_image(client, "repo")
    body = index_manifest([(OCI_MANIFEST, child.body)])
    index_digest = sha256(body)
    assert (await put_manifest(client, "repo", "multi", body, OCI_INDEX)).status == 201
    before = await snapshot(registry)
    # 400: a status the spec lists for manifest deletes (end-9); 409 is not one of them.
    entry = await expect_error(await client.delete(f"/v2/repo/manifests/{child.digest}"), 400, "DENIED")
    assert entry["detail"]["indexes"] == [index_digest]
    assert index_digest in entry["message"] and "repo" in entry["message"]
    assert await snapshot(registry) == before
    assert (await client.delete(f"/v2/repo/manifests/{index_digest}")).status == 202
    assert (await client.delete(f"/v2/repo/manifests/{child.digest}")).status == 202


async def test_push_after_delete(client: Client) -> None:
    image = await push_image(client, "repo", "v1")
    assert (await client.delete(f"/v2/repo/manifests/{image.digest}")).status == 202
    assert (await put_manifest(client, "repo", "v1", image.body)).status == 201
    assert await get_manifest(client, "repo", "v1", OCI_MANIFEST) == image.body


# --------------------------------------------------------------------- subject


async def test_subject_is_acknowledged_with_oci_subject(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    await push_blob(client, "repo", EMPTY_JSON)
    body = image_manifest(
        EMPTY_JSON,
        [EMPTY_JSON],
        config_type=OCI_EMPTY,
        layer_type=OCI_EMPTY,
        artifact_type="application/vnd.example.sig",
        subject=descriptor(OCI_MANIFEST, subject.body),
    )
    r = await put_manifest(client, "repo", sha256(body), body)
    assert r.status == 201
    assert r.headers["OCI-Subject"] == subject.digest


async def test_subject_may_not_exist_yet(client: Client) -> None:
    await push_blob(client, "repo", EMPTY_JSON)
    future = image_manifest(config_blob("future"), [])
    body = image_manifest(
        EMPTY_JSON,
        [],
        config_type=OCI_EMPTY,
        artifact_type="application/vnd.example.sig",
        subject=descriptor(OCI_MANIFEST, future),
    )
    r = await put_manifest(client, "repo", sha256(body), body)
    assert r.status == 201, await r.text()
    assert r.headers["OCI-Subject"] == sha256(future)
    assert await get_manifest(client, "repo", sha256(body), OCI_MANIFEST) == body


async def test_index_with_subject(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    child = await push_image(client, "repo", seed="child")
    body = index_manifest([(OCI_MANIFEST, child.body)], subject=descriptor(OCI_MANIFEST, subject.body))
    r = await put_manifest(client, "repo", sha256(body), body, OCI_INDEX)
    assert r.status == 201
    assert r.headers["OCI-Subject"] == subject.digest


async def test_docker_types_cannot_carry_a_subject(client: Client) -> None:
    image = await push_image(client, "repo", media_type=DOCKER_MANIFEST)
    doc: dict[str, Any] = json.loads(image.body)
    doc["subject"] = descriptor(DOCKER_MANIFEST, image.body)
    await expect_error(
        await put_manifest(client, "repo", "v1", dumps(doc), DOCKER_MANIFEST), 400, "MANIFEST_INVALID"
    )
    body = index_manifest(
        [(DOCKER_MANIFEST, image.body)],
        media_type=DOCKER_LIST,
        subject=descriptor(DOCKER_MANIFEST, image.body),
    )
    await expect_error(await put_manifest(client, "repo", "v2", body, DOCKER_LIST), 400, "MANIFEST_INVALID")


# ------------------------------------------------------------------ limits: etcd-sized manifests


@asynccontextmanager
async def registry_on(
    kv: EtcdKV, tmp_path: Path, limits: LimitsConfig
) -> AsyncIterator[tuple[Registry, Client]]:
    async with serving(kv, FilesystemBlobStore(tmp_path / "blobs"), limits=limits) as served:
        yield served


# --------------------------------------------------------------- races and re-pushes


async def test_a_repush_of_a_tags_manifest_racing_its_delete_keeps_the_acknowledged_tag(
    hooked: tuple[Registry, HookedKV, Client],
) -> None:
    """The re-push reads the tag (already at this digest), then the DELETE by
    digest commits (manifest and tag gone), then the re-push commits: both are
    acknowledged, so the only serial order is delete-then-push, which leaves
    the manifest, the tag and a "push" entry in the tag's history."""
    registry, kv, client = hooked
    image = await push_image(client, "repo", "v1")
    manifest_key = registry.meta.keys.manifest("repo", image.digest)
    delete_done = asyncio.Event()
    held = asyncio.Event()

    async def hold_the_push(compares: Sequence[Compare], ops: Sequence[TxnOp]) -> None:
        if not delete_done.is_set() and any(isinstance(op, Put) and op.key == manifest_key for op in ops):
            held.set()
            await delete_done.wait()

    kv.before_txn = hold_the_push
    push = asyncio.create_task(put_manifest(client, "repo", "v1", image.body))
    async with asyncio.timeout(30):
        await held.wait()
    deleted = await client.delete(f"/v2/repo/manifests/{image.digest}")
    assert deleted.status == 202
    delete_done.set()
    async with asyncio.timeout(30):
        pushed = await push
    assert pushed.status == 201, await pushed.text()
    assert pushed.headers.getall("OCI-Tag", []) in ([], ["v1"])
    assert await get_manifest(client, "repo", "v1", OCI_MANIFEST) == image.body
    r = await client.get("/hareg/v1/repositories/repo/tags/v1/history")
    actions = [(e["action"], e["new"]) for e in await r.json()]
    assert actions == [("push", image.digest), ("delete", None), ("push", image.digest)]


async def test_a_repeated_tag_param_is_one_tag(client: Client) -> None:
    image = await push_image(client, "repo")
    r = await put_manifest(
        client, "repo", image.digest, image.body, params=[("tag", "a"), ("tag", "b"), ("tag", "a")]
    )
    assert r.status == 201, await r.text()
    assert [t.strip() for h in r.headers.getall("OCI-Tag") for t in h.split(",")] == ["a", "b"]
    assert await tags_of(client, "repo") == ["a", "b"]
    # By tag, with the same tag again as a parameter.
    r = await put_manifest(client, "repo", "c", image.body, params=[("tag", "c"), ("tag", "c")])
    assert r.status == 201, await r.text()
    r = await client.get("/hareg/v1/repositories/repo/tags/c/history")
    assert len(await r.json()) == 1


@pytest.mark.parametrize(
    ("first", "second", "body_of"),
    [
        (OCI_MANIFEST, DOCKER_MANIFEST, "image"),
        (DOCKER_MANIFEST, OCI_MANIFEST, "image"),
        (OCI_INDEX, DOCKER_LIST, "index"),
    ],
)
async def test_a_digest_keeps_its_first_media_type(
    client: Client, first: str, second: str, body_of: str
) -> None:
    """A body without ``mediaType`` takes its type from the Content-Type of its
    first push; a re-push under another type is accepted (same bytes) but the
    digest is served as first stored, as distribution does."""
    config, layer = config_blob(), b"layer"
    for blob in (config, layer):
        await push_blob(client, "repo", blob)
    child = image_manifest(config, [layer], media_type=None)
    if body_of == "image":
        body = child
    else:
        assert (await put_manifest(client, "repo", sha256(child), child, OCI_MANIFEST)).status == 201
        doc = json.loads(index_manifest([(OCI_MANIFEST, child)]))
        del doc["mediaType"]
        body = dumps(doc)
    digest = sha256(body)
    assert (await put_manifest(client, "repo", "t", body, first)).status == 201
    r = await put_manifest(client, "repo", "t", body, second)
    assert r.status == 201, await r.text()
    assert r.headers["Docker-Content-Digest"] == digest
    for reference in ("t", digest):
        assert await get_manifest(client, "repo", reference, first) == body
        r = await client.head(f"/v2/repo/manifests/{reference}")
        assert r.headers["Content-Type"] == first


NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


async def test_urls_are_refused_unless_configured(client: Client, registry: Registry) -> None:
    config = config_blob()
    await push_blob(client, "repo", config)
    foreign = descriptor(NONDISTRIBUTABLE, b"windows base", urls=["https://example.com/layer"])
    doc = json.loads(image_manifest(config, []))
    doc["layers"] = [foreign]
    before = await snapshot(registry)
    entry = await expect_error(await put_manifest(client, "repo", "win", dumps(doc)), 400, "MANIFEST_INVALID")
    assert "layers[0]" in entry["message"] and "validation.manifests.urls.allow" in entry["message"]
    assert await snapshot(registry) == before


@pytest.fixture
async def urls_client(kv: EtcdKV, tmp_path: Path) -> AsyncIterator[Client]:
    """A registry whose configuration allows URLs under https://example.com/."""
    store = FilesystemBlobStore(tmp_path / "url-blobs")
    urls = UrlPolicy.compile([r"^https://example\.com/"], [r"/denied/"])
    async with serving(kv, store, manifest_urls=urls) as (_, c):
        yield c


async def test_references_and_annotations_are_capped(kv: EtcdKV, tmp_path: Path) -> None:
    limits = LimitsConfig(max_manifest_references=3, max_manifest_annotation_bytes=20)
    async with registry_on(kv, tmp_path, limits) as (reg, client):
        before = await snapshot(reg)
        config = config_blob()
        too_many = image_manifest(config, [b"l1", b"l2", b"l3"])  # config + 3 layers
        entry = await expect_error(await put_manifest(client, "repo", "t", too_many), 400, "MANIFEST_INVALID")
        assert "limits.maxManifestReferences" in entry["message"]
        children = [(OCI_MANIFEST, image_manifest(config, [bytes([i])])) for i in range(4)]
        index = index_manifest(children)
        entry = await expect_error(
            await put_manifest(client, "repo", "i", index, OCI_INDEX), 400, "MANIFEST_INVALID"
        )
        assert entry["detail"] == {"limit": "limits.maxManifestReferences", "references": 4}
        noted = image_manifest(config, [b"l1"], annotations={"note": "é" * 10})  # 4 + 20 bytes
        entry = await expect_error(await put_manifest(client, "repo", "n", noted), 400, "MANIFEST_INVALID")
        assert "limits.maxManifestAnnotationBytes" in entry["message"]
        assert (await snapshot(reg)).keys == before.keys
        # Within both caps: pushed.
        image = await push_image(client, "repo", "ok", layer_count=2, annotations={"a": "b"})
        assert image.digest


@pytest.fixture
async def strict_etcd_kv(tmp_path: Path) -> AsyncIterator[EtcdKV]:
    """An etcd with the default --max-txn-ops of etcd itself (128), as an
    external etcd has (hareg's own etcd processes allow more)."""
    proc = EtcdProcess("strict", tmp_path / "etcd", max_txn_ops=128)
    await proc.start(startup_timeout=60)
    try:
        kv = await EtcdKV.connect([proc.client_url], timeout=5.0)
        try:
            yield kv
        finally:
            await kv.close()
    finally:
        await proc.stop()


async def test_a_manifest_larger_than_etcd_accepts_is_refused_not_retried(
    strict_etcd_kv: EtcdKV, tmp_path: Path
) -> None:
    """With the reference cap switched off, etcd refuses the transaction: a
    400 that says so, never a 503 with Retry-After that invites endless retries."""
    async with registry_on(strict_etcd_kv, tmp_path, LimitsConfig(max_manifest_references=0)) as (
        reg,
        client,
    ):
        # Inline, so that the transaction is the first to see the references (a
        # body for the blob store is preceded by a check that they exist).
        reg.meta.inline_limit = 1024 * 1024
        body = image_manifest(config_blob(), [i.to_bytes(2, "big") for i in range(130)])
        r = await put_manifest(client, "repo", "big", body)
        assert "Retry-After" not in r.headers
        entry = await expect_error(r, 400, "MANIFEST_INVALID")
        assert "etcd" in entry["message"] and "limits.maxManifestReferences" in entry["message"]


async def test_docker_foreign_layer_need_not_be_pushed(urls_client: Client) -> None:
    client = urls_client
    config = config_blob()
    await push_blob(client, "repo", config)
    foreign = descriptor(DOCKER_FOREIGN_LAYER, b"windows base", urls=["https://example.com/layer"])
    doc = json.loads(image_manifest(config, [], media_type=DOCKER_MANIFEST))
    doc["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json"
    doc["layers"] = [foreign]
    body = dumps(doc)
    assert (await put_manifest(client, "repo", "win", body, DOCKER_MANIFEST)).status == 201
    # A denied URL is refused even though allow matches it.
    foreign["urls"] = ["https://example.com/denied/layer"]
    entry = await expect_error(
        await put_manifest(client, "repo", "win2", dumps(doc), DOCKER_MANIFEST), 400, "MANIFEST_INVALID"
    )
    assert "validation.manifests.urls.deny" in entry["message"]


async def test_an_ordinary_layer_with_urls_must_have_been_pushed(urls_client: Client) -> None:
    client = urls_client
    config, missing = config_blob(), b"never pushed"
    await push_blob(client, "repo", config)
    doc = json.loads(image_manifest(config, [missing]))
    doc["layers"][0]["urls"] = ["https://example.com/layer"]
    entry = await expect_error(
        await put_manifest(client, "repo", "v1", dumps(doc)), 400, "MANIFEST_BLOB_UNKNOWN"
    )
    assert sha256(missing) in entry["message"]
    await expect_error(await client.get("/v2/repo/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    await push_blob(client, "repo", missing)
    assert (await put_manifest(client, "repo", "v1", dumps(doc))).status == 201


async def test_a_tag_read_from_etcd_sees_tag_and_manifest_at_one_revision(kv: EtcdKV, tmp_path: Path) -> None:
    """Without the cache, a pull by tag reads the tag, then its manifest.  The
    tag moves and its old manifest is deleted in between: the pull still
    answers (the manifest as of the tag's revision), never 404 for a tag that
    existed throughout."""
    hooked = HookedKV(kv)
    async with serving(hooked, FilesystemBlobStore(tmp_path / "blobs"), cache=False) as (registry, client):
        old = await push_image(client, "repo", "t", seed="old")
        new = await push_image(client, "repo", None, seed="new")
        tag_key = registry.meta.keys.tag("repo", "t")
        moved = False

        async def move_and_delete(start: bytes, _: RangeResult) -> None:
            nonlocal moved
            if start != tag_key or moved:
                return
            moved = True
            assert (await put_manifest(client, "repo", "t", new.body)).status == 201
            assert (await client.delete(f"/v2/repo/manifests/{old.digest}")).status == 202

        hooked.after_range = move_and_delete
        r = await client.get("/v2/repo/manifests/t", headers={"Accept": OCI_MANIFEST})
        hooked.after_range = None
        assert moved
        assert r.status == 200, await r.text()
        assert await r.read() == old.body  # as of the tag's revision
        assert await get_manifest(client, "repo", "t", OCI_MANIFEST) == new.body
