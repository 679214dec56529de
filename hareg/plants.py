"""Planted bugs: switches the simulator uses to prove its checkers catch real mistakes.

The hooks stay in production code, one commented line each (as FoundationDB's
BUGGIFY does), so a checker is shown to catch the very mistake it guards
against; ``grep -rn "planted(" hareg`` shows every one.  They read one context
variable, not a constructor argument: production code never sets it, so with
its default (no plants) every hook is a no-op, and no constructor carries an
argument that only the simulator passes.  The simulator sets it for a run with
``planting``; asyncio copies the context into every task when it is created,
so each task of a run's event loop sees that run's plants, and nothing else.

For testing only, a real ``hareg serve`` process can switch plants on too (the
availability benchmark shows that its history checker catches one):
``HAREG_TEST_PLANTS=tests-only:NAME[,NAME]``.  The value must start with
``tests-only:`` (anything else is refused at startup), so a stray or copied
variable cannot switch a bug on, and the process logs a warning naming them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType

# What each plant breaks, and which invariant (docs/invariants.md) should catch it.
DESCRIPTIONS = MappingProxyType(
    {
        "tag-no-compare": "a tag write commits without its mod_revision compares "
        "(metadata/manifests.py put_manifest): concurrent pushes to one tag lose history (invariant 5)",
        "ambiguous-ack": "an etcd write whose outcome is unknown is acknowledged without verifying it "
        "(metadata/writes.py _txn) (invariants 7, 1, 4)",
        "naive-resend": "an etcd write whose outcome is unknown and not verified is sent again as it "
        "was, fenced or not, and a failed compare of the re-send is taken for a conflict: read again and "
        "write again (metadata/writes.py _txn; docs/simulation.md finding 3): one request applies twice "
        "(invariant 7, the simulator's check_once; linearizability)",
        "upload-no-digest": "an upload is finished without checking its digest "
        "(registry/uploads.py finish) (invariant 3)",
        "commit-unverified-bytes": "a closing PUT measures the staged upload without sealing it and commits "
        "whatever it holds by the time of the commit (registry/uploads.py finish): a chunk that lands "
        "after the verification is stored under the digest of the bytes before it (invariant 3)",
        "cache-keeps-deleted-tag": "the watch-fed cache ignores tag deletions "
        "(metadata/cache.py _apply): deleted tags stay readable (invariant 4, linearizability)",
        "cache-keeps-moved-tag": "the watch-fed cache ignores updates of a tag it already holds "
        "(metadata/cache.py _apply): a moved tag keeps reading as its old digest (linearizability)",
        "reference-index-skip": "a manifest push writes no reverse-reference index entries "
        "(metadata/manifests.py put_manifest): a blob link or child manifest it references can be "
        "deleted under it (invariant 2)",
        "gc-no-grace": "garbage collection without the in-flight guard: no grace window for blobs "
        "just uploaded or found by HEAD (registry/gc.py GarbageCollector.plan) (invariant 6)",
        "access-no-barrier": "the runtime grants and robot accounts are read from the watch-fed cache "
        "without the read barrier (metadata/access.py access_view): a replica whose cache lags serves "
        "a grant already revoked (invariant 8)",
        "mirror-skip-verify": "the pull-through cache stores and serves the upstream's bytes without checking "
        "them against the digest asked for (registry/pull_through.py _store and _tee): a lying upstream's "
        "manifest or blob reaches clients as a success (invariant 3; the simulator's mirror checker)",
    }
)

# The plants switched on in this context (immutable: a run replaces it whole).
_ACTIVE: ContextVar[frozenset[str]] = ContextVar("hareg_plants", default=frozenset())


def _known(names: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(names)
    unknown = sorted(chosen - DESCRIPTIONS.keys())
    if unknown:
        raise ValueError(f"unknown plant(s) {unknown}; known: {sorted(DESCRIPTIONS)}")
    return chosen


def planted(name: str) -> bool:
    """Whether the planted bug ``name`` is switched on here (never, outside the simulator).
    An unknown name raises ValueError: a misspelt hook would otherwise never fire."""
    if name not in DESCRIPTIONS:
        raise ValueError(f"unknown plant {name!r}; known: {sorted(DESCRIPTIONS)}")
    return name in _ACTIVE.get()


@contextlib.contextmanager
def planting(names: Iterable[str]) -> Iterator[frozenset[str]]:
    """Switch on the planted bugs ``names`` for the code run inside the block,
    and for every task created there (tasks copy the context they start in)."""
    token = _ACTIVE.set(_known(names))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


ENV_VAR = "HAREG_TEST_PLANTS"
ENV_PREFIX = "tests-only:"


def from_environment(env: Mapping[str, str]) -> frozenset[str]:
    """The plants ``HAREG_TEST_PLANTS`` asks a real process for (testing only);
    none when it is unset or empty.  ValueError (naming the variable, its value
    and what is allowed) for a value without the ``tests-only:`` prefix or with
    an unknown name."""
    value = env.get(ENV_VAR, "")
    if not value:
        return frozenset()
    if not value.startswith(ENV_PREFIX):
        raise ValueError(
            f"{ENV_VAR}: {value!r} is not allowed; expected {ENV_PREFIX}NAME[,NAME] "
            f"(planted bugs, for tests only; known: {', '.join(sorted(DESCRIPTIONS))}) or unset"
        )
    names = [n.strip() for n in value[len(ENV_PREFIX) :].split(",") if n.strip()]
    unknown = sorted(set(names) - DESCRIPTIONS.keys())
    if unknown:
        raise ValueError(
            f"{ENV_VAR}: {value!r} is not allowed; unknown plant(s) {unknown}; "
            f"known: {', '.join(sorted(DESCRIPTIONS))}"
        )
    return frozenset(names)
