"""Metadata records, stored as msgpack maps.

Decoding ignores fields it does not know, so a newer replica's records stay
readable by an older one during a rolling upgrade.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

R = TypeVar("R")


def encode(record: Any) -> bytes:
    # Records hold only scalars, tuples and flat dicts, so a shallow map is what
    # dataclasses.asdict would build, without its recursive deep copy.
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    out: bytes = msgpack.packb(fields, use_bin_type=True)
    return out


def decode(cls: type[R], data: bytes) -> R:
    raw = msgpack.unpackb(data, raw=False)
    # The class's field table (records declare no ClassVar or InitVar pseudo-fields),
    # looked up per key without building a set for every decoded watch event.
    names = cls.__dataclass_fields__  # type: ignore[attr-defined]
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
