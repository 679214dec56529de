"""The deterministic loop: virtual time, asyncio primitives, and no way out."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time

import pytest

from sim.loop import OWNER, SimLoop, SimulationDeadlock, SimulationViolation, run


def test_virtual_time_jumps_to_the_next_timer() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        return loop.time() - t0

    started = time.perf_counter()
    elapsed, loop = run(main())
    assert elapsed == 3600
    assert loop.time() == 3600
    assert time.perf_counter() - started < 1.0


def test_asyncio_primitives_work() -> None:
    async def main() -> list[object]:
        out: list[object] = []
        try:
            async with asyncio.timeout(5):
                await asyncio.sleep(10)
        except TimeoutError:
            out.append(asyncio.get_running_loop().time())
        queue: asyncio.Queue[int] = asyncio.Queue()
        lock = asyncio.Lock()
        event = asyncio.Event()

        async def producer() -> None:
            for i in range(3):
                await asyncio.sleep(1)
                async with lock:
                    await queue.put(i)
            event.set()

        task = asyncio.create_task(producer())
        out.append([await queue.get() for _ in range(3)])
        await event.wait()
        await task
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(2, fut.set_result, "done")
        out.append(await asyncio.wait_for(fut, 3))
        out.append(await asyncio.gather(asyncio.sleep(1, "a"), asyncio.sleep(2, "b")))
        out.append(await asyncio.shield(asyncio.sleep(1, "shielded")))
        return out

    result, loop = run(main())
    assert result == [5, [0, 1, 2], "done", ["a", "b"], "shielded"]
    assert loop.time() == 5 + 3 + 2 + 2 + 1


def test_equal_deadlines_run_in_a_fixed_order() -> None:
    async def main() -> list[int]:
        order: list[int] = []

        async def sleeper(i: int) -> None:
            await asyncio.sleep(1.0)
            order.append(i)

        await asyncio.gather(*(sleeper(i) for i in range(50)))
        return order

    first, _ = run(main())
    second, _ = run(main())
    assert first == second


@pytest.mark.parametrize(
    "action",
    [
        lambda: socket.socket(),
        lambda: socket.create_connection(("127.0.0.1", 9)),
        lambda: time.sleep(0.01),
        lambda: threading.Thread(target=lambda: None).start(),
        lambda: subprocess.run(["true"], check=False),
        lambda: asyncio.get_running_loop().run_in_executor(None, print),
        lambda: asyncio.get_running_loop().call_soon_threadsafe(print),
        lambda: asyncio.get_running_loop().add_signal_handler(15, print),
    ],
    ids=["socket", "connect", "sleep", "thread", "subprocess", "executor", "threadsafe", "signal"],
)
def test_real_io_is_refused_at_once(action: object) -> None:
    async def main() -> None:
        action()  # type: ignore[operator]

    with pytest.raises(SimulationViolation):
        run(main())


@pytest.mark.parametrize(
    "coroutine",
    [
        lambda: asyncio.open_connection("127.0.0.1", 9),
        lambda: asyncio.to_thread(print),
        lambda: asyncio.get_running_loop().getaddrinfo("localhost", 80),
        lambda: asyncio.create_subprocess_exec("true"),
    ],
    ids=["open_connection", "to_thread", "getaddrinfo", "subprocess"],
)
def test_real_io_coroutines_are_refused(coroutine: object) -> None:
    async def main() -> None:
        await coroutine()  # type: ignore[operator]

    with pytest.raises(SimulationViolation):
        run(main())


def test_the_real_world_works_again_after_a_run() -> None:
    run(asyncio.sleep(1))
    time.sleep(0)
    socket.socket().close()


def test_deadlock_is_reported() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationDeadlock):
        run(main())


def test_owned_tasks_are_cancelled_together() -> None:
    async def main() -> tuple[int, list[str]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        seen: list[str] = []

        async def child() -> None:
            seen.append(OWNER.get())
            await asyncio.sleep(100)

        async def process() -> None:
            inherited = asyncio.create_task(child())  # inherits the owner
            await asyncio.sleep(100)
            await inherited

        loop.create_owned_task("r0#1", process())
        other = asyncio.create_task(asyncio.sleep(100))
        await asyncio.sleep(1)
        cancelled = loop.cancel_owned("r0#1")
        await asyncio.sleep(0)
        assert not other.done()
        other.cancel()
        return cancelled, seen

    cancelled, seen = run(main())[0]
    assert cancelled == 2 and seen == ["r0#1"]
