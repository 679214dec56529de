"""Users from an htpasswd file with bcrypt entries, as ``htpasswd -B`` writes them.

``name:$2y$05$...`` a line; blank lines and ``#`` comments are skipped.  Only
bcrypt entries are accepted (``$2y$``, ``$2b$``, ``$2a$``): the other formats
htpasswd writes (MD5-crypt, SHA-1, crypt, plain text) are too cheap to
brute-force, so a file with one is refused naming its line.

A check costs bcrypt's tens of milliseconds, so it runs in an executor handed
in by the caller (``hareg serve``: a small thread pool; bcrypt releases the
GIL), never on the event loop.  A user that does not exist is checked against
a dummy hash all the same, so the answer's timing does not tell which names
exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from types import MappingProxyType

import bcrypt

from hareg.registry.robots import PREFIX as ROBOT_PREFIX

__all__ = ["HtpasswdError", "Users", "parse_htpasswd"]

_BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")

# A real bcrypt hash of a random password nobody knows, checked for unknown users.
_DUMMY_HASH = b"$2b$10$wu4xOGEfxX7PCrgtEhh4HON81Ki7CCwK4EkK9C.C/nRLUiY9USA6O"


class HtpasswdError(Exception):
    """The file cannot be used; the message names the file and line."""


def parse_htpasswd(text: str, source: str) -> Mapping[str, bytes]:
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not name or not hashed:
            raise HtpasswdError(f"{source} line {number}: expected name:bcrypt-hash (htpasswd -B)")
        if name.startswith(ROBOT_PREFIX):
            raise HtpasswdError(
                f"{source} line {number}: user names starting with {ROBOT_PREFIX!r} are robot accounts' "
                "(hareg access robot create); rename the user"
            )
        if not hashed.startswith(_BCRYPT_PREFIXES):
            # Never echo the entry: it is a password hash.
            raise HtpasswdError(
                f"{source} line {number}: the entry of {name!r} is not a bcrypt hash; "
                "expected one written by `htpasswd -B` ($2y$...)"
            )
        users[name] = hashed.encode()
    return MappingProxyType(users)


class Users:
    """The htpasswd users, re-read by ``load()`` (at start and on SIGHUP)."""

    def __init__(self, path: str | Path | None, executor: Executor | None) -> None:
        self.path = path
        self.executor = executor  # None: check inline (tests of the rules only)
        self._users: Mapping[str, bytes] = MappingProxyType({})

    def load(self) -> int:
        """Read the file; on error keep the users as they were and raise."""
        if self.path is None:
            return 0
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HtpasswdError(f"auth.htpasswd.path: cannot read {self.path}: {exc}") from None
        self._users = parse_htpasswd(text, f"auth.htpasswd.path {self.path}")
        return len(self._users)

    def knows(self, name: str) -> bool:
        return name in self._users

    async def check(self, name: str, password: str) -> bool:
        hashed = self._users.get(name)
        candidate = hashed if hashed is not None else _DUMMY_HASH
        secret = password.encode()
        if self.executor is None:
            ok = _checkpw(secret, candidate)
        else:
            ok = await asyncio.get_running_loop().run_in_executor(self.executor, _checkpw, secret, candidate)
        return ok and hashed is not None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    # htpasswd writes $2y$, which the bcrypt library reads as $2b$ (the same algorithm).
    if hashed.startswith(b"$2y$"):
        hashed = b"$2b$" + hashed[4:]
    try:
        # bcrypt uses at most 72 bytes; longer passwords are truncated as htpasswd does.
        return bcrypt.checkpw(password[:72], hashed)
    except ValueError:  # a malformed hash in the file matches nothing
        return False
