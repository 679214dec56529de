"""Manifest parsing and validation (hareg.registry.manifest_format)."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.manifest_format import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    FOREIGN_LAYER_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    UrlPolicy,
    parse_manifest,
    strip_content_type,
)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def desc(media_type: str, name: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(name), "size": size, **extra}


def image(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, "config"),
        "layers": [desc(OCI_LAYER, "l1"), desc(OCI_LAYER, "l2")],
    }
    doc.update(fields)
    return doc


def index(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [desc(OCI_MANIFEST, "m1"), desc(OCI_MANIFEST, "m2")],
    }
    doc.update(fields)
    return doc


def parse(doc: Any, content_type: str | None = None) -> Any:
    return parse_manifest(json.dumps(doc).encode(), content_type)


def invalid(
    doc: Any, content_type: str | None = None, code: ErrorCode = ErrorCode.MANIFEST_INVALID
) -> RegistryError:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(RegistryError) as info:
        parse_manifest(body, content_type)
    assert info.value.code is code
    return info.value


# ------------------------------------------------------------------- accepted


def test_oci_image_manifest() -> None:
    parsed = parse(image(annotations={"a": "b"}), OCI_MANIFEST)
    assert parsed.media_type == OCI_MANIFEST
    assert parsed.blobs == (digest("config"), digest("l1"), digest("l2"))
    assert parsed.manifests == ()
    assert parsed.subject is None
    assert parsed.artifact_type == OCI_CONFIG  # config.mediaType stands in
    assert parsed.annotations == {"a": "b"}


def test_blobs_are_deduplicated_in_order() -> None:
    parsed = parse(image(layers=[desc(OCI_LAYER, "l1"), desc(OCI_LAYER, "config"), desc(OCI_LAYER, "l1")]))
    assert parsed.blobs == (digest("config"), digest("l1"))


def test_artifact_type_wins_over_config_media_type() -> None:
    parsed = parse(image(artifactType="application/vnd.example.sbom", config=desc(OCI_EMPTY, "{}", 2)))
    assert parsed.artifact_type == "application/vnd.example.sbom"


def test_custom_config_media_type_is_the_artifact_type() -> None:
    parsed = parse(image(config=desc("application/vnd.cncf.helm.config.v1+json", "chart")))
    assert parsed.artifact_type == "application/vnd.cncf.helm.config.v1+json"
    assert parsed.blobs[0] == digest("chart")


def test_subject() -> None:
    parsed = parse(image(subject=desc(OCI_MANIFEST, "subject", 123)))
    assert parsed.subject == Descriptor(OCI_MANIFEST, digest("subject"), 123)
    assert digest("subject") not in parsed.blobs  # a subject may be pushed later


def test_oci_index() -> None:
    parsed = parse(
        index(manifests=[desc(OCI_MANIFEST, "m1"), desc(OCI_INDEX, "i1"), desc(OCI_MANIFEST, "m1")])
    )
    assert parsed.media_type == OCI_INDEX
    assert parsed.blobs == ()
    assert parsed.manifests == (digest("m1"), digest("i1"))
    assert parsed.artifact_type is None  # an index without artifactType reports none


def test_index_artifact_type_subject_and_annotations() -> None:
    parsed = parse(
        index(
            artifactType="application/vnd.food.stand", subject=desc(OCI_MANIFEST, "s"), annotations={"k": "v"}
        )
    )
    assert parsed.artifact_type == "application/vnd.food.stand"
    assert parsed.subject is not None and parsed.subject.digest == digest("s")
    assert parsed.annotations == {"k": "v"}


def test_empty_index_and_image_without_layers() -> None:
    assert parse(index(manifests=[])).manifests == ()
    assert parse(image(layers=[])).blobs == (digest("config"),)
    doc = image()
    del doc["layers"]
    assert parse(doc).blobs == (digest("config"),)


def test_docker_schema2() -> None:
    doc = image(mediaType=DOCKER_MANIFEST, config=desc("application/vnd.docker.container.image.v1+json", "c"))
    parsed = parse(doc, DOCKER_MANIFEST)
    assert parsed.media_type == DOCKER_MANIFEST
    assert parsed.blobs[0] == digest("c")


ALLOW_X = UrlPolicy.compile([r"^https://x/"], [])


def test_docker_foreign_layers_are_not_required() -> None:
    foreign = desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "win", urls=["https://x/y"])
    doc = image(mediaType=DOCKER_MANIFEST, layers=[foreign, desc(OCI_LAYER, "l1")])
    parsed = parse_manifest(json.dumps(doc).encode(), DOCKER_MANIFEST, ALLOW_X)
    assert parsed.blobs == (digest("config"), digest("l1"))


@pytest.mark.parametrize("layer_type", sorted(FOREIGN_LAYER_TYPES))
def test_a_foreign_layer_without_urls_must_be_in_the_registry(layer_type: str) -> None:
    parsed = parse(image(layers=[desc(layer_type, "f")]))
    assert digest("f") in parsed.blobs


def test_an_ordinary_layer_with_urls_must_still_be_in_the_registry() -> None:
    # Its urls do not excuse its absence: only a non-distributable layer lives elsewhere.
    doc = image(layers=[desc(OCI_LAYER, "l1", urls=["https://x/l1"])])
    parsed = parse_manifest(json.dumps(doc).encode(), None, ALLOW_X)
    assert parsed.blobs == (digest("config"), digest("l1"))


@pytest.mark.parametrize(
    ("policy", "url", "names"),
    [
        (UrlPolicy(), "https://x/y", "validation.manifests.urls.allow is empty"),
        (ALLOW_X, "https://elsewhere/y", "validation.manifests.urls.allow"),
        (
            UrlPolicy.compile([r"^https://"], [r"evil"]),
            "https://evil.example/y",
            "validation.manifests.urls.deny",
        ),
        (ALLOW_X, "ftp://x/y", "http:// and https://"),
        (ALLOW_X, "https://x/y#frag", "without a fragment"),
    ],
)
def test_descriptor_urls_are_checked_against_the_configured_lists(
    policy: UrlPolicy, url: str, names: str
) -> None:
    foreign = desc("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "f", urls=[url])
    with pytest.raises(RegistryError) as info:
        parse_manifest(json.dumps(image(layers=[foreign])).encode(), None, policy)
    assert info.value.code is ErrorCode.MANIFEST_INVALID
    assert "layers[0]" in info.value.message and names in info.value.message


def test_index_children_urls_are_checked_too() -> None:
    with pytest.raises(RegistryError, match="manifests\\[1\\]"):
        parse(index(manifests=[desc(OCI_MANIFEST, "m1"), desc(OCI_MANIFEST, "m2", urls=["https://x/m2"])]))


def test_docker_manifest_list() -> None:
    doc = index(mediaType=DOCKER_MANIFEST_LIST, manifests=[desc(DOCKER_MANIFEST, "d1")])
    parsed = parse(doc, DOCKER_MANIFEST_LIST)
    assert parsed.media_type == DOCKER_MANIFEST_LIST
    assert parsed.manifests == (digest("d1"),)


@pytest.mark.parametrize(
    ("doc", "content_type", "expected"),
    [
        (image(mediaType=None), OCI_MANIFEST, OCI_MANIFEST),
        (index(mediaType=None), OCI_INDEX, OCI_INDEX),
        (image(mediaType=None), None, OCI_MANIFEST),  # inferred from the shape
        (index(mediaType=None), None, OCI_INDEX),
        (image(), None, OCI_MANIFEST),
        (image(), f"{OCI_MANIFEST}; charset=utf-8", OCI_MANIFEST),
        (image(), "Application/VND.OCI.Image.Manifest.v1+JSON", OCI_MANIFEST),
    ],
)
def test_media_type_resolution(doc: dict[str, Any], content_type: str | None, expected: str) -> None:
    doc = {k: v for k, v in doc.items() if v is not None}
    assert parse(doc, content_type).media_type == expected


def test_strip_content_type() -> None:
    assert strip_content_type(None) is None
    assert strip_content_type("") is None
    assert strip_content_type(";") is None
    assert strip_content_type(" A/B ; q=1") == "a/b"


def test_unknown_fields_are_ignored() -> None:
    doc = image(extra={"nested": [1, 2, 3]})
    doc["config"]["data"] = "e30="
    doc["config"]["newUnspecifiedField"] = "aGVsbG8="
    assert parse(doc).blobs[0] == digest("config")


def test_exactly_the_size_limit_is_accepted() -> None:
    doc = index(manifests=[], annotations={"pad": ""})
    pad = MAX_MANIFEST_BYTES - len(json.dumps(doc).encode())
    doc["annotations"]["pad"] = "x" * pad
    body = json.dumps(doc).encode()
    assert len(body) == MAX_MANIFEST_BYTES
    assert parse_manifest(body, OCI_INDEX).media_type == OCI_INDEX


# ------------------------------------------------------------------- refused


def test_over_the_size_limit_is_413() -> None:
    err = invalid(b" " * (MAX_MANIFEST_BYTES + 1))
    assert err.status == 413


@pytest.mark.parametrize(
    "body", [b"", b"{", b"nope", b"\xff", b"[" * 200_000, b'{"a": ' * 5000 + b"1" + b"}" * 5000]
)
def test_not_json(body: bytes) -> None:
    assert invalid(body).status == 400


@pytest.mark.parametrize("doc", [[], "x", 1, None, True, 1.5])
def test_not_an_object(doc: Any) -> None:
    invalid(doc)


@pytest.mark.parametrize(
    ("doc", "content_type"),
    [
        ({"schemaVersion": 1, "fsLayers": []}, None),
        (image(schemaVersion=1), None),
        (image(mediaType=None), "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        (image(mediaType="application/vnd.docker.distribution.manifest.v1+json"), None),
        (image(schemaVersion=3), None),
        (image(schemaVersion="2"), None),
        ({"mediaType": OCI_MANIFEST, "config": desc(OCI_CONFIG, "c")}, None),
    ],
)
def test_schema_versions(doc: dict[str, Any], content_type: str | None) -> None:
    doc = {k: v for k, v in doc.items() if v is not None}
    invalid(doc, content_type)


@pytest.mark.parametrize(
    ("doc", "content_type"),
    [
        (image(), OCI_INDEX),
        (image(), DOCKER_MANIFEST),
        (index(), OCI_MANIFEST),
        (image(mediaType="application/vnd.example+json"), "application/vnd.example+json"),
        (image(mediaType=None), "application/octet-stream"),
        (image(mediaType=None), "text/plain"),
        (image(mediaType=5), None),
    ],
)
def test_media_type_mismatch_or_unsupported(doc: dict[str, Any], content_type: str | None) -> None:
    doc = {k: v for k, v in doc.items() if v is not None}
    invalid(doc, content_type)


@pytest.mark.parametrize(
    "doc",
    [
        image(config=None),
        image(config="sha256:x"),
        image(config=desc(OCI_CONFIG, "c", -1)),
        image(config=desc(OCI_CONFIG, "c", True)),
        image(config={**desc(OCI_CONFIG, "c"), "size": 1.5}),
        image(config={**desc(OCI_CONFIG, "c"), "digest": "sha256:short"}),
        image(config={**desc(OCI_CONFIG, "c"), "digest": 5}),
        image(config={"digest": digest("c"), "size": 1}),
        image(config={**desc(OCI_CONFIG, "c"), "urls": "http://x"}),
        image(config={**desc(OCI_CONFIG, "c"), "annotations": {"a": None}}),
        image(layers="x"),
        image(layers=[desc(OCI_LAYER, "l"), "x"]),
        image(manifests=[]),
        image(annotations=["x"]),
        image(annotations={"a": 1}),
        image(annotations={"a": "\ud800"}),
        image(artifactType=7),
        image(artifactType="application/\udfff"),
        image(config={**desc(OCI_CONFIG, "c"), "mediaType": "\udc00"}),
        image(subject="sha256:x"),
        image(subject={"digest": digest("s")}),
        image(mediaType=DOCKER_MANIFEST, subject=desc(OCI_MANIFEST, "s")),
        image(mediaType=DOCKER_MANIFEST, artifactType="x"),
        index(manifests=None),
        index(manifests={"a": 1}),
        index(manifests=[desc(OCI_MANIFEST, "m"), None]),
        index(manifests=[{**desc(OCI_MANIFEST, "m"), "digest": "md5:" + "0" * 32}]),
        index(mediaType=DOCKER_MANIFEST_LIST, subject=desc(OCI_MANIFEST, "s")),
        index(annotations={"\ud800": "v"}),
    ],
)
def test_invalid_fields(doc: dict[str, Any]) -> None:
    doc = {k: v for k, v in doc.items() if v is not None}
    content_type = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else None
    invalid(doc, content_type)


# ----------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
content_types = st.sampled_from(
    [None, OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, "x/y", ""]
)


@given(st.binary(max_size=512), content_types)
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_raise_registry_errors(body: bytes, content_type: str | None) -> None:
    try:
        parse_manifest(body, content_type)
    except RegistryError as exc:
        assert exc.code is ErrorCode.MANIFEST_INVALID


@given(json_values, content_types)
@settings(max_examples=150, deadline=None)
def test_random_json_only_raises_registry_errors(doc: Any, content_type: str | None) -> None:
    try:
        parse_manifest(json.dumps(doc).encode(), content_type)
    except RegistryError as exc:
        assert exc.code is ErrorCode.MANIFEST_INVALID


@given(
    st.sampled_from([image(), index(), image(subject=desc(OCI_MANIFEST, "s")), index(artifactType="a/b")]),
    st.lists(st.tuples(st.text(max_size=12), json_values), min_size=1, max_size=3),
    st.data(),
)
@settings(max_examples=200, deadline=None)
def test_mutated_manifests_only_raise_registry_errors(
    base: dict[str, Any], edits: list[tuple[str, Any]], data: st.DataObject
) -> None:
    """Replace fields (top-level or inside a descriptor) with arbitrary JSON."""
    doc = copy.deepcopy(base)
    for key, value in edits:
        targets: list[dict[str, Any]] = [doc]
        for field in ("config", "subject"):
            if isinstance(doc.get(field), dict):
                targets.append(doc[field])
        for field in ("layers", "manifests"):
            if isinstance(doc.get(field), list):
                targets += [d for d in doc[field] if isinstance(d, dict)]
        target = data.draw(st.sampled_from(targets))
        name = data.draw(
            st.sampled_from([key, "mediaType", "digest", "size", "annotations", "artifactType", "urls"])
        )
        target[name] = value
    try:
        parsed = parse_manifest(json.dumps(doc).encode(), None)
    except RegistryError as exc:
        assert exc.code is ErrorCode.MANIFEST_INVALID
    else:
        assert parsed.media_type in (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
        for d in parsed.blobs + parsed.manifests:
            assert d.startswith(("sha256:", "sha512:"))
        for k, v in parsed.annotations.items():
            assert isinstance(k, str) and isinstance(v, str)
            k.encode()
            v.encode()
