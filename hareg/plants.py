"""Planted bugs: switches the simulator uses to prove its checkers catch real mistakes.

A ``Plants`` value is passed to ``Registry(..., plants=...)`` and from there to
the few places that test for one.  The default is empty, and with it every
check below is a no-op: production code never turns a plant on.  Each check
in the registry code is one commented line naming the plant, so
``grep -rn "plants" hareg`` shows every one.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

# What each plant breaks, and which invariant (docs/invariants.md) should catch it.
DESCRIPTIONS = MappingProxyType(
    {
        "tag-no-compare": "a tag write commits without its mod_revision compares "
        "(metadata/store.py put_manifest): concurrent pushes to one tag lose history (invariant 5)",
        "ambiguous-ack": "an etcd write whose outcome is unknown is acknowledged without verifying it "
        "(metadata/store.py _txn) (invariants 7, 1, 4)",
        "upload-no-digest": "an upload is finished without checking its digest "
        "(registry/uploads.py finish) (invariant 3)",
        "commit-unverified-bytes": "a closing PUT measures the staged upload without sealing it and commits "
        "whatever it holds by the time of the commit (registry/uploads.py finish): a chunk that lands "
        "after the verification is stored under the digest of the bytes before it (invariant 3)",
        "cache-keeps-deleted-tag": "the watch-fed cache ignores tag deletions "
        "(metadata/cache.py _apply): deleted tags stay readable (invariant 4, linearizability)",
        "gc-no-grace": "garbage collection without the in-flight guard: no grace window for blobs "
        "just uploaded or found by HEAD (registry/gc.py GarbageCollector.plan) (invariant 6)",
    }
)


@dataclass(frozen=True, slots=True)
class Plants:
    names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(self.names - DESCRIPTIONS.keys())
        if unknown:
            raise ValueError(f"unknown plant(s) {unknown}; known: {sorted(DESCRIPTIONS)}")

    def __contains__(self, name: object) -> bool:
        return name in self.names


NO_PLANTS = Plants()
