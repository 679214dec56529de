"""The files an ``auth`` section names, copied into ``DIR/auth`` for every replica.

``hareg cluster up`` hands every replica the same ``auth`` section; the files
it names (``auth.htpasswd.path``, ``auth.token.jwks``,
``auth.token.signingKeyFile``) are read here, checked as a replica would
check them, and copied (mode 0600, atomically) to::

    DIR/auth/htpasswd        DIR/auth/jwks.json        DIR/auth/token-key.pem

The replicas' configuration names the copies.  So every replica reads the
same bytes, including one the supervisor restarts after a crash while the
operator is still editing the original: the copies change only when the
supervisor (re)reads its configuration, at start and on SIGHUP.  A relative
path is taken from the directory ``hareg cluster up`` runs in, as ``hareg
serve`` would take it.

Without ``signingKeyFile`` nothing is copied for the key: the replicas share
the one generated once and kept in etcd (``<prefix>/c/token-key``), since
they all use the cluster's etcd and prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from hareg.cluster.spec import write_atomic
from hareg.config.model import AuthConfig, ConfigError
from hareg.registry.htpasswd import HtpasswdError, parse_htpasswd
from hareg.registry.tokens import TokenIssuer, TokenVerifier

__all__ = [
    "AUTH_FILE_NAMES",
    "MAX_AUTH_FILE_BYTES",
    "StagedAuth",
    "read_auth_files",
    "read_file",
    "stage_auth_files",
    "write_copy",
]

# A file bigger than this is refused rather than read: an htpasswd file of
# 100,000 users is about 7 MiB.
MAX_AUTH_FILE_BYTES: Final = 16 * 1024 * 1024
AUTH_FILE_NAMES: Final = {
    "auth.htpasswd.path": "htpasswd",
    "auth.token.jwks": "jwks.json",
    "auth.token.signingKeyFile": "token-key.pem",
}


@dataclass(frozen=True)
class StagedAuth:
    auth: AuthConfig | None  # the section with its paths pointing at the copies
    changed: bool  # a copy was written, or removed, with content it did not have


def read_file(field: str, value: str, base: Path) -> bytes:
    """The content of the file config field ``field`` names (``value``; relative
    to ``base``), at most MAX_AUTH_FILE_BYTES; ConfigError naming the field."""
    path = Path(value) if os.path.isabs(value) else base / value
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_AUTH_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            [f"{field}: {value!r} cannot be read ({exc.strerror or exc}); expected a readable file"]
        ) from None
    if len(data) > MAX_AUTH_FILE_BYTES:
        raise ConfigError(
            [f"{field}: {value!r} is larger than {MAX_AUTH_FILE_BYTES} bytes; expected a smaller file"]
        )
    return data


def _text(field: str, value: str, data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{field}: {value!r} is not UTF-8 text; expected {what}"]) from None


def _check(field: str, value: str, data: bytes, auth: AuthConfig) -> None:
    """Refuse what a replica would refuse at start (it would crash-loop)."""
    token = auth.token
    if field == "auth.htpasswd.path":
        text = _text(field, value, data, "an htpasswd file with bcrypt entries")
        try:
            parse_htpasswd(text, f"{field} {value!r}")
        except HtpasswdError as exc:
            raise ConfigError([str(exc)]) from None
    elif field == "auth.token.jwks":
        text = _text(field, value, data, "a JWKS document")
        try:
            TokenVerifier.from_jwks(text, token.issuer or "", token.audience)
        except ValueError as exc:
            raise ConfigError([f"{field}: {value!r}: {exc}; expected a JWKS document"]) from None
    else:
        try:
            TokenIssuer(data, token.audience, token.expiry)
        except Exception:  # joserfc and cryptography raise many kinds for a bad key
            raise ConfigError(
                [
                    f"{field}: {value!r} is not a PEM P-256 (prime256v1) EC private key; expected one, "
                    "e.g. from `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`"
                ]
            ) from None


def write_copy(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (0600, atomically) unless it holds it already."""
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, data, mode=0o600)
    return True


def read_auth_files(auth: AuthConfig | None, base: Path) -> dict[str, bytes]:
    """The content of each file ``auth`` names, by field, checked as a replica
    would check it; relative paths are taken from ``base``.  Raises
    ConfigError listing every problem, each naming its field."""
    named: dict[str, str | None] = {}
    if auth is not None and not auth.disabled:  # a disabled section's files are never read
        named = {
            "auth.htpasswd.path": auth.htpasswd_path,
            "auth.token.jwks": auth.token.jwks,
            "auth.token.signingKeyFile": auth.token.signing_key_file,
        }
    contents: dict[str, bytes] = {}
    errors: list[str] = []
    for field, value in named.items():
        if value is None:
            continue
        assert auth is not None
        try:
            data = read_file(field, value, base)
            _check(field, value, data, auth)
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        contents[field] = data
    if errors:
        raise ConfigError(errors)
    return contents


def stage_auth_files(auth: AuthConfig | None, directory: Path, base: Path) -> StagedAuth:
    """Check and copy the files ``auth`` names into ``directory`` (see
    ``read_auth_files``; nothing is written if one is refused).  A copy the
    section no longer names is removed."""
    contents = read_auth_files(auth, base)
    changed = False
    if contents:
        directory.mkdir(mode=0o700, exist_ok=True)
    for field, name in AUTH_FILE_NAMES.items():
        target = directory / name
        if field in contents:
            changed |= write_copy(target, contents[field])
        elif target.exists():
            target.unlink()
            changed = True
    if auth is None or not contents:
        return StagedAuth(auth, changed)

    def copy_of(field: str) -> str | None:
        return str(directory / AUTH_FILE_NAMES[field]) if field in contents else None

    staged = replace(
        auth,
        htpasswd_path=copy_of("auth.htpasswd.path"),
        token=replace(
            auth.token,
            jwks=copy_of("auth.token.jwks"),
            signing_key_file=copy_of("auth.token.signingKeyFile"),
        ),
    )
    return StagedAuth(staged, changed)
