"""The referrers API: /v2/<name>/referrers/<digest>[?artifactType=...]."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from oci_helpers import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    descriptor,
    expect_error,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    sha256,
)

from hareg.registry.service import Registry

SBOM = "application/vnd.example.sbom.v1"
SIG = "application/vnd.example.signature.v1"
CUSTOM_CONFIG = "application/vnd.example.config.v1+json"


async def referrers(
    client: Client, repo: str, digest: str, **params: str
) -> tuple[dict[str, Any], str | None]:
    r = await client.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert r.status == 200, (r.status, await r.text())
    assert r.headers["Content-Type"] == OCI_INDEX
    index = json.loads(await r.read())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    assert isinstance(index["manifests"], list)
    return index, r.headers.get("OCI-Filters-Applied")


async def push_artifact(
    client: Client,
    repo: str,
    subject: bytes,
    *,
    artifact_type: str | None,
    payload: bytes,
    config: bytes = EMPTY_JSON,
    config_type: str = OCI_EMPTY,
    annotations: dict[str, str] | None = None,
) -> bytes:
    await push_blob(client, repo, config)
    await push_blob(client, repo, payload)
    body = image_manifest(
        config,
        [payload],
        config_type=config_type,
        layer_type="application/octet-stream",
        artifact_type=artifact_type,
        subject=descriptor(OCI_MANIFEST, subject),
        annotations=annotations,
    )
    r = await put_manifest(client, repo, sha256(body), body)
    assert r.status == 201, await r.text()
    assert r.headers["OCI-Subject"] == sha256(subject)
    return body


async def test_referrers_index_content(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    sbom = await push_artifact(
        client,
        "repo",
        subject.body,
        artifact_type=SBOM,
        payload=b"sbom",
        annotations={"org.example.format": "json"},
    )
    # No artifactType: the config media type stands in for it.
    signed = await push_artifact(
        client,
        "repo",
        subject.body,
        artifact_type=None,
        payload=b"sig",
        config=b'{"k":"v"}',
        config_type=CUSTOM_CONFIG,
        annotations={"org.example.signer": "me", "org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    )
    # An index referrer without artifactType: none is reported.
    child = await push_image(client, "repo", seed="child")
    plain_index = index_manifest(
        [(OCI_MANIFEST, child.body)],
        subject=descriptor(OCI_MANIFEST, subject.body),
        annotations={"kind": "index"},
    )
    assert (await put_manifest(client, "repo", sha256(plain_index), plain_index, OCI_INDEX)).status == 201
    # An index referrer with artifactType and no annotations.
    typed_index = index_manifest(
        [(OCI_MANIFEST, child.body)],
        artifact_type="application/vnd.food.stand",
        subject=descriptor(OCI_MANIFEST, subject.body),
    )
    assert (await put_manifest(client, "repo", sha256(typed_index), typed_index, OCI_INDEX)).status == 201

    index, filters = await referrers(client, "repo", subject.digest)
    assert filters is None
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert len(by_digest) == len(index["manifests"]) == 4
    assert by_digest[sha256(sbom)] == {
        "mediaType": OCI_MANIFEST,
        "digest": sha256(sbom),
        "size": len(sbom),
        "artifactType": SBOM,
        "annotations": {"org.example.format": "json"},
    }
    assert by_digest[sha256(signed)] == {
        "mediaType": OCI_MANIFEST,
        "digest": sha256(signed),
        "size": len(signed),
        "artifactType": CUSTOM_CONFIG,
        "annotations": {
            "org.example.signer": "me",
            "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
        },
    }
    assert by_digest[sha256(plain_index)] == {
        "mediaType": OCI_INDEX,
        "digest": sha256(plain_index),
        "size": len(plain_index),
        "annotations": {"kind": "index"},
    }
    assert by_digest[sha256(typed_index)] == {
        "mediaType": OCI_INDEX,
        "digest": sha256(typed_index),
        "size": len(typed_index),
        "artifactType": "application/vnd.food.stand",
    }


async def test_empty_config_artifact_reports_its_artifact_type(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    body = await push_artifact(client, "repo", subject.body, artifact_type=SIG, payload=b"s")
    index, _ = await referrers(client, "repo", subject.digest)
    assert [(d["digest"], d["artifactType"]) for d in index["manifests"]] == [(sha256(body), SIG)]


async def test_artifact_type_filter(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    sboms = [
        await push_artifact(client, "repo", subject.body, artifact_type=SBOM, payload=f"sbom{i}".encode())
        for i in range(2)
    ]
    await push_artifact(client, "repo", subject.body, artifact_type=SIG, payload=b"sig")
    await push_artifact(
        client, "repo", subject.body, artifact_type=None, payload=b"x", config=b"{}", config_type=SBOM
    )
    index, filters = await referrers(client, "repo", subject.digest, artifactType=SBOM)
    assert filters == "artifactType"
    got = {d["digest"] for d in index["manifests"]}
    assert {sha256(b) for b in sboms} <= got and len(got) == 3
    assert all(d["artifactType"] == SBOM for d in index["manifests"])
    index, filters = await referrers(client, "repo", subject.digest, artifactType="application/vnd.none")
    assert filters == "artifactType"
    assert index["manifests"] == []


async def test_empty_result_is_200_with_an_empty_index(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    index, filters = await referrers(client, "repo", subject.digest)
    assert index == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert filters is None
    # A digest nothing has (a blob, an unknown digest): also an empty list.
    index, _ = await referrers(client, "repo", subject.blobs[0])
    assert index["manifests"] == []
    index, _ = await referrers(client, "repo", sha256(b"hello world"))
    assert index["manifests"] == []


async def test_unknown_repository_is_200_empty(client: Client) -> None:
    index, _ = await referrers(client, "nosuch/repo", sha256(b"x"))
    assert index["manifests"] == []


@pytest.mark.parametrize("bad", ["sha256:abc", "sha256:" + "Z" * 64, "md5:" + "0" * 32, "latest", "sha256"])
async def test_invalid_digest_is_400(client: Client, bad: str) -> None:
    await push_image(client, "repo", "v1")
    await expect_error(await client.get(f"/v2/repo/referrers/{bad}"), 400, "DIGEST_INVALID")


async def test_invalid_repository_name_is_400(client: Client) -> None:
    await expect_error(await client.get(f"/v2/Bad/referrers/{sha256(b'x')}"), 400, "NAME_INVALID")


async def test_referrer_pushed_before_its_subject(client: Client) -> None:
    future = image_manifest(b'{"future":1}', [])
    body = await push_artifact(client, "repo", future, artifact_type=SBOM, payload=b"early")
    index, _ = await referrers(client, "repo", sha256(future))
    assert [d["digest"] for d in index["manifests"]] == [sha256(body)]


async def test_deleting_the_referrer_removes_it(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    keep = await push_artifact(client, "repo", subject.body, artifact_type=SBOM, payload=b"keep")
    gone = await push_artifact(client, "repo", subject.body, artifact_type=SBOM, payload=b"gone")
    assert (await client.delete(f"/v2/repo/manifests/{sha256(gone)}")).status == 202
    index, _ = await referrers(client, "repo", subject.digest)
    assert [d["digest"] for d in index["manifests"]] == [sha256(keep)]


async def test_referrers_are_per_repository(client: Client) -> None:
    subject = await push_image(client, "one", "v1")
    await push_artifact(client, "two", subject.body, artifact_type=SBOM, payload=b"elsewhere")
    index, _ = await referrers(client, "one", subject.digest)
    assert index["manifests"] == []
    index, _ = await referrers(client, "two", subject.digest)
    assert len(index["manifests"]) == 1


async def test_deleting_the_subject_keeps_referrers_listed(client: Client) -> None:
    subject = await push_image(client, "repo", "v1")
    body = await push_artifact(client, "repo", subject.body, artifact_type=SBOM, payload=b"p")
    assert (await client.delete(f"/v2/repo/manifests/{subject.digest}")).status == 202
    index, _ = await referrers(client, "repo", subject.digest)
    assert [d["digest"] for d in index["manifests"]] == [sha256(body)]


async def test_a_large_referrers_index_is_paged_with_link(client: Client, registry: Registry) -> None:
    """Over the page bound (4 MiB of JSON; lowered here) the index comes in pages
    linked by Link headers, the artifactType filter carried along."""
    registry.listing.referrers_page_bytes = 2500
    subject = await push_image(client, "repo", "v1")
    pushed: dict[str, str] = {}
    for i in range(12):
        kind = SBOM if i % 3 else SIG
        body = await push_artifact(
            client,
            "repo",
            subject.body,
            artifact_type=kind,
            payload=f"artifact {i}".encode(),
            annotations={"org.example.note": "x" * 300},
        )
        pushed[sha256(body)] = kind

    async def follow(url: str) -> tuple[list[str], int]:
        digests: list[str] = []
        pages = 0
        next_url: str | None = url
        while next_url is not None:
            pages += 1
            assert pages <= 20, "pagination does not end"
            r = await client.get(next_url)
            assert r.status == 200
            assert r.headers["Content-Type"] == OCI_INDEX
            body = await r.read()
            assert len(body) <= 2500
            digests += [d["digest"] for d in json.loads(body)["manifests"]]
            link = r.headers.get("Link")
            m = re.fullmatch(r'<(/v2/repo/referrers/[^>]+)>; rel="next"', link) if link else None
            assert link is None or m, link
            next_url = m[1] if m else None
        return digests, pages

    everything, pages = await follow(f"/v2/repo/referrers/{subject.digest}")
    assert everything == sorted(pushed) and pages > 1
    sboms, sbom_pages = await follow(f"/v2/repo/referrers/{subject.digest}?artifactType={SBOM}")
    assert sboms == sorted(d for d, kind in pushed.items() if kind == SBOM) and sbom_pages > 1
    # Small enough for one page: no Link.
    registry.listing.referrers_page_bytes = 1 << 22
    r = await client.get(f"/v2/repo/referrers/{subject.digest}")
    assert "Link" not in r.headers
    assert len(json.loads(await r.read())["manifests"]) == 12
