"""The availability benchmark's client history (bench/history.py): what the
workload records against a real ``hareg serve`` is checked by the simulator's
per-tag linearizability checker; the same history with a stale read added
is caught; outcomes are classified as the client saw them."""

from __future__ import annotations

import itertools
import random
import socket

import aiohttp
import pytest
from bench_support import PROJECT_ROOT  # noqa: F401  (puts the checkout on sys.path)

from bench import history as hist
from bench.availability import REPOS, _State, _Workload
from bench.client import OCIClient, RegistryHTTPError
from bench.history import Outcome, Recorder, outcome_of
from bench.targets import RunningTarget


def _never(start: float, end: float) -> bool:
    return False


def _recorder() -> Recorder:
    ticks = itertools.count()
    return Recorder(lambda: float(next(ticks)))


def test_a_history_with_a_stale_read_is_caught_and_one_without_is_not() -> None:
    rec = _recorder()
    for digest in ("sha256:a", "sha256:b"):
        op = rec.invoke(hist.TAG_WRITE, "r", tag="latest", digest=digest)
        rec.complete(op, Outcome.OK, value=digest)
    read = rec.invoke(hist.TAG_READ, "r", tag="latest")
    rec.complete(read, Outcome.OK, value="sha256:b")
    assert hist.check(rec, _never)["violations"] == 0
    stale = rec.invoke(hist.TAG_READ, "r", tag="latest")
    rec.complete(stale, Outcome.OK, value="sha256:a")
    doc = hist.check(rec, _never)
    assert doc["checked_ops"] == 4 and doc["violations"] == 1
    assert f"cannot place op {stale.id}" in str(doc["examples"])
    # A read while a replica served stale reads by design is exempt (but checked for being written).
    assert stale.complete_t is not None
    window = (stale.invoke_t, stale.complete_t)
    assert hist.check(rec, lambda s, e: s <= window[1] and window[0] <= e)["violations"] == 0


def test_outcomes_as_the_client_saw_them() -> None:
    assert outcome_of(RegistryHTTPError("PUT", "u", 400, "")) is Outcome.FAIL
    assert outcome_of(RegistryHTTPError("PUT", "u", 503, "")) is Outcome.UNKNOWN
    assert outcome_of(TimeoutError()) is Outcome.UNKNOWN
    assert outcome_of(aiohttp.ServerDisconnectedError()) is Outcome.UNKNOWN


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_workload_records_a_history_the_checker_judges(hareg_target: RunningTarget) -> None:
    state = _State()
    async with aiohttp.ClientSession() as session:
        workload = _Workload(OCIClient(session, hareg_target.url), state, seed=7)
        await workload.setup()
        for _ in range(REPOS + 1):  # the first and the last go to the same repository
            await workload.push(random.Random(1), 0.0)
        first, second = state.acked[0], state.acked[-1]
        assert first.repo == second.repo
        await workload._tag_read(first.repo, "latest")  # not there yet: a 404 is an ok read of None
        for a in (first, second):
            await workload._tag_write(a.repo, "latest", a.body)
        assert await workload._tag_read(first.repo, "latest") == second.digest
        # A request that never connected: certainly not applied.
        broken = _Workload(OCIClient(session, f"http://127.0.0.1:{_closed_port()}"), state, seed=7)
        with pytest.raises(aiohttp.ClientConnectorError):
            await broken._tag_write(first.repo, "latest", first.body)
    kinds = [(op.kind, op.outcome) for op in state.history.ops if op.tag == "latest"]
    assert kinds == [
        (hist.TAG_READ, Outcome.OK),
        (hist.TAG_WRITE, Outcome.OK),
        (hist.TAG_WRITE, Outcome.OK),
        (hist.TAG_READ, Outcome.OK),
        (hist.TAG_WRITE, Outcome.FAIL),
    ]
    assert (
        state.history.ops[next(i for i, op in enumerate(state.history.ops) if op.tag == "latest")].value
        is None
    )
    clean = hist.check(state.history, _never)
    # The pushes' tag writes, and on latest: two reads and two writes (the failed write left out).
    assert clean["violations"] == 0 and clean["checked_ops"] == REPOS + 1 + 4
    # The same history with a read of the first digest after the second was acknowledged.
    stale = state.history.invoke(hist.TAG_READ, first.repo, tag="latest")
    state.history.complete(stale, Outcome.OK, value=first.digest)
    caught = hist.check(state.history, _never)
    assert caught["violations"] == 1 and f"op {stale.id}" in str(caught["examples"])
