"""Authentication for ``hareg serve``: the files it reads, the guard on exposed listeners.

* ``exposure_problem``: with no ``auth`` section a replica serves everyone,
  which is only safe when nothing but this host can reach it; on any other
  address it refuses to start unless the file says ``auth: {disabled: true}``.
* ``build_access``: the service layer's ``AccessControl`` from the
  configuration: the htpasswd users (checked in a thread pool: bcrypt costs
  tens of milliseconds), the external issuer's JWKS, and the signing key
  (``auth.token.signingKeyFile``, or one generated once and kept in etcd).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path

from hareg.clock import Clock
from hareg.config.model import AuthConfig, Config
from hareg.ids import IdSource
from hareg.registry.access import TOKEN_KEY_SETTING, AccessControl
from hareg.registry.htpasswd import HtpasswdError, Users
from hareg.registry.login_limits import LoginLimiter
from hareg.registry.service import Registry
from hareg.registry.tokens import TokenVerifier, generate_key_pem

__all__ = ["AuthSetupError", "build_access", "exposure_problem", "is_loopback"]


class AuthSetupError(Exception):
    """A file the auth section names cannot be used; the message says which and why."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or a wildcard ("", 0.0.0.0, ::) may be reached from elsewhere


def exposure_problem(config: Config, hosts: Iterable[tuple[str, str]]) -> str | None:
    """Why this replica must not start (None: it may).  ``hosts``: each
    listener's (field, host)."""
    if config.auth is not None:
        return None
    exposed = [f"{name} ({host or 'all interfaces'})" for name, host in hosts if not is_loopback(host)]
    if not exposed:
        return None
    return (
        f"refusing to start: {', '.join(exposed)} can be reached from other hosts, and without an auth "
        "section anyone who reaches the registry may push, delete and switch it to read-only. "
        "Add an auth section (users, tokens and roles, see docs/security.md), or say "
        "`auth: {disabled: true}` to serve without authentication on purpose"
    )


def _read(path: str, field: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthSetupError(f"{field}: cannot read {path}: {exc}") from None


def build_access(
    auth: AuthConfig, registry: Registry, clock: Clock, ids: IdSource, executor: Executor
) -> AccessControl:
    users = Users(auth.htpasswd_path, executor)
    try:
        users.load()
    except HtpasswdError as exc:
        raise AuthSetupError(str(exc)) from None
    external = None
    token = auth.token
    if token.jwks is not None and token.issuer is not None:
        try:
            external = TokenVerifier.from_jwks(
                _read(token.jwks, "auth.token.jwks"), token.issuer, token.audience
            )
        except ValueError as exc:
            raise AuthSetupError(f"auth.token.jwks: {token.jwks}: {exc}") from None
    key_file = token.signing_key_file

    async def key_source() -> bytes:
        if key_file is not None:
            return _read(key_file, "auth.token.signingKeyFile").encode()
        return await registry.meta.shared_setting(TOKEN_KEY_SETTING, generate_key_pem)

    return AccessControl(
        auth,
        users,
        LoginLimiter(clock),
        clock,
        ids,
        key_source=key_source,
        store=registry.meta,
        random_bytes=secrets.token_bytes,
        external=external,
    )
