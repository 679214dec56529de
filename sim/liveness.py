"""The final phase: once every fault is healed, everything acknowledged must be
readable from every replica within a bounded simulated time (invariant 1 of docs/invariants.md).

For every replica, concurrently:

* every tag is read (these reads join the history, so the linearizability
  check covers them: each must return the tag's last written value), and the
  manifest it names is read with everything it references, bytes hashed;
* every manifest whose push was acknowledged and that was never deleted in
  etcd (by a client or by garbage collection) is read by digest, byte for
  byte, with everything it references;
* every replica's watch-fed cache has caught up with etcd.

A request answered with a 5xx, a stale read or a timeout is retried until the
deadline; whatever is still not readable then is a liveness violation.  A
definite "not found" for something that must exist is an invariant 1 of docs/invariants.md
violation at once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hareg.registry.service import Registry
from sim.history import Operation
from sim.workload import Client, Env, Manifest


@dataclass(slots=True)
class FinalReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # invariant 1 of docs/invariants.md
    late: list[str] = field(default_factory=list)  # liveness
    settle_time: float = 0.0  # how long after healing the last read succeeded


async def _until_ok(
    attempt: Callable[[], Awaitable[Operation | None]], deadline: float, loop: asyncio.AbstractEventLoop
) -> Operation | None:
    while True:
        op = await attempt()
        if op is None or (op.ok and not op.stale):
            return op
        if loop.time() >= deadline:
            return op
        await asyncio.sleep(0.5)


async def verify(env: Env, clients: list[Client], durable: list[Manifest], *, bound: float) -> FinalReport:
    loop = env.loop
    start = loop.time()
    deadline = start + bound
    report = FinalReport()
    u = env.universe

    async def for_replica(index: int, client: Client) -> None:
        name = env.replicas[index].name
        for repo in u.repos:
            for tag in u.tags:
                report.checked += 1
                op = await _until_ok(
                    functools.partial(client.pull_tag, repo=repo, tag=tag, replica=index, final=True),
                    deadline,
                    loop,
                )
                if op is None or not op.ok or op.stale:
                    report.late.append(f"{repo}:{tag} not readable from {name} within {bound:g}s")
                    continue
                if op.value is not None:
                    m = u.manifests.get((repo, op.value))
                    if m is not None:
                        await _references(client, m, index, name)
        for m in durable:
            report.checked += 1
            op = await _until_ok(
                functools.partial(
                    client.pull_digest, repo=m.repo, digest=m.digest, replica=index, final=True
                ),
                deadline,
                loop,
            )
            if op is None or not op.ok or op.stale:
                report.late.append(f"{m.repo}@{m.digest[7:19]} not readable from {name} within {bound:g}s")
            elif not op.found:
                report.missing.append(f"acknowledged {m.repo}@{m.digest[7:19]} is gone (read from {name})")
            else:
                await _references(client, m, index, name)
        report.settle_time = max(report.settle_time, loop.time() - start)

    async def _references(client: Client, m: Manifest, index: int, name: str) -> None:
        while True:
            missing = await client.check_references(m, replica=index, final=True)
            if missing is None:
                return
            if missing:
                report.missing.append(
                    f"{m.repo}@{m.digest[7:19]} is readable from {name} but {missing} is not"
                )
                return
            if loop.time() >= deadline:
                report.late.append(
                    f"references of {m.repo}@{m.digest[7:19]} not readable from {name} within {bound:g}s"
                )
                return
            await asyncio.sleep(0.5)

    heal_revision = env.replicas[0].cluster.store.revision
    await asyncio.gather(*(for_replica(i, c) for i, c in enumerate(clients)))
    # Reads also went through: every replica's watch-fed cache must have caught up
    # (a stuck watch would leave every read paying the catch-up timeout forever).
    while loop.time() < deadline and not all(_caught_up(r.registry, heal_revision) for r in env.replicas):  # noqa: ASYNC110 (virtual time)
        await asyncio.sleep(0.5)
    for replica in env.replicas:
        reg = replica.registry
        if not _caught_up(reg, heal_revision):
            where = reg.cache.revision if reg is not None and reg.cache is not None else None
            report.late.append(
                f"{replica.name}'s metadata cache is at revision {where}, etcd was at {heal_revision} when healed"
            )
    return report


def _caught_up(reg: Registry | None, revision: int) -> bool:
    return reg is not None and reg.cache is not None and reg.cache.ready and reg.cache.revision >= revision
