"""Blob storage: the driver interface, its errors, and the wrapper every
driver is served through (argument checks and per-call metrics).

Drivers live in submodules (``hareg.storage.filesystem``, ...) and are imported
explicitly, so that importing this package never pulls in optional dependencies.
"""

from hareg.storage.base import (
    BlobNotFound,
    BlobStore,
    StorageError,
    StorageUnavailable,
    UploadNotFound,
    UploadOffsetMismatch,
)
from hareg.storage.checked import CheckedBlobStore, StorageObserver

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "CheckedBlobStore",
    "StorageError",
    "StorageObserver",
    "StorageUnavailable",
    "UploadNotFound",
    "UploadOffsetMismatch",
]
