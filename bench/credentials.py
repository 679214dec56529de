"""How the benchmark client authenticates, the way real clients do.

- :class:`BasicCredentials`: ``Authorization: Basic`` on every request (how
  distribution's htpasswd auth works: it checks the password every time).
- :class:`TokenCredentials`: the Docker token flow.  The ``/v2/`` ping's 401
  names the realm and service (``WWW-Authenticate: Bearer realm=...``); a
  token is fetched from the realm with Basic credentials and the scopes an
  operation needs (``repository:<name>:pull,push``), kept per set of scopes,
  and sent as ``Authorization: Bearer`` on every request until three quarters
  of its lifetime have passed (or less than the caller needs is left), then
  fetched again.  Concurrent operations needing the same scopes wait for one
  fetch.

Credentials go only to the registry's own origin: a redirect to another host
(a presigned object-store URL) is followed without them, as Docker does.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

__all__ = [
    "BasicCredentials",
    "Challenge",
    "Credentials",
    "TokenCredentials",
    "TokenError",
    "basic_header",
    "parse_challenge",
    "pull_scope",
    "push_scope",
]

REFRESH_FRACTION = 0.75  # of a token's lifetime, after which it is fetched again
MAX_CACHED = 1024  # sets of scopes whose tokens are kept (the oldest dropped first)
_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


class TokenError(Exception):
    """The token endpoint did not hand out a usable token."""


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="...",service="...",scope="..."`` -> its scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class Credentials(Protocol):
    """What an :class:`~bench.client.OCIClient` asks for before each request."""

    scheme: str

    def challenged(self, challenge: Challenge) -> None:
        """The registry's 401 on ``/v2/``: where and how to log in."""

    async def header(
        self, session: aiohttp.ClientSession, scopes: Sequence[str], *, valid_for: float = 0.0
    ) -> str:
        """The ``Authorization`` value for a request needing ``scopes``, usable
        for at least ``valid_for`` more seconds."""


class BasicCredentials:
    scheme = "basic"

    def __init__(self, username: str, password: str) -> None:
        self._value = basic_header(username, password)

    def challenged(self, challenge: Challenge) -> None:
        return None

    async def header(
        self, session: aiohttp.ClientSession, scopes: Sequence[str], *, valid_for: float = 0.0
    ) -> str:
        return self._value


@dataclass
class _Token:
    value: str  # the Authorization header's value
    refresh_at: float  # monotonic
    expires_at: float  # monotonic


class TokenCredentials:
    scheme = "token"

    def __init__(self, username: str, password: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._basic = basic_header(username, password)
        self.clock = clock
        self.realm: URL | None = None
        self.service: str | None = None
        self._tokens: OrderedDict[tuple[str, ...], _Token] = OrderedDict()
        self._fetching: dict[tuple[str, ...], asyncio.Task[_Token]] = {}
        self.fetches = 0  # tokens fetched (reported with the run)

    def challenged(self, challenge: Challenge) -> None:
        if challenge.scheme != "bearer" or not challenge.params.get("realm"):
            raise TokenError(f"expected a Bearer challenge with a realm, got {challenge.scheme!r}")
        self.realm = URL(challenge.params["realm"])
        self.service = challenge.params.get("service")

    async def header(
        self, session: aiohttp.ClientSession, scopes: Sequence[str], *, valid_for: float = 0.0
    ) -> str:
        key = tuple(sorted(set(scopes)))
        now = self.clock()
        token = self._tokens.get(key)
        if token is not None and now < token.refresh_at and token.expires_at - now > valid_for:
            return token.value
        pending = self._fetching.get(key)
        if pending is None:
            pending = asyncio.create_task(self._fetch(session, key))
            self._fetching[key] = pending
            pending.add_done_callback(functools.partial(self._forget, key))
        # Shielded: a waiter cancelled (a phase's deadline) must not cancel
        # the fetch other operations wait for.
        token = await asyncio.shield(pending)
        if token.expires_at - self.clock() <= valid_for:
            raise TokenError(
                f"a fresh token is valid for {token.expires_at - self.clock():.0f}s, "
                f"less than the {valid_for:.0f}s needed (raise the registry's token expiry)"
            )
        return token.value

    def _forget(self, key: tuple[str, ...], _done: asyncio.Task[_Token]) -> None:
        self._fetching.pop(key, None)

    async def _fetch(self, session: aiohttp.ClientSession, key: tuple[str, ...]) -> _Token:
        if self.realm is None:
            raise TokenError("no Bearer challenge seen yet (ping /v2/ first)")
        query = [("scope", s) for s in key]
        if self.service:
            query.insert(0, ("service", self.service))
        started = self.clock()
        async with session.get(self.realm.with_query(query), headers={"Authorization": self._basic}) as resp:
            if resp.status != 200:
                body = await resp.text(errors="replace")
                raise TokenError(f"GET {self.realm}: HTTP {resp.status}: {body[:300]}")
            doc = await resp.json(content_type=None)
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenError(f"GET {self.realm}: no token in the answer")
        # The spec's default lifetime when the answer does not say: 60 s.
        lifetime = float(doc.get("expires_in") or 60)
        self.fetches += 1
        token = _Token(f"Bearer {value}", started + lifetime * REFRESH_FRACTION, started + lifetime)
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > MAX_CACHED:
            self._tokens.popitem(last=False)
        return token
