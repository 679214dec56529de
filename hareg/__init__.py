"""hareg: a highly available OCI container image registry on etcd and an object store."""

__version__ = "0.1.0"
