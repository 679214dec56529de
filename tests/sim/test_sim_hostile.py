"""Hostile clients: on by default, every behaviour carried out, deterministic,
and their bodies stall, hold back and hang up as they claim to."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.service import Registry
from hareg.storage.base import StorageUnavailable, UploadNotFound
from sim import faults
from sim.cli import main
from sim.etcd_model import EtcdCluster
from sim.history import History, Outcome
from sim.hostile import BEHAVIOURS, GONE, UPLOAD_PATCH, Body, HostileClient, HostileLog
from sim.loop import SimLoop, run
from sim.network import Network
from sim.replica import EPOCH, Replica
from sim.runner import run as run_seed
from sim.storage_model import ObjectStore
from sim.trace import Trace
from sim.workload import Env, Universe

pytestmark = pytest.mark.timeout(120)


def test_hostile_clients_are_on_by_default_and_off_on_request() -> None:
    assert faults.choose(1, 5.0).hostile
    assert not faults.choose(1, 5.0, hostile=False).hostile
    options = faults.choose(1, 5.0, hostile=False)
    assert faults.Options.from_json(options.to_json()) == options
    assert "no hostile clients" in options.describe()
    # Options written before hostile clients existed replay without them.
    doc = faults.choose(1, 5.0).to_json()
    del doc["hostile"]
    assert not faults.Options.from_json(doc).hostile


def test_every_behaviour_is_carried_out_and_its_requests_recorded() -> None:
    seen: dict[str, int] = {}
    kinds: set[str] = set()
    # Each seed draws its own mix of behaviours (a replay on a finished upload
    # is rare); these four carry out all of them between them.
    for seed in (12, 10, 1, 4):
        result = run_seed(faults.choose(seed, 20.0))
        assert not result.error, result.error
        assert set(result.hostile) <= set(BEHAVIOURS)
        assert result.stats["read_back"] > 0  # every stored object was read back after the run
        for name, count in result.hostile.items():
            seen[name] = seen.get(name, 0) + count
        kinds |= set(result.ops_by_kind)
    assert set(seen) == set(BEHAVIOURS)
    assert {"upload_start", "upload_patch", "upload_status", "upload_cancel", "blob_get"} <= kinds
    assert run_seed(faults.choose(1, 5.0, hostile=False)).hostile == {}


def test_a_hostile_run_replays_to_the_same_trace() -> None:
    options = faults.choose(2, 15.0)
    first, second = run_seed(options), run_seed(options)
    assert first.hostile and first.hostile == second.hostile
    assert first.trace_hash == second.trace_hash


def test_the_run_summary_names_the_behaviours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "run.json"
    main(["run", "--seeds", "2", "--duration", "10", "--quiet", "--json", str(report)])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("hostile:"))
    assert any(name in line for name in BEHAVIOURS)
    assert all(seed["hostile"] for seed in json.loads(report.read_text())["seeds"])
    main(["run", "--seeds", "1", "--duration", "5", "--no-hostile", "--quiet"])
    assert "hostile:        none" in capsys.readouterr().out


def test_a_body_that_hangs_up_raises_connection_reset_after_its_pieces() -> None:
    async def go() -> None:
        body = Body([b"ab", b"cd", b"ef"], hang_up_after=2)
        got: list[bytes] = []
        with pytest.raises(ConnectionResetError):
            async for chunk in body.chunks():
                got.append(chunk)
        assert got == [b"ab", b"cd"] and body.disconnected and body.sent == 4

    run(go())


def test_a_held_body_sends_its_last_piece_after_the_release() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        body = Body([b"a", b"b", b"c"], gap=0.01, hold=True, after=0.03)
        arrivals: list[tuple[bytes, float]] = []

        async def server() -> None:
            async for chunk in body.chunks():
                arrivals.append((chunk, loop.time()))

        reader = loop.create_task(server())
        await body.started.wait()
        await asyncio.sleep(1.0)
        assert [chunk for chunk, _ in arrivals] == [b"a", b"b"]  # the last piece is held back
        body.release()
        released = loop.time()
        await reader
        assert arrivals[-1][0] == b"c"
        assert arrivals[-1][1] == pytest.approx(released + 0.03)

    run(go())


Handler = Callable[[Registry], Awaitable[Any]]


def _judged(handler: Handler, *, body: Body | None = None) -> tuple[Outcome, list[str], list[str]]:
    """One request through a hostile client's judge, on a one-replica world:
    (outcome, the anomalies it raised, the unexpected exceptions Env saw)."""

    async def go() -> tuple[Outcome, list[str], list[str]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        trace = Trace(loop.time)
        net = Network(loop, random.Random(1), trace)
        cluster = EtcdCluster(loop, net, random.Random(2), trace)
        objects = ObjectStore(loop, random.Random(3), trace, epoch=EPOCH)
        etcd = loop.create_task(cluster.run())
        replica = Replica("r0", loop, net, cluster, objects, random.Random(4), trace)
        await replica.start()
        env = Env(
            loop, net, [replica], History(loop.time, trace), Universe(("team/app",), ("latest",)), trace
        )
        client = HostileClient(
            "h0", env, random.Random(5), think=1.0, log=HostileLog(), session_alive=lambda _: False
        )
        client.behaviour = "test"
        http = ("PATCH", "/v2/team/app/blobs/uploads/x")
        _, resp = await client._send(
            UPLOAD_PATCH, "team/app", handler, http, allowed=GONE, replica=0, body=body
        )
        replica.crash()
        etcd.cancel()
        return resp.outcome, [a.invariant + ": " + a.message for a in env.anomalies], env.unexpected

    return run(go())[0]


def test_the_judge_accepts_the_expected_refusal_and_an_outage() -> None:
    async def gone(reg: Registry) -> None:
        raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN)

    async def outage(reg: Registry) -> None:
        raise StorageUnavailable("503 SlowDown")

    assert _judged(gone) == (Outcome.FAIL, [], [])
    assert _judged(outage) == (Outcome.UNKNOWN, [], [])


def test_the_judge_flags_a_refusal_of_the_wrong_class() -> None:
    async def denied(reg: Registry) -> None:
        raise RegistryError(ErrorCode.DENIED, "no")

    outcome, anomalies, _ = _judged(denied)
    assert outcome is Outcome.FAIL
    assert anomalies == [
        "hostile: test: upload_patch refused with 403 DENIED; expected one of BLOB_UPLOAD_UNKNOWN"
    ]


def test_the_judge_flags_a_storage_answer_passed_off_as_an_outage() -> None:
    async def leak(reg: Registry) -> None:
        raise UploadNotFound("u1")

    outcome, anomalies, _ = _judged(leak)
    assert outcome is Outcome.UNKNOWN
    assert anomalies == [
        "hostile: test: upload_patch answered 503 for the storage answer UploadNotFound, not an outage"
    ]


def test_a_hang_up_is_no_answer_but_another_reset_is_a_500() -> None:
    body = Body([b"ab", b"cd"], hang_up_after=1)

    async def read(reg: Registry) -> None:
        async for _ in body.chunks():
            pass

    assert _judged(read, body=body) == (Outcome.UNKNOWN, [], [])

    async def reset(reg: Registry) -> None:
        raise ConnectionResetError("the registry's own")

    outcome, _, unexpected = _judged(reset, body=Body([b"x"]))
    assert outcome is Outcome.UNKNOWN and unexpected == ["ConnectionResetError: the registry's own"]
