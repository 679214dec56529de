"""The request rules and the dependency-failure answers of hareg/registry/policy.py."""

from __future__ import annotations

import pytest

from hareg.kv.base import KVCompacted, KVError, KVRejected, KVUnavailable, KVUnknownOutcome
from hareg.metadata.store import Contended, ReferencedBy
from hareg.metadata.switch import WritesFrozen
from hareg.registry import policy
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.policy import RequestClass
from hareg.storage.base import BlobNotFound, StorageError, StorageUnavailable, UploadOffsetMismatch


def test_what_counts_as_a_write() -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert policy.is_write(method, "/v2/a/blobs/uploads/")
        assert policy.is_write(method, "/hareg/v1/repositories/a/tags/t/rollback")
    for method in ("GET", "HEAD", "OPTIONS"):
        assert not policy.is_write(method, "/v2/a/manifests/t")
    assert not policy.is_write("PUT", "/hareg/v1/read-only")  # the switch itself
    assert not policy.is_write("POST", "/metrics")


def test_request_classes() -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        assert policy.request_class(method, "/v2/a/blobs/sha256:00") is RequestClass.READ
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert policy.request_class(method, "/v2/a/blobs/uploads/") is RequestClass.WRITE
        # The /hareg/v1/ extensions are limited like the rest ...
        assert policy.request_class(method, "/hareg/v1/repositories/a/tags/t/rollback") is RequestClass.WRITE
    # ... but probes, scrapes, the switches and fsck are not.
    for path in (
        "/healthz",
        "/readyz",
        "/metrics",
        "/hareg/v1/status",
        "/hareg/v1/read-only",
        "/hareg/v1/fsck",
    ):
        assert policy.request_class("GET", path) is RequestClass.EXEMPT
        assert policy.request_class("PUT", path) is RequestClass.EXEMPT


def _check_read_only_refusal(err: RegistryError) -> None:
    assert (err.code, err.status) == (ErrorCode.UNSUPPORTED, 405)
    assert "read-only" in err.message
    assert err.to_json()["errors"][0]["detail"] == {"readOnly": True}
    assert "Allow" not in err.headers  # the HTTP layer's: the methods served at the path
    assert policy.is_read_only_refusal(err)


def test_admit_refuses_writes_only_while_read_only() -> None:
    policy.admit("PUT", "/v2/a/manifests/t", read_only=False)
    policy.admit("GET", "/v2/a/manifests/t", read_only=True)
    policy.admit("PUT", "/hareg/v1/read-only", read_only=True)
    with pytest.raises(RegistryError) as info:
        policy.admit("DELETE", "/v2/a/manifests/t", read_only=True)
    _check_read_only_refusal(info.value)


def test_other_405s_are_not_read_only_refusals() -> None:
    other = RegistryError(ErrorCode.UNSUPPORTED, "method not allowed on this endpoint", status=405)
    assert not policy.is_read_only_refusal(other)


def test_a_write_frozen_by_the_switch_is_the_read_only_refusal() -> None:
    err = policy.dependency_error(WritesFrozen())
    assert err is not None
    _check_read_only_refusal(err)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (
            Contended("tag t: 10 attempts"),
            "too many concurrent changes to the same keys (tag t: 10 attempts)",
        ),
        (KVUnknownOutcome("timeout"), "did not confirm the write in time; it may or may not have applied"),
        (KVUnavailable("no leader"), "the metadata store (etcd) is unavailable"),
        (KVCompacted(7), "the metadata store (etcd) is unavailable"),
        (KVError("etcdserver: requested lease not found"), "the metadata store (etcd) is unavailable"),
        (StorageUnavailable("S3 503"), "the blob store is unavailable"),
        (BlobNotFound("sha256:00"), "the blob store is unavailable"),
        (UploadOffsetMismatch(10, 3), "the blob store is unavailable"),
        (StorageError("disk"), "the blob store is unavailable"),
    ],
)
def test_outages_are_503_with_retry_after(exc: Exception, message: str) -> None:
    err = policy.dependency_error(exc)
    assert err is not None
    assert (err.code, err.status) == (ErrorCode.UNAVAILABLE, 503)
    assert err.headers == {"Retry-After": "1"}
    assert message in err.message


def test_a_refusal_by_etcd_is_never_retried() -> None:
    too_big = policy.dependency_error(KVRejected("etcdserver: too many operations in txn", too_big=True))
    assert too_big is not None
    assert (too_big.code, too_big.status, too_big.headers) == (ErrorCode.SIZE_INVALID, 413, {})
    assert "too many operations in txn" in too_big.message and "--max-txn-ops" in too_big.message
    other = policy.dependency_error(KVRejected("etcdserver: permission denied"))
    assert other is not None
    assert (other.code, other.status, other.headers) == (ErrorCode.UNAVAILABLE, 500, {})
    assert "retrying will not help" in other.message


@pytest.mark.parametrize(
    "exc", [ValueError("bug"), ReferencedBy(["sha256:00"]), RuntimeError("bug"), ConnectionResetError()]
)
def test_anything_else_is_not_a_dependency_failure(exc: Exception) -> None:
    assert policy.dependency_error(exc) is None


def test_an_absence_seen_in_a_stale_cache_is_unconfirmed() -> None:
    missing = RegistryError(ErrorCode.MANIFEST_UNKNOWN, "manifest v1 is not in repository app", status=404)
    err = policy.unconfirmed_absence(missing)
    assert err is not None and err.status == 503 and err.code is ErrorCode.UNAVAILABLE
    assert err.headers["Retry-After"] == "1" and "manifest v1 is not in repository app" in err.message
    # Not an absence: left as it is.
    assert policy.unconfirmed_absence(RegistryError(ErrorCode.DENIED, "no", status=403)) is None
    assert policy.unconfirmed_absence(RegistryError(ErrorCode.MANIFEST_INVALID, "bad", status=400)) is None
