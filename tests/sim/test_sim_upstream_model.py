"""The simulated upstream registry (sim/upstream_model.py) and the mirror checker (sim/mirror_check.py)."""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest

from hareg.kv.base import Put
from hareg.metadata.keys import Keys
from hareg.registry.upstream import UpstreamError, UpstreamNotFound
from sim.checkers import Findings
from sim.etcd_model import MVCCStore
from sim.faults import Fault
from sim.loop import SimLoop, run
from sim.mirror_check import check_served, check_single_flight
from sim.mirror_workload import MirrorLog, Pull
from sim.network import Network
from sim.trace import Trace
from sim.upstream_model import NODE, PATHS, TAGS, Fetch, UpstreamModel, UpstreamView


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _view(faults: tuple[Fault, ...] = ()) -> tuple[UpstreamModel, UpstreamView, Network]:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimLoop)
    net = Network(loop, random.Random(1), Trace(loop.time))
    model = UpstreamModel(loop, random.Random(2), faults, horizon=60.0)
    return model, model.view("r0", net, MVCCStore(), Keys("/hareg")), net


async def _read(view: UpstreamView, path: str, digest: str) -> bytes:
    async with view.get_blob(path, digest) as blob:
        return b"".join([chunk async for chunk in blob.chunks])


def test_an_honest_upstream_serves_what_hashes_to_its_digests_and_moves_its_tags() -> None:
    async def main() -> None:
        model, view, _ = _view()
        path, tag = PATHS[0], TAGS[0]
        head = await view.head_manifest(path, tag)
        got = await view.get_manifest(path, tag, 1 << 20)
        assert head.digest == got.digest == _sha(got.body)
        for digest in model.images[(path, head.digest or "")].blobs:
            assert _sha(await _read(view, path, digest)) == digest
        with pytest.raises(UpstreamNotFound):
            await view.get_manifest(path, "sha256:" + "0" * 64, 1 << 20)
        await asyncio.sleep(30.0)  # tags move every 3-10 s
        assert len(model.held(path, tag, 30.0)) > 1
        assert (await view.head_manifest(path, tag)).digest == model.current(path, tag, 30.0)

    run(main())


def test_a_lying_upstream_sends_bytes_that_do_not_match_and_a_failing_one_errors() -> None:
    async def main() -> None:
        lie = Fault("upstream", 0.0, 100.0, target="lie", value=1.0)
        model, view, net = _view((lie,))
        path = PATHS[0]
        got = await view.get_manifest(path, TAGS[0], 1 << 20)
        assert _sha(got.body) != got.digest
        digest = next(iter(sorted(model.path_blobs[path])))
        assert _sha(await _read(view, path, digest)) != digest
        assert sum(model.log.lies.values()) == 2

        fail = Fault("upstream", 0.0, 100.0, target="fail", value=1.0)
        model, view, net = _view((fail,))
        with pytest.raises(UpstreamError):
            await view.head_manifest(path, TAGS[0])
        model, view, net = _view()
        net.isolate("r0")
        with pytest.raises(UpstreamError, match="connection refused"):
            await view.head_blob(path, digest)
        assert not net.connected("r0", NODE)

    run(main())


def _pull(what: str, reference: str, data: bytes, digest: str = "", end: float = 1.0) -> Pull:
    return Pull("m0", what, PATHS[0], reference, 0.0, end, True, digest=digest, data=data)


def test_the_checker_flags_unverified_bytes_and_a_tag_the_upstream_never_held() -> None:
    async def main() -> None:
        model, _, _ = _view()
        path, tag = PATHS[0], TAGS[0]
        image = model.images[(path, model.current(path, tag, 0.0))]
        blob = image.blobs[0] if image.blobs else next(iter(model.path_blobs[path]))
        good = [
            _pull("manifest", tag, image.body, image.digest),
            _pull("manifest", image.digest, image.body, image.digest),
            _pull("blob", blob, model.blobs[blob]),
        ]
        findings = Findings()
        check_served(model, MirrorLog(good), findings)
        assert findings.violations == []
        later = model.timeline[(path, tag)][-1][1]  # tagged only near the horizon
        body = model.images[(path, later)].body
        bad = [
            _pull("blob", blob, model.blobs[blob] + b"x"),
            _pull("manifest", tag, body, later),  # a digest the tag did not name by then
            _pull("manifest", image.digest, body, later),  # asked one digest, served another
            _pull("manifest", tag, b"{}", image.digest),  # bytes that are not the digest's
        ]
        check_served(model, MirrorLog(bad), findings)
        assert [v.invariant for v in findings.violations] == ["mirror"] * 4

    run(main())


def test_a_fetch_is_judged_only_if_its_replica_held_the_claim_from_start_to_end() -> None:
    async def main() -> None:
        model, view, _ = _view()
        store, keys = view.store, view.keys
        path = PATHS[0]
        digest = sorted(model.path_blobs[path])[0]
        key = keys.mirror_fetch(f"mirror/{path}", digest)
        lease = store.grant(60, 0.0)
        store.txn([], [Put(key, b"r0", lease=lease)], [])
        await _read(view, path, digest)  # r0 holds the claim throughout
        other = model.view("r1", view.net, store, keys)
        await _read(other, path, digest)  # r1 fetches beside r0's claim
        async with view.get_blob(path, digest):
            store.revoke(lease)  # released mid-fetch: r0's other request's claim, not this one's
        first, beside, lost = model.log.fetches
        assert first.claimed and first.held_throughout
        assert beside.beside_claim and not beside.claimed
        assert lost.claimed and not lost.held_throughout

    run(main())


def test_the_checker_flags_overlapping_claimed_fetches_on_two_replicas() -> None:
    async def main() -> None:
        model, _, _ = _view()
        d = "sha256:" + "a" * 64

        def fetch(replica: str, start: float, end: float, *, held: bool = True) -> Fetch:
            return Fetch(replica, "mirror/x", d, start, lease=1 if held else 0, end=end, held_throughout=held)

        model.log.fetches = [
            fetch("r0", 1.0, 3.0),
            fetch("r0", 2.0, 4.0),  # the same replica: not judged
            fetch("r1", 5.0, 6.0),  # after: fine
            fetch("r2", 5.5, 6.5, held=False),  # without the claim: counted only
        ]
        findings = Findings()
        stats = check_single_flight(model, findings, 10.0)
        assert findings.violations == [] and stats["claimed"] == 3
        model.log.fetches.append(fetch("r2", 5.2, 5.9))
        check_single_flight(model, findings, 10.0)
        assert [v.invariant for v in findings.violations] == ["single-flight"]

    run(main())
