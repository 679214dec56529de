"""Registry errors with the OCI Distribution Spec's codes and HTTP statuses."""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorCode(Enum):
    # (HTTP status, default message); the name is the spec's error code.
    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (400, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown to registry")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "the operation is unsupported")
    TOOMANYREQUESTS = (429, "too many requests")
    # Not in the spec's list (which governs 4xx); distribution uses it for 503.
    UNAVAILABLE = (503, "service unavailable")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def default_message(self) -> str:
        return self.value[1]


class RegistryError(Exception):
    """An error the client is told about, in the spec's JSON error format."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.default_message
        self.detail = detail
        self.status = status or code.status
        self.headers = headers or {}
        super().__init__(f"{code.name}: {self.message}")

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}


class RangeNotSatisfiable(RegistryError):
    """416: a chunk that does not start where the upload ends, or a bad byte range."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, detail: Any = None) -> None:
        super().__init__(ErrorCode.BLOB_UPLOAD_INVALID, message, status=416, headers=headers, detail=detail)


def still_referenced(target: str, repo: str, users: list[str], kind: str, detail_key: str) -> RegistryError:
    """A delete refused because manifests of ``repo`` still reference ``target``
    (invariant 2 of docs/invariants.md).  400 DENIED: 400 is a status the spec lists for deletes (end-9,
    end-10), and the message names what refers to it so the client can act."""
    shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
    return RegistryError(
        ErrorCode.DENIED,
        f"{target} is still referenced by {len(users)} {kind} in {repo}: {shown}; delete those first",
        detail={detail_key: users[:100]},
        status=400,
    )


def unavailable(what: str) -> RegistryError:
    """503 for a dependency that is down; the request changed nothing and may be retried."""
    return RegistryError(ErrorCode.UNAVAILABLE, what, headers={"Retry-After": "1"})
