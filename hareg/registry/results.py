"""What service operations return to their callers (HTTP handlers, the simulator)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class UploadStatus:
    repo: str
    upload_id: str
    size: int  # bytes received so far


@dataclass(frozen=True, slots=True)
class ManifestContent:
    digest: str
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ManifestPushed:
    digest: str
    tags: tuple[str, ...]
    subject: str | None
