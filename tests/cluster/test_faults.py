"""Faults on a real local cluster (3 etcd members, the object store, 3
replicas, haproxy): uploads across replicas, a replica killed mid-upload,
the etcd leader killed during pushes, and etcd quorum loss."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin

import aiohttp

from .cluster_process import EVENT_TIMEOUT, ClusterRun, wait_for
from .oci import OCI_MANIFEST, pull_image, push_image, sha256


def _replica_urls(cluster: ClusterRun) -> list[str]:
    return [r["url"] for r in cluster.info()["replicas"]]


def _etcd_status(member: dict[str, Any]) -> dict[str, Any] | None:
    req = urllib.request.Request(f"{member['client_url']}/v3/maintenance/status", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status: dict[str, Any] = json.loads(resp.read())
            return status
    except OSError:
        return None


def _etcd_leader(cluster: ClusterRun) -> dict[str, Any]:
    for member in cluster.info()["etcd"]:
        status = _etcd_status(member)
        if status and status.get("leader") == status["header"]["member_id"]:
            return dict(member)
    raise AssertionError("no etcd leader")


def _replicas_current(cluster: ClusterRun) -> bool:
    for base in _replica_urls(cluster):
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=10) as resp:
                if json.loads(resp.read()).get("degraded"):
                    return False
        except OSError:
            return False
    return True


def _heal(cluster: ClusterRun) -> None:
    """SIGHUP: the supervisor restarts stopped etcd members.  Returns once
    every replica has seen etcd answer again: until then a replica serves
    tag reads from its cache as it was (stale, never wrong: the documented
    exception to linearizable tag reads, docs/consistency.md), and a write
    acknowledged by a replica that noticed first may not show on it yet."""
    os.kill(cluster.pid, signal.SIGHUP)
    wait_for(
        lambda: all(_etcd_status(m) for m in cluster.info()["etcd"]),
        EVENT_TIMEOUT,
        "every etcd member answering again",
        interval=0.2,
    )
    wait_for(
        lambda: _replicas_current(cluster), EVENT_TIMEOUT, "every replica out of degraded mode", interval=0.2
    )


async def _slow_body(
    data: bytes, piece: int, delay: float, streaming: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    """``data`` in pieces, ``delay`` apart; ``streaming`` is set once two have gone."""
    for n, i in enumerate(range(0, len(data), piece)):
        yield data[i : i + piece]
        if streaming is not None and n == 1:
            streaming.set()
        await asyncio.sleep(delay)


async def test_one_upload_spread_over_three_replicas(cluster: ClusterRun) -> None:
    a, b, c = _replica_urls(cluster)
    parts = [os.urandom(1_200_000) for _ in range(3)]
    blob = b"".join(parts)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{a}/v2/spread/blobs/uploads/") as r:
            assert r.status == 202
            location = r.headers["Location"]
        offset = 0
        for base, part in zip((b, c), parts[:2], strict=True):
            async with s.patch(
                urljoin(base, location),
                data=part,
                headers={"Content-Range": f"{offset}-{offset + len(part) - 1}"},
            ) as r:
                assert r.status == 202, await r.text()
                location = r.headers["Location"]
            offset += len(part)
        async with s.put(
            urljoin(a, location) + f"&digest={sha256(blob)}",
            data=parts[2],
            headers={"Content-Range": f"{offset}-{len(blob) - 1}"},
        ) as r:
            assert r.status == 201, await r.text()
        for base in (a, b, c, cluster.url):
            async with s.get(f"{base}/v2/spread/blobs/{sha256(blob)}") as r:
                assert r.status == 200 and await r.read() == blob


async def test_replica_killed_mid_upload_then_finished_on_another(cluster: ClusterRun) -> None:
    victim = cluster.info()["replicas"][0]
    other = cluster.info()["replicas"][1]["url"]
    first, second = os.urandom(9 * 1024 * 1024), os.urandom(9 * 1024 * 1024)
    blob = first + second
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{victim['url']}/v2/killed/blobs/uploads/") as r:
            location = r.headers["Location"]
        async with s.patch(
            urljoin(victim["url"], location), data=first, headers={"Content-Range": f"0-{len(first) - 1}"}
        ) as r:
            assert r.status == 202
            location = r.headers["Location"]

        streaming = asyncio.Event()

        async def doomed_patch() -> None:
            body = _slow_body(second, 256 * 1024, 0.05, streaming)
            async with s.patch(urljoin(victim["url"], location), data=body):
                pass

        task = asyncio.create_task(doomed_patch())
        async with asyncio.timeout(EVENT_TIMEOUT):  # the second chunk is streaming in
            await streaming.wait()
        os.kill(victim["pid"], signal.SIGKILL)
        try:
            await task
            raise AssertionError("the PATCH to a killed replica cannot have succeeded")
        except (TimeoutError, aiohttp.ClientError):
            pass
        # Another replica knows how far the upload got: nothing of the killed
        # PATCH counts (docs/consistency.md, "Requests that die"), so the same
        # chunk is sent again; it waits for the dead writer's claim to lapse.
        async with s.get(urljoin(other, location)) as r:
            assert r.status == 204, await r.text()
            done = int(r.headers["Range"].split("-")[1]) + 1
        assert done == len(first)
        async with s.put(
            urljoin(other, location) + f"&digest={sha256(blob)}",
            data=blob[done:],
            headers={"Content-Range": f"{done}-{len(blob) - 1}"},
        ) as r:
            assert r.status == 201, await r.text()
        async with s.get(f"{cluster.url}/v2/killed/blobs/{sha256(blob)}") as r:
            assert r.status == 200 and await r.read() == blob
    # The supervisor brings the killed replica back.
    wait_for(
        lambda: cluster.replica(victim["name"])["pid"] not in (None, victim["pid"]),
        EVENT_TIMEOUT,
        "replica restarted",
    )


async def _push_until(
    base: str, stop: asyncio.Event, acked: list[tuple[str, dict[str, Any]]], errors: list[str], worker: int
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        i = 0
        while not stop.is_set():
            tag = f"w{worker}-{i}"
            i += 1
            try:
                image = await push_image(s, base, "chaos", tag)
            except AssertionError as exc:  # push_image asserts with the error body
                errors.append(str(exc)[:300])
                await asyncio.sleep(0.2)
                continue
            except (TimeoutError, aiohttp.ClientError):
                errors.append("connection failed")
                await asyncio.sleep(0.2)
                continue
            acked.append((tag, image))


async def test_etcd_leader_killed_while_pushes_run(cluster: ClusterRun) -> None:
    acked: list[tuple[str, dict[str, Any]]] = []
    errors: list[str] = []
    stop = asyncio.Event()
    pushers = [asyncio.create_task(_push_until(cluster.url, stop, acked, errors, w)) for w in range(3)]

    async def acked_beyond(count: int) -> None:
        async with asyncio.timeout(EVENT_TIMEOUT):
            while len(acked) <= count:
                await asyncio.sleep(0.1)

    try:
        await acked_beyond(0)  # pushes are going on
        leader = _etcd_leader(cluster)
        os.kill(leader["pid"], signal.SIGKILL)
        before = len(acked)
        await asyncio.sleep(6)  # pushes go on through the election (the length of the fault, not a wait)
        await acked_beyond(before)  # and succeed again after it
    finally:
        stop.set()
        await asyncio.gather(*pushers)
    # Every failure was a clean, retryable answer: the spec's JSON with UNAVAILABLE (503).
    assert all('"UNAVAILABLE"' in e for e in errors), f"unclean failures: {errors}"
    _heal(cluster)
    async with aiohttp.ClientSession() as s:
        for tag, image in acked:
            for base in _replica_urls(cluster):
                await pull_image(s, base, "chaos", tag, image)


async def test_quorum_loss_serves_pulls_refuses_pushes_and_recovers(cluster: ClusterRun) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        image = await push_image(s, cluster.url, "quorum", "before")
        members = cluster.info()["etcd"]
        for member in members[:2]:
            os.kill(member["pid"], signal.SIGKILL)
        try:
            # Pulls: from every replica, served from the cache.
            for base in _replica_urls(cluster):
                await pull_image(s, base, "quorum", "before", image)
            # Pushes: a clean, fast 503.
            for base in _replica_urls(cluster):
                t0 = time.monotonic()
                async with s.put(
                    f"{base}/v2/quorum/manifests/after",
                    data=image["manifest"],
                    headers={"Content-Type": OCI_MANIFEST},
                ) as r:
                    assert r.status == 503, await r.text()
                    assert (await r.json())["errors"][0]["code"] == "UNAVAILABLE"
                    assert "Retry-After" in r.headers
                took = time.monotonic() - t0
                print(f"\nquorum loss: push refused by {base} in {took:.3f}s (load {os.getloadavg()[0]:.2f})")
                # A write reaching etcd as its quorum goes is answered within ~2.5 s
                # (docs/consistency.md), later ones at once; generous for a loaded machine.
                assert took < 5
            async with s.get(f"{_replica_urls(cluster)[0]}/readyz") as r:
                body = await r.json()
                assert r.status == 200 and body["degraded"] is True and body["reason"] == "EtcdUnavailable"
        finally:
            _heal(cluster)

        async def push_after() -> int:
            async with s.put(
                f"{cluster.url}/v2/quorum/manifests/after",
                data=image["manifest"],
                headers={"Content-Type": OCI_MANIFEST},
            ) as r:
                return r.status

        async with asyncio.timeout(60):
            while await push_after() != 201:
                await asyncio.sleep(0.5)
        for base in _replica_urls(cluster):
            await pull_image(s, base, "quorum", "after", image)


async def test_killing_the_pruner_leader_hands_leadership_to_another(cluster: ClusterRun) -> None:
    async def statuses(s: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        out = {}
        for r in cluster.info()["replicas"]:
            try:
                async with s.get(f"{r['url']}/hareg/v1/pruner") as resp:
                    out[r["name"]] = await resp.json()
            except (aiohttp.ClientError, TimeoutError):
                pass
        return out

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with asyncio.timeout(EVENT_TIMEOUT):
            while not any(st["isLeader"] for st in (await statuses(s)).values()):
                await asyncio.sleep(0.2)
        leader = next(name for name, st in (await statuses(s)).items() if st["isLeader"])
        killed = cluster.replica(leader)["pid"]
        os.kill(killed, signal.SIGKILL)
        t0 = time.monotonic()
        # Another process leads: another replica, or the killed one's restarted
        # successor (same name, new pid) if it wins the next election.
        async with asyncio.timeout(30):
            while True:
                current = [
                    n
                    for n, st in (await statuses(s)).items()
                    if st["isLeader"] and cluster.replica(n)["pid"] not in (None, killed)
                ]
                if current:
                    break
                await asyncio.sleep(0.2)
        # Lease TTL (10 s) plus one campaign interval, with slack for a loaded machine.
        assert time.monotonic() - t0 < 10 + 10 / 3 + 5
        assert len(current) == 1
