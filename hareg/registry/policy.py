"""What a request may do, and what the client is told when a dependency fails.

The rules the HTTP middleware (``hareg/http/readonly.py``, ``limits.py`` and
``base.py``'s error middleware) and the simulator both apply, on plain values
(a method and a path, an exception) so neither HTTP objects nor aiohttp are
needed to apply them:

* request classes: a read (GET, HEAD, OPTIONS) counts against
  ``requests.read``, anything else against ``requests.write``; the operator's
  endpoints (probes, scrapes, the switches, fsck) against neither;
* read-only mode: which requests change the registry's content and are
  refused while the cluster switch is on, and the refusal itself;
* dependency failures (etcd, the blob store, contention, the switch turning on
  under a write) as the spec's errors, with the status and ``Retry-After`` a
  client needs to decide whether to retry.

``admit`` is where a request is checked before it runs against the
replica's state; who may send it (per-repository roles) is decided before
that by ``authz.py`` and ``access.py``.
"""

from __future__ import annotations

from enum import Enum

from hareg.kv.base import KVError, KVNoSpace, KVRejected, KVUnknownOutcome
from hareg.metadata.store import Contended
from hareg.metadata.switch import WritesFrozen
from hareg.registry.errors import ErrorCode, RegistryError, unavailable
from hareg.storage.base import StorageError

__all__ = [
    "ACCESS_PREFIX",
    "EXEMPT_PATHS",
    "READ_METHODS",
    "READ_ONLY_PATH",
    "RequestClass",
    "admit",
    "dependency_error",
    "is_read_only_refusal",
    "is_write",
    "kv_rejected",
    "metadata_store_full",
    "read_only_refusal",
    "request_class",
]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_PATH = "/hareg/v1/read-only"
ACCESS_PREFIX = "/hareg/v1/access/"  # grants and robot accounts (hareg/http/access.py)
# Paths whose writes change the registry's content (pushes, uploads, mounts,
# deletes, tag changes, the /hareg/v1/ extensions such as rollback) ...
_GUARDED_PREFIXES = ("/v2/", "/hareg/v1/")
# ... except the administration endpoints that must work on a read-only registry
# (access changes too: a revoke must not wait for the end of a maintenance).
_ALWAYS_WRITABLE = frozenset({READ_ONLY_PATH})
# Probes, scrapes and the operator's switches: never queued, never refused by
# the request limits.  /hareg/v1/fsck too: a check may run for hours and would
# hold a write slot all along; it bounds itself (one at a time per replica).
EXEMPT_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/hareg/v1/status", READ_ONLY_PATH, "/hareg/v1/fsck"}
)
_READ_ONLY_DETAIL = {"readOnly": True}


class RequestClass(Enum):
    """Which request limit a request counts against (``requests.read`` or
    ``requests.write``); ``EXEMPT``: none."""

    READ = "read"
    WRITE = "write"
    EXEMPT = "exempt"


def request_class(method: str, path: str) -> RequestClass:
    if path in EXEMPT_PATHS:
        return RequestClass.EXEMPT
    return RequestClass.READ if method in READ_METHODS else RequestClass.WRITE


def is_write(method: str, path: str) -> bool:
    """Would this request change the registry's content (refused while read-only)?"""
    if method in READ_METHODS or path in _ALWAYS_WRITABLE or path.startswith(ACCESS_PREFIX):
        return False
    return path.startswith(_GUARDED_PREFIXES)


def read_only_refusal() -> RegistryError:
    """405 UNSUPPORTED, as CNCF distribution's read-only mode answers (it does not
    route writes at all).  The HTTP layer adds the ``Allow`` header RFC 9110
    requires: the read methods served at the path."""
    return RegistryError(
        ErrorCode.UNSUPPORTED,
        "the registry is read-only: pushes, uploads, mounts, deletes and tag changes are refused; "
        "pulls are served",
        detail=dict(_READ_ONLY_DETAIL),
        status=405,
    )


