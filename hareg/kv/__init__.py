"""The KV interface (etcd semantics) the metadata layer is written against.

The etcd adapter lives in :mod:`hareg.kv.etcd` (``EtcdKV``); it is not imported
here so that the simulator can use this package without gRPC.
"""

from hareg.kv.base import (
    KV,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    KVCompacted,
    KVError,
    KVRejected,
    KVUnavailable,
    KVUnknownOutcome,
    Op,
    Put,
    RangeResult,
    Target,
    TxnOp,
    TxnResult,
    WatchBatch,
    prefix_end,
)

__all__ = [
    "KV",
    "Compare",
    "Delete",
    "Event",
    "EventType",
    "Get",
    "KVCompacted",
    "KVError",
    "KVRejected",
    "KVUnavailable",
    "KVUnknownOutcome",
    "KeyValue",
    "Op",
    "Put",
    "RangeResult",
    "Target",
    "TxnOp",
    "TxnResult",
    "WatchBatch",
    "prefix_end",
]
