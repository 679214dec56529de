"""The KV interface (etcd semantics, base.py) the metadata layer is written against.

The etcd adapter lives in :mod:`hareg.kv.etcd` (``EtcdKV``); it is not imported
here so that the simulator can use this package without gRPC.
"""
