"""An ``auth`` section for ``hareg serve`` in the end-to-end tests: htpasswd
users with bcrypt entries (as ``htpasswd -B`` writes them) and bindings,
written under a test's directory; the user NAME's password is ``NAME-pw``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from .hareg_process import HaregServer, launch


def password_of(user: str) -> str:
    return f"{user}-pw"


def write_auth_config(
    root: Path,
    users: Iterable[str],
    bindings: list[dict[str, Any]],
    *,
    token: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """``root/hareg.yaml`` with an ``auth`` section (``token``: its ``auth.token``)
    and the top-level fields of ``extra``; the htpasswd file beside it."""
    htpasswd = root / "htpasswd"
    htpasswd.write_text(
        "".join(
            f"{name}:$2y${bcrypt.hashpw(password_of(name).encode(), bcrypt.gensalt(5)).decode()[4:]}\n"
            for name in users
        )
    )
    auth: dict[str, Any] = {"htpasswd": {"path": str(htpasswd)}, "bindings": bindings}
    if token is not None:
        auth["token"] = token
    config = root / "hareg.yaml"
    config.write_text(yaml.safe_dump({**(extra or {}), "auth": auth}))
    return config


@contextmanager
def serving_with_auth(
    root: Path,
    users: Iterable[str],
    bindings: list[dict[str, Any]],
    *,
    token: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[HaregServer]:
    """``hareg serve`` on 127.0.0.1 with that configuration, stopped on leaving."""
    config = write_auth_config(root, users, bindings, token=token, extra=extra)
    server = launch(root / "data", extra_args=["--config", str(config)])
    try:
        yield server
    finally:
        server.stop()
