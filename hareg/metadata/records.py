"""Metadata records, stored as compact msgpack.

A record is written as a msgpack array of its fields in declaration order,
trailing defaults left out, with digests (``sha256:``/``sha512:`` and lowercase
hex) and canonical UUIDs (write ids) as raw bytes in msgpack extension types;
a value that deflate makes smaller is stored deflated behind the bytes 0xC1
(one msgpack never writes) and 0x01 (the dictionary, below), its digests
left as text so that deflate folds a digest a manifest body repeats.  docs/architecture.md ("What one image push
costs etcd") has the sizes.

Decoding also reads the maps of field names that earlier versions wrote
(etcd data from an earlier version stays readable, tests/metadata/test_records.py),
and ignores fields it does not know: trailing array elements past its own
fields, or unknown names of a map.  A record written by this version is not
readable by a version that writes maps: upgrade every replica (docs/lifecycle.md).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

R = TypeVar("R")

# msgpack never emits 0xC1: a value starting with it is this module's deflated
# form; the next byte says which preset dictionary it was deflated with.
_DEFLATED = 0xC1
_DICTIONARY_1 = 0x01
# Dictionary 1: what manifest bodies and records repeat from one to the next,
# the most common last (deflate reaches it with the shortest distances).  It
# saves about 150 bytes on a 1 KB image manifest.  Stored values depend on it:
# never change it; a better one is dictionary 2, and decoding keeps this one.
_PRESET_1 = "".join(
    [
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        '"platform": {"architecture": "amd64", "os": "linux"}',
        '"platform":{"architecture":"arm64","os":"linux"}',
        "application/vnd.oci.image.index.v1+json",
        '"org.opencontainers.image.source": "',
        '"org.opencontainers.image.created": "',
        '"org.opencontainers.image.revision": "',
        '"annotations": {',
        '"subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:',
        '"artifactType": "',
        '{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:',
        '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:',
        '"},{"mediaType":"',
        '{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:',
        '", "size": ',
        '"layers": [',
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":',
        '{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": ',
        "application/vnd.oci.image.manifest.v1+json",
    ]
).encode()
# Values shorter than this are never worth a deflate attempt.
_DEFLATE_FROM = 192
# Extension types: the raw bytes of a digest, and of a UUID.
_EXT_SHA256, _EXT_SHA512, _EXT_UUID = 1, 2, 3
_HEX = {"sha256:": (64, _EXT_SHA256), "sha512:": (128, _EXT_SHA512)}
_ALGORITHM = {_EXT_SHA256: "sha256:", _EXT_SHA512: "sha512:"}
_LOWER_HEX = re.compile(r"[0-9a-f]+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _packed(value: Any) -> Any:
    """``value`` with a digest or UUID string as its raw bytes (other values as they are)."""
    if isinstance(value, str):
        kind = _HEX.get(value[:7])
        if kind is not None and len(value) == 7 + kind[0] and _LOWER_HEX.fullmatch(value, 7):
            return msgpack.ExtType(kind[1], bytes.fromhex(value[7:]))
        if len(value) == 36 and _UUID.fullmatch(value):
            return msgpack.ExtType(_EXT_UUID, uuid.UUID(value).bytes)
        return value
    if isinstance(value, tuple):
        return [_packed(v) for v in value]
    return value


def _unpacked(code: int, data: bytes) -> Any:
    if code in _ALGORITHM:
        return _ALGORITHM[code] + data.hex()
    if code == _EXT_UUID:
        return str(uuid.UUID(bytes=data))
    return msgpack.ExtType(code, data)


def _fields(record: Any) -> list[Any]:
    """The field values in declaration order, trailing defaults left out."""
    fields = type(record).__dataclass_fields__
    values = [getattr(record, name) for name in fields]
    for f in reversed(fields.values()):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            break
        if values[-1] != default:
            break
        values.pop()
    return values


def encode(record: Any) -> bytes:
    # Records hold only scalars, tuples and flat dicts: the array is shallow.
    values = _fields(record)
    out: bytes = msgpack.packb([_packed(v) for v in values], use_bin_type=True)
    if len(out) >= _DEFLATE_FROM:
        text: bytes = msgpack.packb(values, use_bin_type=True)
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=_PRESET_1)
        smaller = bytes([_DEFLATED, _DICTIONARY_1]) + deflate.compress(text) + deflate.flush()
        if len(smaller) < len(out):
            return smaller
    return out


def decode(cls: type[R], data: bytes) -> R:
    if data[:1] == bytes([_DEFLATED]):
        if data[1:2] != bytes([_DICTIONARY_1]):
            raise ValueError(f"a record deflated with unknown dictionary {data[1:2].hex()}")
        inflate = zlib.decompressobj(-15, zdict=_PRESET_1)
        data = inflate.decompress(data[2:]) + inflate.flush()
    raw = msgpack.unpackb(data, raw=False, ext_hook=_unpacked)
    # The class's field table (records declare no ClassVar or InitVar pseudo-fields),
    # looked up per key without building a set for every decoded watch event.
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
    if isinstance(raw, list):  # this version's arrays; elements past the fields are newer ones
        return cls(*(tuple(v) if isinstance(v, list) else v for v in raw[: len(names)]))
    # The maps of field names earlier versions wrote.
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in names}
    return cls(**fields)


@dataclass(frozen=True, slots=True)
class RepoRecord:
    created: float


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """The bytes of ``digest`` are in the blob store (written before this record).

    ``state`` is "live", or "deleting" once garbage collection has claimed the
    blob: from then on no new link may be made to it, and its bytes go before
    the record does.  Every new link re-writes the record, so a collector's
    compare on the record's mod_revision fails if a link appeared meanwhile."""

    size: int
    created: float
    state: str = "live"


