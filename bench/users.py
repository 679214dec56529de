"""The users of a ``--auth`` run: one htpasswd file both registries read.

The file holds bcrypt entries as ``htpasswd -B`` writes them (cost 5, its
default, unless ``--bcrypt-cost`` says otherwise), made with the ``bcrypt``
library; passwords are random per run and live only in this process.  hareg
gets an ``auth`` section (the file, its token expiry, and a binding giving
the bench user ``admin`` on ``bench/*``: push, pull, delete and mount there);
distribution gets ``auth: htpasswd: {realm, path}`` (every user may do
everything: it has no roles).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

__all__ = ["BCRYPT_COST", "BENCH_REPOSITORIES", "BenchUsers", "write_users"]

BCRYPT_COST = 5  # htpasswd -B's default
BENCH_USER = "bench"
OTHER_USER = "bench-viewer"  # a second user, with pull only: both registries hold the same users
BENCH_REPOSITORIES = ("bench/*",)
REALM = "hareg-bench"


@dataclass(frozen=True)
class BenchUsers:
    htpasswd: Path
    username: str
    password: str = field(repr=False)
    bcrypt_cost: int
    token_expiry: float  # seconds: hareg's auth.token.expiry

    def hareg_auth(self) -> dict[str, Any]:
        """hareg's ``auth`` config section."""
        return {
            "htpasswd": {"path": str(self.htpasswd)},
            "token": {"expiry": f"{self.token_expiry:g}s"},
            "bindings": [
                {"subject": self.username, "role": "admin", "repositories": list(BENCH_REPOSITORIES)},
                {"subject": OTHER_USER, "role": "viewer", "repositories": list(BENCH_REPOSITORIES)},
            ],
        }

    def distribution_auth(self) -> str:
        """distribution's ``auth`` config section (YAML)."""
        return f"auth:\n  htpasswd:\n    realm: {REALM}\n    path: {self.htpasswd}\n"

    def describe(self) -> dict[str, Any]:
        return {
            "users": [self.username, OTHER_USER],
            "bcrypt_cost": self.bcrypt_cost,
            "token_expiry_s": self.token_expiry,
            "hareg_bindings": self.hareg_auth()["bindings"],
        }


def write_users(
    directory: Path, *, bcrypt_cost: int = BCRYPT_COST, token_expiry: float = 300.0
) -> BenchUsers:
    """A fresh htpasswd file (mode 0600) in ``directory`` with the bench users."""
    if not 4 <= bcrypt_cost <= 31:
        raise ValueError(f"bcrypt cost {bcrypt_cost}: bcrypt allows 4 to 31")
    password = secrets.token_urlsafe(18)
    lines = []
    for name, secret in ((BENCH_USER, password), (OTHER_USER, secrets.token_urlsafe(18))):
        hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(bcrypt_cost)).decode()
        lines.append(f"{name}:{hashed}\n")
    path = directory / "htpasswd"
    path.touch(mode=0o600)
    path.write_text("".join(lines))
    return BenchUsers(path, BENCH_USER, password, bcrypt_cost, token_expiry)
