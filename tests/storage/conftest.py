"""The storage tests use the SeaweedFS fixtures of tests/seaweedfs_fixtures.py."""

from seaweedfs_fixtures import S3StoreFactory, need_weed

__all__ = ["S3StoreFactory", "need_weed"]
