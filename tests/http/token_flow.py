"""The OCI conformance suite's HTTP client, credentials included, in front of
an in-process test server; and an access control for a registry of the tests.

The public suite (its client is reggie) takes ``OCI_USERNAME`` and
``OCI_PASSWORD`` and logs in the Docker way on every request: the request goes
first without credentials; on a 401 with a ``Bearer`` challenge it GETs the
challenge's realm with its ``service`` (and ``scope`` when there is one) and
Basic credentials, and sends the request once more with the token it got; on
a ``Basic`` challenge it sends the request once more with Basic credentials.
A second refusal is the answer.  ``SuiteClient`` does exactly that, counting
what it sent and how often it was challenged, so a test can tell that the
flow really ran.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp import ClientResponse
from oci_helpers import Client

from hareg.clock import SystemClock
from hareg.config.model import AuthConfig, BindingConfig
from hareg.ids import RandomIds
from hareg.registry.access import TOKEN_KEY_SETTING, AccessControl
from hareg.registry.htpasswd import Users
from hareg.registry.login_limits import LoginLimiter
from hareg.registry.service import Registry
from hareg.registry.tokens import generate_key_pem

# reggie's parseAuthHeader: every key="value" of the challenge.
_CHALLENGE_PARAM = re.compile(r'([a-zA-Z]+)="(.+?)"')


def parse_challenge(raw: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and the parameters of a ``WWW-Authenticate`` value."""
    scheme = raw.strip().partition(" ")[0].lower()
    return scheme, dict(_CHALLENGE_PARAM.findall(raw))


class SuiteClient:
    """Requests as the conformance suite sends them; ``credentials`` None is
    the suite run without ``OCI_USERNAME`` (a 401 is then the answer)."""

    def __init__(self, client: Client, credentials: tuple[str, str] | None) -> None:
        self.client = client
        self.credentials = credentials
        self.sent = 0  # requests the workflows sent
        self.challenged = 0  # of which the first attempt, without credentials, got a 401 challenge
        self.tokens = 0  # tokens fetched from the realm

    async def request(self, method: str, path: str, **kwargs: Any) -> ClientResponse:
        self.sent += 1
        first = await self.client.request(method, path, **kwargs)
        raw = first.headers.get("WWW-Authenticate")
        if first.status != 401 or not raw or self.credentials is None:
            return first
        self.challenged += 1
        first.release()
        scheme, params = parse_challenge(raw)
        basic = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if scheme == "bearer":
            query = {"service": params.get("service", "")}
            if params.get("scope"):
                query["scope"] = params["scope"]
            r = await self.client.session.get(
                params["realm"], params=query, headers={"Accept": "application/json", "Authorization": basic}
            )
            body = await r.json(content_type=None)
            token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
            assert r.status == 200 and token, (
                f"no token from {params['realm']} for {query}: {r.status} {body}"
            )
            self.tokens += 1
            authorization = f"Bearer {token}"
        elif scheme == "basic":
            authorization = basic
        else:
            raise AssertionError(f"a challenge the suite cannot answer: {raw}")
        headers = {**(kwargs.pop("headers", None) or {}), "Authorization": authorization}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("HEAD", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PUT", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("DELETE", path, **kwargs)


def write_htpasswd(path: Path, passwords: Mapping[str, str]) -> Path:
    """bcrypt entries as ``htpasswd -B`` writes them ($2y$, a low cost: tests)."""
    lines = []
    for name, password in passwords.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
        lines.append(f"{name}:$2y${hashed[4:]}\n")
    path.write_text("".join(lines))
    return path


async def access_control(
    registry: Registry, htpasswd: Path, bindings: Iterable[BindingConfig]
) -> AccessControl:
    """Authentication for ``registry`` as ``hareg serve`` builds it: the users
    of ``htpasswd``, the token key kept in its etcd, the runtime grants and
    robot accounts in its metadata store; started."""
    users = Users(htpasswd, None)
    users.load()
    clock = SystemClock()

    async def key() -> bytes:
        return await registry.meta.shared_setting(TOKEN_KEY_SETTING, generate_key_pem)

    control = AccessControl(
        AuthConfig(bindings=tuple(bindings)),
        users,
        LoginLimiter(clock),
        clock,
        RandomIds(),
        key_source=key,
        store=registry.meta,
        random_bytes=os.urandom,
    )
    await control.start()
    return control