@dataclass(frozen=True, slots=True)
class LinkRecord:
    """A repository may serve the blob (it was pushed or mounted there).

    ``touched`` is when it was last created or found by a HEAD/GET: garbage
    collection spares links touched within its grace window, so a push that
    was told "layer already exists" can still reference the layer."""

    size: int
    created: float
    touched: float = 0.0


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    media_type: str
    size: int
    created: float
    blobs: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    # The exact bytes when small enough to keep in etcd; otherwise they are a
    # blob in the blob store under the manifest's digest.
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class TagRecord:
    digest: str
    seq: int  # this tag's history entry number (moves forward only)
    updated: float
    replica: str
    write_id: str  # identifies the write, to verify an ambiguous commit


@dataclass(frozen=True, slots=True)
class TagSeqRecord:
    """The last history number of a tag; survives the tag's deletion."""

    seq: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    seq: int
    time: float
    old: str | None
    new: str | None  # None: the tag was deleted
    replica: str
    action: str  # "push", "delete", "rollback"


@dataclass(frozen=True, slots=True)
class ReferrerRecord:
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ImmutabilityRecord:
    """A repository's immutable tags: a tag matching one of ``patterns``
    (fnmatch-style, case-sensitive) may be created but never moved or deleted."""

    patterns: tuple[str, ...]
    updated: float
    replica: str = ""
    write_id: str = ""  # identifies the write, to verify an ambiguous commit


@dataclass(frozen=True, slots=True)
class UploadRecord:
    repo: str
    algorithm: str
    created: float
    updated: float
    # The digest a closing PUT is verifying and committing ("" while chunks
    # may still be appended): once set, no chunk is acknowledged any more.
    sealed: str = ""
    # The bytes acknowledged so far (-1: a record written before sizes were
    # kept; the staged size counts).  Staged bytes past it belong to a
    # request that died and are dropped by the next request that claims it.
    size: int = -1
    # The request staging a chunk now ("" if none) and until when its claim
    # holds (by the replicas' clocks); a later request waits for it to end,
    # or takes it over once it has lapsed (its writer died).
    writer: str = ""
    writer_until: float = 0.0
    write_id: str = ""  # identifies the write, to verify an ambiguous commit


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A live replica; the key lives under the replica's lease."""

    replica: str
    url: str
    started: float
    version: str


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A role bound at runtime (``hareg access grant``): ``subject`` holds
    ``role`` on the repositories matching the glob ``pattern``."""

    subject: str
    role: str
    pattern: str
    created: float
    by: str = ""  # the subject that granted it
    write_id: str = ""  # identifies the write, to verify an ambiguous commit


@dataclass(frozen=True, slots=True)
class RobotRecord:
    """A robot account: its secret is shown once, at creation, and kept only
    as its SHA-256 (the secret is 256 random bits, so a fast hash is as safe
    as a slow one and a login costs no bcrypt)."""

    secret_sha256: str
    created: float
    by: str = ""
    write_id: str = ""


@dataclass(frozen=True, slots=True)
class MirrorCheckRecord:
    """The pull-through cache asked the upstream about a tag at ``checked``
    (wall clock) and found ``digest`` (None: the check was claimed, its answer
    not yet recorded).  Any replica reads it, so the upstream is asked at most
    once per ttl per tag across the cluster."""

    checked: float
    digest: str | None = None
