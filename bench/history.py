"""The client history of an availability run, and its linearizability check.

Every client operation is recorded when it is invoked and when its answer
came, with the outcome as the client saw it:

* ``ok``: the expected answer (a 404 is an ``ok`` read of "no such tag");
* ``fail``: a 4xx or a refused connection: the registry certainly did nothing;
* ``unknown``: a 5xx, a timeout or a reset connection: it may or may not
  have taken effect.

Kinds: ``push`` and ``pull`` (whole images), and inside them the operations
the per-tag check reads: ``tag_write`` (a manifest PUT by tag: ``digest`` is
what it names) and ``tag_read`` (a GET by tag: ``value`` is what it named).
Points are numbered in the order the one client process saw them (``seq``):
an order consistent with real time.  After the run, :func:`check` hands the
tag operations to the per-tag linearizability checker the simulator uses
(:mod:`lincheck`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import RegistryHTTPError
from lincheck import tags as lin

PUSH, PULL, TAG_WRITE, TAG_READ = "push", "pull", "tag_write", "tag_read"


class Outcome(Enum):
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


def outcome_of(exc: BaseException) -> Outcome:
    """What a failed request tells about its effect."""
    if isinstance(exc, RegistryHTTPError):
        return Outcome.FAIL if 400 <= exc.status < 500 else Outcome.UNKNOWN
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Outcome.FAIL  # never connected: nothing was sent
    return Outcome.UNKNOWN


@dataclass(slots=True)
class BenchOp:
    id: int
    kind: str
    repo: str
    invoke_seq: int
    invoke_t: float
    tag: str | None = None
    digest: str | None = None  # what a write names, or the image a push or pull is about
    complete_seq: int | None = None
    complete_t: float | None = None
    outcome: Outcome | None = None
    value: str | None = None  # what a read returned (None: not found)
    error: str = ""

    def row(self, t0: float) -> list[Any]:
        return [self.id, self.kind, self.repo, self.tag, self.digest, self.value,
                round(self.invoke_t - t0, 4),
                None if self.complete_t is None else round(self.complete_t - t0, 4),
                None if self.outcome is None else self.outcome.value, self.error[:200]]  # fmt: skip


ROW_COLUMNS = ["id", "kind", "repo", "tag", "digest", "value", "invoke_s", "complete_s", "outcome", "error"]


class Recorder:
    """The history of one run (one asyncio loop: no locking needed)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.ops: list[BenchOp] = []
        self._seq = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def invoke(self, kind: str, repo: str, *, tag: str | None = None, digest: str | None = None) -> BenchOp:
        op = BenchOp(len(self.ops), kind, repo, self._next(), self._clock(), tag=tag, digest=digest)
        self.ops.append(op)
        return op

    def complete(self, op: BenchOp, outcome: Outcome, *, value: str | None = None, error: str = "") -> None:
        if op.complete_seq is not None:
            return
        op.complete_seq = self._next()
        op.complete_t = self._clock()
        op.outcome = outcome
        op.value = value
        op.error = error

    def close_pending(self) -> None:
        """Operations still running when the run ended: their outcome is unknown."""
        for op in self.ops:
            if op.complete_seq is None:
                self.complete(op, Outcome.UNKNOWN, error="still running at the end of the run")

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for op in self.ops:
            kinds = out.setdefault(op.kind, {o.value: 0 for o in Outcome})
            if op.outcome is not None:
                kinds[op.outcome.value] += 1
        return out

    def write_jsonl(self, path: Path, t0: float) -> Path:
        with path.open("w") as f:
            f.write(json.dumps({"columns": ROW_COLUMNS}) + "\n")
            for op in self.ops:
                f.write(json.dumps(op.row(t0)) + "\n")
        return path


def tag_ops(ops: list[BenchOp], exempt: Callable[[float, float], bool]) -> list[lin.TagOp]:
    """The tag writes and reads as the checker takes them; ``exempt(start, end)``
    says whether a read may have been answered stale by design then."""
    out = []
    for op in ops:
        if op.kind not in (TAG_WRITE, TAG_READ) or op.tag is None or op.outcome is None:
            continue
        unknown = op.outcome is Outcome.UNKNOWN
        write = op.kind == TAG_WRITE
        out.append(
            lin.TagOp(
                id=op.id,
                kind=lin.WRITE if write else lin.READ,
                repo=op.repo,
                tag=op.tag,
                value=op.digest if write else op.value,
                call=op.invoke_seq,
                ret=None if unknown else op.complete_seq,
                failed=op.outcome is Outcome.FAIL,
                exempt=not write and exempt(op.invoke_t, op.complete_t or op.invoke_t),
            )
        )
    return out


def check(recorder: Recorder, exempt: Callable[[float, float], bool]) -> dict[str, object]:
    """``{"checked_ops", "violations", "examples", ...}`` for the run's JSON."""
    report = lin.check_tags(tag_ops(recorder.ops, exempt))
    return lin.as_dict(report)
