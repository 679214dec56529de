"""Fixtures of the registry tests: the storage tests' real SeaweedFS
(``seaweedfs``), for the service code that must hold on every driver."""

from storage.conftest import seaweedfs

__all__ = ["seaweedfs"]