def is_read_only_refusal(err: RegistryError) -> bool:
    return err.code is ErrorCode.UNSUPPORTED and err.status == 405 and err.detail == _READ_ONLY_DETAIL


def admit(method: str, path: str, *, read_only: bool) -> None:
    """Raise the refusal of a request this replica must not run; ``read_only``
    is its current view of the cluster switch.  A write that passes while the
    switch is turning on elsewhere is refused by its transaction's compare on
    the switch (``WritesFrozen``, mapped by ``dependency_error`` alike)."""
    if read_only and is_write(method, path):
        raise read_only_refusal()


def kv_rejected(exc: KVRejected) -> RegistryError:
    """What the client is told when etcd refuses a write as it is: 413 when the
    request's content made it too big for etcd, 500 otherwise; never a 503 or a
    Retry-After, since sending it again fails alike."""
    if exc.too_big:
        return RegistryError(
            ErrorCode.SIZE_INVALID,
            f"the request's metadata is larger than the metadata store (etcd) accepts in one write "
            f"({exc}); retrying will not help: make it smaller, or raise etcd's --max-txn-ops or "
            "--max-request-bytes",
            status=413,
        )
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        f"the metadata store (etcd) refused the request ({exc}); retrying will not help, "
        "see the registry log",
        status=500,
    )


def metadata_store_full(exc: KVNoSpace) -> RegistryError:
    """507 Insufficient Storage when etcd's space quota is exhausted (its NOSPACE
    alarm): the write was not applied, and no retry succeeds until an operator
    (or hareg's etcd maintenance) frees space.  Not a 503 with Retry-After,
    which clients retry in a loop; reads are still served."""
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        "the registry's metadata store (etcd) is full (NOSPACE alarm): nothing was written; pushes, "
        "uploads, deletes and tag changes are refused until space is freed, pulls are served "
        f"(docs/operations.md, MetadataStoreFull) ({exc})",
        detail={"reason": "MetadataStoreFull"},
        status=507,
    )


# What a read may answer "not found" for; while the replica cannot reach etcd
# its cache may lack what was written since, so such an answer is unconfirmed.
_ABSENCE_CODES = frozenset({ErrorCode.MANIFEST_UNKNOWN, ErrorCode.BLOB_UNKNOWN, ErrorCode.NAME_UNKNOWN})


def unconfirmed_absence(err: RegistryError) -> RegistryError | None:
    """A read's "not found" given while etcd is seen unreachable: the replica's
    cache serves what it holds (stale but never wrong), but its *absence* of a
    tag, manifest or blob written since is no answer.  503 with Retry-After
    instead, which a load balancer retries on another replica (haproxy's
    ``retry-on 503``); None if ``err`` is not such an answer."""
    if err.status != 404 or err.code not in _ABSENCE_CODES:
        return None
    return unavailable(
        f"{err.message}, as far as this replica knows: it cannot reach the metadata store (etcd) "
        "to confirm it; retry the request"
    )


def dependency_error(exc: BaseException) -> RegistryError | None:
    """The client's answer to a failure of a dependency a request ran into;
    None for any other exception (a bug: the HTTP layer answers 500)."""
    if isinstance(exc, WritesFrozen):
        return read_only_refusal()
    if isinstance(exc, Contended):
        # Other writers kept changing the same keys: nothing was written, and a
        # retry after they settle succeeds.
        return unavailable(
            f"too many concurrent changes to the same keys ({exc}); nothing was written, retry the request"
        )
    if isinstance(exc, KVUnknownOutcome):
        return unavailable(
            "the metadata store did not confirm the write in time; it may or may not have "
            "applied, retry the request"
        )
    if isinstance(exc, KVRejected):
        return kv_rejected(exc)  # not a 503: a retry would be refused alike
    if isinstance(exc, KVNoSpace):
        return metadata_store_full(exc)  # nor this: not until space is freed
    if isinstance(exc, KVError):
        return unavailable("the metadata store (etcd) is unavailable")
    if isinstance(exc, StorageError):
        return unavailable("the blob store is unavailable")
    return None
