"""The simulated network: cuts, loss, pauses, and streams that behave like TCP."""

from __future__ import annotations

import asyncio
import random

from sim.loop import run
from sim.network import Network
from sim.trace import Trace


def _net(loop: asyncio.AbstractEventLoop) -> Network:
    assert loop is not None
    return Network(loop, random.Random(1), Trace(loop.time))  # type: ignore[arg-type]


class _Stream:
    """Any object can key a stream (the etcd model uses its server-side watch)."""


def test_a_cut_link_refuses_sends_and_drops_what_is_in_flight() -> None:
    async def main() -> tuple[bool, list[str], int]:
        net = _net(asyncio.get_running_loop())
        got: list[str] = []
        net.send("c0", "r0", lambda: got.append("in flight"), on_drop=lambda: got.append("dropped"))
        net.cut("c0", "r0")
        refused = not net.send("c0", "r0", lambda: got.append("after cut"))
        assert net.send("r0", "c0", lambda: got.append("other direction"))  # one-way cut
        await asyncio.sleep(1)
        return refused, got, net.dropped

    (refused, got, dropped), _ = run(main())
    assert refused
    assert got == ["dropped", "other direction"]
    assert dropped == 1


def test_a_paused_node_gets_its_messages_in_order_when_it_resumes() -> None:
    async def main() -> tuple[list[int], list[int]]:
        net = _net(asyncio.get_running_loop())
        got: list[int] = []
        net.pause("r0")
        stream = _Stream()
        for i in range(5):
            net.send("e0", "r0", lambda i=i: got.append(i), stream=stream)  # type: ignore[misc]
        await asyncio.sleep(1)
        held = list(got)
        net.resume("r0")
        await asyncio.sleep(1)
        return held, got

    (held, got), _ = run(main())
    assert held == []
    assert got == [0, 1, 2, 3, 4]


def test_a_stream_delivers_nothing_after_a_lost_message() -> None:
    """Found by seed 777: a watch batch was lost, a later progress notification
    on the same stream still arrived, and the replica's cache advanced past the
    lost events.  Over TCP a loss ends the connection; nothing after it arrives."""

    async def main() -> tuple[list[int], int]:
        net = _net(asyncio.get_running_loop())
        got: list[int] = []
        drops: list[int] = []
        stream = _Stream()
        net.add_loss(1.0)
        net.send("e0", "r0", lambda: got.append(0), stream=stream, on_drop=lambda: drops.append(0))
        net.remove_loss(1.0)
        for i in range(1, 4):
            net.send("e0", "r0", lambda i=i: got.append(i), stream=stream)  # type: ignore[misc]
        await asyncio.sleep(1)
        other: list[int] = []
        net.send("e0", "r0", lambda: other.append(1), stream=_Stream())  # a new connection works
        net.close_stream(stream)
        await asyncio.sleep(1)
        return got, len(drops) + len(other)

    (got, n), _ = run(main())
    assert got == []
    assert n == 2


def test_a_stream_that_crosses_a_cut_is_over_even_after_the_cut_heals() -> None:
    async def main() -> list[int]:
        net = _net(asyncio.get_running_loop())
        got: list[int] = []
        stream = _Stream()
        net.send("e0", "r0", lambda: got.append(0), stream=stream)
        net.cut("e0", "r0")
        await asyncio.sleep(1)  # message 0 dropped at arrival
        net.uncut("e0", "r0")
        net.send("e0", "r0", lambda: got.append(1), stream=stream)
        await asyncio.sleep(1)
        return got

    got, _ = run(main())
    assert got == []
