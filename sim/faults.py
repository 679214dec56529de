"""What a seed chooses: the workload's knobs and a schedule of faults.

Every fault is one entry of a schedule (a time, a duration, a target and a
strength), so a failing run's faults form a plain list that can be replayed,
printed and shrunk (``shrink.py``).  The probabilistic faults — message loss,
lost etcd replies, dropped etcd writes, late etcd writes, storage errors — are windows in that
schedule too; what happens inside a window is drawn from the run's RNG.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hareg.config.model import DEFAULT_MANIFEST_CACHE_BYTES

# kind -> what it does (the CLI lists these)
FAULT_KINDS: dict[str, str] = {
    "crash": "kill -9 a replica, restart it after a while (all memory lost)",
    "pause": "stop a replica (SIGSTOP), often past its leases, then resume it",
    "partition": "cut one node (replica, etcd member or the object store) off from everything",
    "split": "split replicas and etcd members into two sides",
    "oneway": "cut one direction of one link (requests pass, replies do not, or the reverse)",
    "loss": "drop a fraction of all messages",
    "delay": "add up to this much latency to every message",
    "leader": "etcd loses its leader: the cluster pauses for an election",
    "lostreply": "etcd applies a write but its reply is lost (outcome unknown, applied)",
    "timeout": "etcd drops a write without applying it (outcome unknown, not applied)",
    "storage": "the object store answers 500 InternalError / 503 SlowDown",
    "skew": "a replica's clock is off by seconds and drifts",
    "compact": "etcd compacts its history aggressively (watches and old reads fail)",
    "watchdrop": "every etcd watch stream is cut at once",
    # New kinds go last: a kind's draws come after those of the kinds before it,
    # so appending one leaves every existing kind's schedule as it was.
    "disk": "an etcd member loses its disk: crash, removal, a fresh member catching up from the leader",
    "late": "etcd holds a transaction back and applies it after its client's deadline (and re-send)",
    "upstream": "the pull-through mirror's upstream is slow, fails, or lies (sim/upstream_model.py)",
}

# kind -> how ``Fault.describe`` words it (str.format over the fault's fields, ``ms``
# = value in milliseconds, ``when`` = start and duration); other kinds: "{kind}{when}".
_DESCRIPTIONS: dict[str, str] = {
    **dict.fromkeys(("crash", "pause", "partition", "disk"), "{kind} {target}{when}"),
    "split": "split {target}|{peer}{when}",
    "oneway": "oneway {target}->{peer}{when}",
    **dict.fromkeys(("loss", "lostreply", "timeout", "storage", "late"), "{kind} {value:.0%}{when}"),
    "delay": "delay {ms:.0f}ms{when}",
    "skew": "skew {target} {value:+.2f}s drift {value2:+.1e}",
    "upstream": "upstream {target} {value:.0%}{when}",
}

# The window faults' strengths: kind -> (lowest, highest) value drawn.
_STRENGTHS: dict[str, tuple[float, float]] = {
    "loss": (0.01, 0.1),
    "delay": (0.01, 0.6),
    **dict.fromkeys(("lostreply", "timeout"), (0.05, 0.3)),
    "late": (0.1, 0.5),
    "storage": (0.05, 0.4),
}

REPLICA_NAMES = ("r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8")
ETCD_MEMBERS = ("e0", "e1", "e2")
STORAGE = "s3"


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    at: float
    duration: float = 0.0
    target: str = ""
    peer: str = ""
    value: float = 0.0
    value2: float = 0.0

    def describe(self) -> str:
        when = f"@{self.at:.1f}s" + (f"+{self.duration:.1f}s" if self.duration else "")
        return _DESCRIPTIONS.get(self.kind, "{kind}{when}").format(
            **self.to_json(), ms=self.value * 1000, when=when
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)


SMALL_MANIFEST_CACHE = 2048


@dataclass(frozen=True, slots=True)
class Options:
    seed: int
    duration: float
    replicas: int = 3
    clients: int = 20
    repos: int = 3
    tags: int = 3
    think: float = 2.5  # mean pause between a client's operations (seconds)
    upload_grace: float = 20.0  # GC/janitor grace window (Registry(upload_grace=...))
    keep_younger_than: float = 10.0
    keep_tag_revisions: int = 3
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    plants: frozenset[str] = frozenset()
    world_seed: int = 0  # randomness of the run itself (message delays, client choices)
    hostile: bool = True  # hostile clients (sim/hostile.py) run beside the well-behaved ones
    # Identities, roles, and an operator granting and revoking them (sim/identities.py).
    authz: bool = True
    # The pull-through mirror and its upstream (sim/upstream_model.py, sim/mirror_workload.py).
    upstream: bool = True
    # Each replica's bound on manifest records held in memory (limits.manifestCacheBytes):
    # a couple of records, so that pulls miss it and read etcd at the cache's revision all the time.
    manifest_cache_bytes: int = SMALL_MANIFEST_CACHE

    @property
    def replica_names(self) -> tuple[str, ...]:
        return REPLICA_NAMES[: self.replicas]

    def with_faults(self, faults: tuple[Fault, ...]) -> Options:
        return replace(self, faults=faults)

    def describe(self) -> str:
        head = (
            f"seed {self.seed}: {self.duration:g}s, {self.replicas} replicas, 3 etcd, {self.clients} clients, "
            f"{self.repos}x{self.tags} tags, think {self.think * 1000:.0f}ms, grace {self.upload_grace:g}s, "
            f"keep {self.keep_tag_revisions} revs/{self.keep_younger_than:g}s"
        )
        if self.plants:
            head += f", plants {','.join(sorted(self.plants))}"
        if not self.hostile:
            head += ", no hostile clients"
        if not self.authz:
            head += ", no identities"
        if not self.upstream:
            head += ", no upstream"
        if self.manifest_cache_bytes != SMALL_MANIFEST_CACHE:
            head += f", manifest cache {self.manifest_cache_bytes} B"
        faults = "; ".join(f.describe() for f in self.faults) or "no faults"
        return f"{head}\n    faults: {faults}"

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Options:
        """The options a ``to_json`` wrote (``shrink --output``, ``run --json``)."""
        fault_docs = doc.get("faults", [])
        return Options(
            seed=int(doc["seed"]),
            duration=float(doc["duration"]),
            replicas=int(doc.get("replicas", 3)),
            clients=int(doc.get("clients", 20)),
            repos=int(doc.get("repos", 3)),
            tags=int(doc.get("tags", 3)),
            think=float(doc.get("think", 1.5)),
            upload_grace=float(doc.get("upload_grace", 20.0)),
            keep_younger_than=float(doc.get("keep_younger_than", 10.0)),
            keep_tag_revisions=int(doc.get("keep_tag_revisions", 3)),
            faults=tuple(Fault(**f) for f in fault_docs),
            plants=frozenset(doc.get("plants", ())),
            world_seed=int(doc.get("world_seed", 0)),
            # Options written before hostile clients existed replay without them.
            hostile=bool(doc.get("hostile", False)),
            # ... and without identities if written before those.
            authz=bool(doc.get("authz", False)),
            # ... and without the mirror's upstream if written before it.
            upstream=bool(doc.get("upstream", False)),
            # ... and with every manifest record held (the server's default bound) if before the bound.
            manifest_cache_bytes=int(doc.get("manifest_cache_bytes", DEFAULT_MANIFEST_CACHE_BYTES)),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "world_seed": self.world_seed,
            "duration": self.duration,
            "replicas": self.replicas,
            "clients": self.clients,
            "repos": self.repos,
            "tags": self.tags,
            "think": self.think,
            "upload_grace": self.upload_grace,
            "keep_younger_than": self.keep_younger_than,
            "keep_tag_revisions": self.keep_tag_revisions,
            "plants": sorted(self.plants),
            "hostile": self.hostile,
            "authz": self.authz,
            "upstream": self.upstream,
            "manifest_cache_bytes": self.manifest_cache_bytes,
            "faults": [f.to_json() for f in self.faults],
        }


def _window(rng: random.Random, duration: float, lo: float, hi: float) -> tuple[float, float]:
    length = rng.uniform(lo, hi)
    start = rng.uniform(1.0, max(1.5, duration - length))
    return start, length


def _schedule(
    rng: random.Random, duration: float, replicas: tuple[str, ...], allowed: tuple[str, ...]
) -> list[Fault]:
    faults: list[Fault] = []
    nodes = (*replicas, *ETCD_MEMBERS, STORAGE)
    for kind in FAULT_KINDS:
        # Each kind is drawn (so that restricting --faults does not change what
        # the others look like for a seed), then kept only if allowed.
        enabled = rng.random() < 0.55
        count = rng.randint(1, 3)
        chosen: list[Fault] = []
        for _ in range(count):
            if kind == "crash":
                at, down = _window(rng, duration, 0.5, 8.0)
                chosen.append(Fault(kind, at, down, target=rng.choice(replicas)))
            elif kind == "pause":
                at, length = _window(rng, duration, 2.0, 14.0)
                chosen.append(Fault(kind, at, length, target=rng.choice(replicas)))
            elif kind == "partition":
                at, length = _window(rng, duration, 1.0, 10.0)
                chosen.append(Fault(kind, at, length, target=rng.choice(nodes)))
            elif kind == "split":
                at, length = _window(rng, duration, 1.0, 10.0)
                members = [*replicas, *ETCD_MEMBERS]
                side = [n for n in members if rng.random() < 0.5] or [members[0]]
                if len(side) == len(members):
                    side = side[:-1]
                rest = [n for n in members if n not in side]
                chosen.append(Fault(kind, at, length, target=",".join(side), peer=",".join(rest)))
            elif kind == "oneway":
                at, length = _window(rng, duration, 1.0, 8.0)
                src = rng.choice(nodes)
                dst = rng.choice([n for n in nodes if n != src])
                chosen.append(Fault(kind, at, length, target=src, peer=dst))
            elif kind in _STRENGTHS:
                at, length = _window(rng, duration, 2.0, 10.0)
                low, high = _STRENGTHS[kind]
                chosen.append(Fault(kind, at, length, value=round(rng.uniform(low, high), 3)))
            elif kind == "leader":
                at = rng.uniform(1.0, duration - 1.0)
                chosen.append(Fault(kind, at, round(rng.uniform(0.2, 3.0), 3)))
            elif kind == "skew":
                target = replicas[len(chosen) % len(replicas)]
                chosen.append(
                    Fault(
                        kind,
                        0.0,
                        0.0,
                        target=target,
                        value=round(rng.uniform(-2.0, 2.0), 3),
                        value2=rng.uniform(-1e-3, 1e-3),
                    )
                )
            elif kind == "compact":
                at, length = _window(rng, duration, 1.0, 5.0)
                chosen.append(Fault(kind, at, length))
            elif kind == "watchdrop":
                chosen.append(Fault(kind, rng.uniform(1.0, duration - 1.0)))
            elif kind == "disk":
                # Down (removed, not yet replaced) for 1-8 s, then a fresh member catches up.
                at, down = _window(rng, duration, 1.0, 8.0)
                chosen.append(Fault(kind, at, down, target=rng.choice(ETCD_MEMBERS)))
            elif kind == "upstream":
                # lie / fail / slow, with this probability per upstream request.
                at, length = _window(rng, duration, 2.0, 10.0)
                mode = ("lie", "fail", "slow")[len(chosen)]  # a lie window whenever the kind is on
                chosen.append(Fault(kind, at, length, target=mode, value=round(rng.uniform(0.2, 0.8), 3)))
        if enabled and kind in allowed:
            faults += chosen
    faults.sort(key=lambda f: (f.at, f.kind, f.target))
    return faults


def choose(
    seed: int,
    duration: float,
    *,
    allowed: tuple[str, ...] = tuple(FAULT_KINDS),
    plants: frozenset[str] = frozenset(),
    replicas: int = 3,
    clients: int = 20,
    hostile: bool = True,
    authz: bool = True,
    upstream: bool = True,
) -> Options:
    """The options seed ``seed`` chooses.  One ``random.Random(seed)`` decides
    everything: first the seed of the run's own randomness, then the knobs,
    then the fault schedule."""
    master = random.Random(seed)
    world_seed = master.getrandbits(64)
    rng = random.Random(master.getrandbits(64))
    names = REPLICA_NAMES[:replicas]
    options = Options(
        seed=seed,
        duration=duration,
        replicas=replicas,
        clients=clients,
        repos=rng.randint(2, 4),
        tags=rng.randint(2, 4),
        think=round(rng.uniform(1.0, 4.0), 3),
        upload_grace=round(rng.uniform(10.0, 30.0), 1),
        keep_younger_than=round(rng.uniform(3.0, 15.0), 1),
        keep_tag_revisions=rng.randint(1, 4),
        plants=plants,
        world_seed=world_seed,
        hostile=hostile,
        authz=authz,
        upstream=upstream,
    )
    if not upstream:
        allowed = tuple(k for k in allowed if k != "upstream")
    return options.with_faults(tuple(_schedule(rng, duration, names, allowed)))
