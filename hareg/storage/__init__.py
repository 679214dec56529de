"""Blob storage: the driver interface and its errors.

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

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "StorageError",
    "StorageUnavailable",
    "UploadNotFound",
    "UploadOffsetMismatch",
]
