"""A pytest plugin: when a test is still running shortly before its
pytest-timeout, print the stack of every unfinished asyncio task.

pytest-timeout dumps the threads, and a hung event loop shows only as a
thread waiting in ``select``; what it waits for is in the tasks.  The report
goes to the test's captured stderr, so CI's failure output shows it."""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
from collections.abc import Iterator

import pytest

# Seconds before the test's timeout at which the tasks are printed.
MARGIN = 20.0


def _timeout_of(item: pytest.Item) -> float | None:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = item.config.getini("timeout")
    try:
        return float(value) if value else None
    except (TypeError, ValueError):
        return None


def print_tasks(label: str) -> None:
    """Every unfinished asyncio task's stack, to the real stderr."""
    out = io.StringIO()
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    print(f"\n==== {len(tasks)} unfinished asyncio tasks, {label} ====", file=out)
    for task in tasks:
        print(f"--- {task!r}", file=out)
        try:
            task.print_stack(limit=25, file=out)
        except Exception as exc:  # a task changing under us: report and go on
            print(f"    (stack unavailable: {exc!r})", file=out)
    print("==== end of tasks ====", file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    timeout = _timeout_of(item)
    timer = None
    if timeout and timeout > 2 * MARGIN:
        label = f"{item.nodeid} still running after {timeout - MARGIN:g}s"
        timer = threading.Timer(timeout - MARGIN, print_tasks, args=(label,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
