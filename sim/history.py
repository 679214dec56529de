"""The record of what clients asked and what they were told.

Every client request is an ``Operation``: invoked at one point of the run and
completed at a later one with an outcome as the client saw it:

* ``ok``: a 2xx (or a 404 that answers the question, for reads and deletes);
* ``fail``: a 4xx or a refused connection: the registry certainly did nothing;
* ``unknown``: a 5xx, a timeout or a reset connection: it may or may not
  have taken effect (a 503 for an unverified etcd outcome is one of these).

Points are numbered in the order they happened (``seq``), which is a total
order consistent with real time even when virtual timestamps tie.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum

from sim.trace import Trace

# The operation the running code works for: set by a client when it invokes
# one, inherited by every callback and task its requests cause (on replicas
# too), so the etcd model can tell which operation each transaction served.
CURRENT_OP: ContextVar[int] = ContextVar("sim_current_op", default=-1)


class Outcome(Enum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


# Operation kinds.
TAG_WRITE = "tag_write"  # manifest PUT by tag: the tag now names ``digest``
TAG_READ = "tag_read"  # manifest GET by tag: ``value`` is what it named (None: 404)
TAG_DELETE = "tag_delete"  # DELETE by tag: ``found`` tells whether it existed
MANIFEST_DELETE = "manifest_delete"  # DELETE by digest: removes every tag naming it
DIGEST_READ = "digest_read"  # manifest GET by digest
MANIFEST_PUT = "manifest_put"  # manifest PUT by digest (index children)
BLOB_HEAD = "blob_head"
BLOB_UPLOAD = "blob_upload"
BLOB_DELETE = "blob_delete"
BLOB_MOUNT = "blob_mount"
BAD_UPLOAD = "bad_upload"  # an upload whose digest does not match its bytes: must be refused
REF_CHECK = "ref_check"  # reading what a pulled manifest references
JANITOR = "janitor"
PRUNE = "prune"  # a pruner (garbage collection) run
LIST_TAGS = "list_tags"
IMMUTABILITY = "immutability"  # set (detail "patterns") or clear a repository's immutable tag patterns
READ_ONLY = "read_only"  # the cluster-wide read-only switch turned on or off (detail "on")
# Runtime access changes (sim/identities.py), detail "grantee", "role", "pattern";
# ``found``: whether an acknowledged one changed anything.
GRANT = "grant"
REVOKE = "revoke"


@dataclass(slots=True)
class Operation:
    id: int
    client: str
    kind: str
    repo: str
    replica: str
    invoke_seq: int
    invoke_time: float
    tag: str | None = None
    digest: str | None = None
    complete_seq: int | None = None
    complete_time: float | None = None
    outcome: Outcome | None = None
    value: str | None = None  # what a read returned (a digest), None for "not found"
    found: bool | None = None  # for deletes: whether there was something to delete
    stale: bool = False  # a read served from the cache while etcd was unreachable
    error: str = ""
    final: bool = False  # issued in the final (healed) phase
    detail: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def done(self) -> bool:
        return self.complete_seq is not None


class History:
    def __init__(self, now: Callable[[], float], trace: Trace) -> None:
        self._now = now
        self.trace = trace
        self.ops: list[Operation] = []
        self._seq = 0

    @property
    def seq(self) -> int:
        """The number of the last point recorded (commits in between have this one)."""
        return self._seq

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def invoke(
        self,
        client: str,
        kind: str,
        repo: str,
        replica: str,
        *,
        tag: str | None = None,
        digest: str | None = None,
        final: bool = False,
    ) -> Operation:
        op = Operation(
            id=len(self.ops),
            client=client,
            kind=kind,
            repo=repo,
            replica=replica,
            invoke_seq=self._next(),
            invoke_time=self._now(),
            tag=tag,
            digest=digest,
            final=final,
        )
        self.ops.append(op)
        CURRENT_OP.set(op.id)
        self.trace.event(
            "invoke", op=op.id, c=client, k=kind, repo=repo, r=replica, tag=tag, d=_short(digest)
        )
        return op

    def complete(
        self,
        op: Operation,
        outcome: Outcome,
        *,
        value: str | None = None,
        found: bool | None = None,
        stale: bool = False,
        error: str = "",
    ) -> None:
        if op.done:
            return
        op.complete_seq = self._next()
        op.complete_time = self._now()
        op.outcome = outcome
        op.value = value
        op.found = found
        op.stale = stale
        op.error = error
        self.trace.event(
            "complete", op=op.id, o=outcome.value, v=_short(value), found=found, stale=stale, err=error[:60]
        )

    def close_pending(self) -> None:
        """Operations still running at the end: their outcome is unknown."""
        for op in self.ops:
            if not op.done:
                self.complete(op, Outcome.UNKNOWN, error="still running at the end of the run")

    def counts(self) -> dict[str, int]:
        out = {o.value: 0 for o in Outcome}
        for op in self.ops:
            if op.outcome is not None:
                out[op.outcome.value] += 1
        return out


def _short(digest: str | None) -> str | None:
    return digest[7:19] if digest else None
