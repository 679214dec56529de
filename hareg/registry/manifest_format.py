"""Parsing and validating manifests: OCI image manifest and index, Docker
schema2 manifest and manifest list, and artifacts (OCI manifests with any
artifactType or config media type).

Pure functions: bytes in, a ParsedManifest or a RegistryError out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hareg.registry.digests import Digest, parse_digest
from hareg.registry.errors import ErrorCode, RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES

# Layers that clients fetch from their ``urls`` (non-distributable, "foreign"):
# the only descriptors whose blob may be absent from the repository.
FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

# The spec asks registries to accept at least 4 MB; more is refused with 413.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Which descriptor ``urls`` a pushed manifest may carry (the configuration's
    ``validation.manifests.urls``): http(s) URLs without a fragment that some
    ``allow`` expression finds and no ``deny`` expression finds.  The default
    allows none, so a manifest can never point clients at hosts the operator
    did not choose."""

    allow: tuple[re.Pattern[str], ...] = ()
    deny: tuple[re.Pattern[str], ...] = ()

    @staticmethod
    def compile(allow: Sequence[str], deny: Sequence[str]) -> UrlPolicy:
        return UrlPolicy(tuple(re.compile(p) for p in allow), tuple(re.compile(p) for p in deny))

    def problem(self, url: str) -> str | None:
        """Why ``url`` is refused, naming the setting that refuses it; None if accepted."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest or "#" in url:
            return "only http:// and https:// URLs without a fragment are accepted"
        if not self.allow:
            return "no URL is allowed (validation.manifests.urls.allow is empty)"
        if not any(p.search(url) for p in self.allow):
            return "it matches no expression of validation.manifests.urls.allow"
        if any(p.search(url) for p in self.deny):
            return "it matches an expression of validation.manifests.urls.deny"
        return None


NO_URLS = UrlPolicy()


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    blobs: tuple[str, ...]  # config and layer digests that must exist in the repository
    manifests: tuple[str, ...]  # child manifest digests (indexes) that must exist
    subject: Descriptor | None = None
    # What the referrers API reports: artifactType, else (image manifests) config.mediaType.
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, message)


def strip_content_type(header: str | None) -> str | None:
    """The media type of a Content-Type header, parameters dropped (as the spec asks)."""
    if not header:
        return None
    return header.split(";", 1)[0].strip().lower() or None


def _string(obj: dict[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _invalid(f"{where}: missing {key!r}")
        return None
    if not isinstance(value, str):
        raise _invalid(f"{where}: {key!r} must be a string")
    return _storable(value, f"{where}: {key!r}")


def _storable(text: str, where: str) -> str:
    """``text`` unless it holds a lone surrogate (JSON's "\\ud800" escapes allow
    them): such a string cannot be encoded as UTF-8, so it could not be stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(f"{where} holds an unpaired UTF-16 surrogate") from None
    return text


def _annotations(obj: dict[str, Any], where: str) -> dict[str, str]:
    value = obj.get("annotations")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where}: 'annotations' must be a map of strings to strings")
    for k, v in value.items():
        _storable(k, f"{where}: annotation key")
        _storable(v, f"{where}: annotation {k[:100]!r}")
    return value


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where}: a descriptor must be a JSON object")
    media_type = _string(value, "mediaType", where, required=True)
    digest_text = _string(value, "digest", where, required=True)
    assert media_type is not None and digest_text is not None
    try:
        digest: Digest = parse_digest(digest_text)
    except RegistryError as exc:
        raise _invalid(f"{where}: {exc.message}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}: 'size' must be a non-negative integer")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}: 'urls' must be a list of strings")
    return Descriptor(
        media_type=media_type,
        digest=str(digest),
        size=size,
        artifact_type=_string(value, "artifactType", where, required=False),
        annotations=_annotations(value, where) or None,
        urls=tuple(urls),
    )


def _resolve_media_type(doc: dict[str, Any], content_type: str | None) -> str:
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("'mediaType' must be a string")
    if declared in DOCKER_SCHEMA1 or content_type in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise _invalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    if doc.get("schemaVersion") != 2:
        raise _invalid("'schemaVersion' must be 2")
    if declared is not None and content_type is not None and declared != content_type:
        # Clients MUST send the body's mediaType as Content-Type; a mismatch is a client bug
        # that would make pulls return a type the body contradicts.
        raise _invalid(f"Content-Type {content_type!r} does not match the manifest's mediaType {declared!r}")
    media_type = declared or content_type
    if media_type is None:
        # Neither said it: infer the OCI type from the shape, as the image spec allows.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise _invalid(
            f"unsupported manifest media type {media_type[:200]!r}; supported: {', '.join(sorted(MANIFEST_TYPES))}"
        )
    return media_type


def _check_urls(descriptors: Sequence[tuple[Descriptor, str]], urls: UrlPolicy) -> None:
    for descriptor, where in descriptors:
        for url in descriptor.urls:
            if (problem := urls.problem(url)) is not None:
                raise _invalid(f"{where}: URL {url[:200]!r} is refused: {problem}")


def parse_manifest(body: bytes, content_type_header: str | None, urls: UrlPolicy = NO_URLS) -> ParsedManifest:
    """Validate a manifest body and extract what it references.  Descriptor
    ``urls`` must pass ``urls``; a foreign layer with URLs may be absent from
    the registry, every other descriptor's blob must be there."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise RegistryError(
            ErrorCode.MANIFEST_INVALID,
            f"manifest is {len(body)} bytes; the limit is {MAX_MANIFEST_BYTES}",
            status=413,
        )
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    content_type = strip_content_type(content_type_header)
    media_type = _resolve_media_type(doc, content_type)
    annotations = _annotations(doc, "manifest")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    artifact_type = _string(doc, "artifactType", "manifest", required=False)

    if media_type in INDEX_TYPES:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise _invalid("an index must have a 'manifests' list")
        descriptors = [_descriptor(c, f"manifests[{i}]") for i, c in enumerate(children)]
        _check_urls([(d, f"manifests[{i}]") for i, d in enumerate(descriptors)], urls)
        if media_type == DOCKER_MANIFEST_LIST and subject is not None:
            raise _invalid("a Docker manifest list cannot have a subject")
        return ParsedManifest(
            media_type=media_type,
            blobs=(),
            manifests=tuple(dict.fromkeys(d.digest for d in descriptors)),
            subject=subject,
            artifact_type=artifact_type,
            annotations=annotations,
        )

    if "manifests" in doc:
        raise _invalid("an image manifest cannot have a 'manifests' list")
    config = _descriptor(doc.get("config"), "config")
    layers_raw = doc.get("layers", [])
    if not isinstance(layers_raw, list):
        raise _invalid("'layers' must be a list")
    layers = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers_raw)]
    if media_type == DOCKER_MANIFEST and (subject is not None or artifact_type is not None):
        raise _invalid("a Docker schema 2 manifest cannot have a subject or an artifactType")
    _check_urls([(config, "config"), *((d, f"layers[{i}]") for i, d in enumerate(layers))], urls)
    # Foreign (non-distributable) layers live at their URLs, not in this registry;
    # any other layer must be here, whatever ``urls`` it lists (distribution does so).
    blobs = [config.digest] + [
        layer.digest for layer in layers if not (layer.urls and layer.media_type in FOREIGN_LAYER_TYPES)
    ]
    return ParsedManifest(
        media_type=media_type,
        blobs=tuple(dict.fromkeys(blobs)),
        manifests=(),
        subject=subject,
        artifact_type=artifact_type or config.media_type,
        annotations=annotations,
    )
