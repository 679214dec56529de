"""Who the simulated clients are: identities, the configuration's roles, and
the operator who grants and revokes roles at runtime.

Every client logs in as a robot account (``Basic robot+NAME:secret``: a
SHA-256 check, where an htpasswd user would cost a bcrypt check on every
request) or sends no credentials (``anonymous``).  The accounts are made
before the workload starts, as an operator would (``hareg access robot
create``), and never deleted, so a refusal is always a decision on roles:

* ``robot+ci`` (the ordinary, hostile and final clients) and ``robot+ops``
  (the operator) are cluster-admins in the configuration;
* ``robot+alice``: editor of ``team0/*`` and viewer of ``team1/*``;
* ``robot+bob``: viewer of every ``team*`` repository;
* ``anonymous``: viewer of ``team1/app``;
* ``robot+dana`` and ``robot+erin``: no role in the configuration; all
  they may do comes from runtime grants.

The operator (``Operator``) grants and revokes roles of the last four on a
few patterns (``RUNTIME_ROLES`` x ``RUNTIME_PATTERNS``) through
``AccessAdmin``, as ``POST`` / ``DELETE /hareg/v1/access/grants`` does,
racing the others' requests under every fault; each change is an operation
of the history (``grant`` / ``revoke``) with its outcome.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import Final
from urllib.parse import quote

from hareg.config.model import AuthConfig, BindingConfig
from hareg.registry.access import AccessControl
from hareg.registry.authz import ANONYMOUS
from hareg.registry.robots import subject_of
from sim import history as h
from sim.history import Outcome
from sim.workload import Client, Env

__all__ = [
    "CI",
    "IDENTITIES",
    "OPERATOR",
    "PROBES",
    "REALM",
    "RUNTIME_PATTERNS",
    "RUNTIME_ROLES",
    "RUNTIME_SUBJECTS",
    "Operator",
    "auth_config",
    "basic",
    "make_robots",
]

REALM: Final = "http://registry.sim/auth/token"
CI: Final = subject_of("ci")
OPERATOR: Final = subject_of("ops")
# The identities of the first clients (c0, c1, ...); the others are CI.
IDENTITIES: Final = (
    subject_of("alice"),
    subject_of("bob"),
    ANONYMOUS,
    subject_of("dana"),
    subject_of("erin"),
)
RUNTIME_SUBJECTS: Final = (subject_of("bob"), ANONYMOUS, subject_of("dana"), subject_of("erin"))
RUNTIME_ROLES: Final = ("viewer", "editor", "admin")
RUNTIME_PATTERNS: Final = ("team0/*", "team1/app", "team*", "*")
ROBOTS: Final = tuple(s for s in (CI, OPERATOR, *IDENTITIES) if s != ANONYMOUS)
# The clients the operator checks a change with, one per runtime subject.
PROBES: Final = {f"p{i}": subject for i, subject in enumerate(RUNTIME_SUBJECTS)}


def auth_config() -> AuthConfig:
    """The configuration's ``auth`` section every replica runs with."""
    return AuthConfig(
        bindings=(
            BindingConfig(CI, "cluster-admin", ("*",)),
            BindingConfig(OPERATOR, "cluster-admin", ("*",)),
            BindingConfig(subject_of("alice"), "editor", ("team0/*",)),
            BindingConfig(subject_of("alice"), "viewer", ("team1/*",)),
            BindingConfig(subject_of("bob"), "viewer", ("team*",)),
            BindingConfig(ANONYMOUS, "viewer", ("team1/app",)),
        )
    )


def basic(subject: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{subject}:{secret}".encode()).decode()


async def make_robots(access: AccessControl) -> dict[str, str]:
    """Create every robot account; subject -> its ``Authorization`` header."""
    assert access.admin is not None, "the simulated replicas keep grants in etcd"
    headers = {}
    for subject in ROBOTS:
        robot = await access.admin.create_robot("setup", subject)
        headers[subject] = basic(robot.subject, robot.secret)
    return headers


Admin = Callable[[AccessControl], Awaitable[bool]]


class Operator:
    """A cluster-admin changing runtime grants while the others push and pull."""

    def __init__(self, name: str, env: Env, rng: random.Random, *, think: float) -> None:
        self.name = name
        self.env = env
        self.rng = rng
        self.think = think
        self.granted: set[tuple[str, str, str]] = set()  # what the operator believes is bound
        self.probes = {
            subject: Client(name, env, random.Random(rng.getrandbits(64)), think=think)
            for name, subject in PROBES.items()
        }

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.rng.expovariate(1.0 / self.think))
            if stop.is_set():
                return
            # Revokes as often as it takes to keep about two grants: a revoke
            # then often takes a subject's last role on a repository.
            if self.rng.random() < len(self.granted) / (len(self.granted) + 2):
                binding = sorted(self.granted)[self.rng.randrange(len(self.granted))]
                await self.change(h.REVOKE, binding)
            else:
                binding = (
                    RUNTIME_SUBJECTS[self.rng.randrange(len(RUNTIME_SUBJECTS))],
                    RUNTIME_ROLES[self.rng.randrange(len(RUNTIME_ROLES))],
                    RUNTIME_PATTERNS[self.rng.randrange(len(RUNTIME_PATTERNS))],
                )
                await self.change(h.GRANT if binding not in self.granted else h.REVOKE, binding)

    async def change(self, kind: str, binding: tuple[str, str, str]) -> None:
        """One grant or revoke through a random replica, as ``hareg access`` sends it."""
        subject, role, pattern = binding
        env = self.env
        if kind == h.GRANT:

            async def apply(access: AccessControl) -> bool:
                assert access.admin is not None
                return await access.admin.grant(OPERATOR, subject, role, pattern)

            http = ("POST", "/hareg/v1/access/grants")
        else:

            async def apply(access: AccessControl) -> bool:
                assert access.admin is not None
                return await access.admin.revoke(OPERATOR, subject, role, pattern)

            query = f"subject={quote(subject)}&role={role}&pattern={quote(pattern)}"
            http = ("DELETE", f"/hareg/v1/access/grants?{query}")
        start = self.rng.randrange(len(env.replicas))
        op = env.history.invoke(self.name, kind, "", env.replicas[start].name)
        op.detail.update(grantee=subject, role=role, pattern=pattern)
        resp = await env.call(self.name, env.with_access(apply), start=start, http=http, op=op)
        op.replica = resp.replica or op.replica
        if resp.code:
            op.detail["code"] = resp.code
        changed = bool(resp.value) if resp.outcome is Outcome.OK else None
        env.history.complete(op, resp.outcome, error=resp.error, found=changed)
        if resp.outcome is Outcome.OK:
            if kind == h.GRANT:
                self.granted.add(binding)
            else:
                self.granted.discard(binding)
            await self.probe(subject, pattern)

    async def probe(self, subject: str, pattern: str) -> None:
        """Right after a change, the subject pulls and pushes where it applies, at
        once, through other replicas (as an operator checks a revoke took): the
        moment a replica that has not heard of the change would show it."""
        client = self.probes[subject]
        repos = [r for r in client.u.repos if fnmatchcase(r, pattern)] or list(client.u.repos)
        repo = repos[self.rng.randrange(len(repos))]
        data = client._random_bytes(8, 256)
        await asyncio.gather(
            client.pull_tag(repo=repo), client._upload(repo, client._new_blob(data), data, chunked=0.0)
        )
