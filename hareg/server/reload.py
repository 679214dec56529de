"""SIGHUP: re-read the configuration file and apply what can change while serving.

``logLevel``, ``readOnly``, ``requests`` and ``auth.bindings`` (and the
htpasswd file's users) are applied at once, without
closing a listener or a connection: the log level of the process, the
replica's own read-only flag, the request limiters' limits (requests running
keep their slots; queued ones are admitted if slots opened).  Any other field
that changed is reported in the log as needing a restart, and left as it was.
A file that no longer validates is reported (every problem) and nothing
changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from hareg.config.model import AuthConfig, Config, ConfigError
from hareg.config.reader import load_config
from hareg.config.render import config_to_dict
from hareg.observability.logs import set_log_level

__all__ = ["RELOADABLE", "Reloader"]

log = logging.getLogger("hareg.reload")

# auth: its bindings (and the htpasswd file, re-read on every SIGHUP); turning
# authentication on or off, or its token settings, needs a restart.
RELOADABLE = ("logLevel", "readOnly", "requests", "auth")


def _reloadable_auth(current: AuthConfig | None, new: AuthConfig | None) -> AuthConfig | None:
    """The new bindings and htpasswd path; whether authentication is on, and
    the token settings, stay as started (they need a restart)."""
    if current is None or new is None or current.disabled != new.disabled:
        return current
    return replace(current, bindings=new.bindings, htpasswd_path=new.htpasswd_path)


@dataclass
class Reloader:
    """Reloads ``path`` (with environment overrides) and hands the result to ``apply``."""

    path: str | os.PathLike[str] | None
    current: Config
    apply: Callable[[Config], None]
    env: Mapping[str, str] | None = None

    def reload(self) -> bool:
        """True if a new configuration was applied."""
        try:
            new = load_config(self.path, self.env)
        except ConfigError as exc:
            log.error(
                "configuration reload failed; keeping the running configuration",
                extra={"fields": {"file": str(self.path), "problems": exc.errors}},
            )
            return False
        old_doc, new_doc = config_to_dict(self.current), config_to_dict(new)
        changed = sorted(key for key in new_doc if new_doc[key] != old_doc.get(key))
        applied = [key for key in changed if key in RELOADABLE]
        ignored = [key for key in changed if key not in RELOADABLE]
        # Keep the running values of what cannot change without a restart.
        self.current = replace(
            self.current,
            log_level=new.log_level,
            read_only=new.read_only,
            requests=new.requests,
            auth=_reloadable_auth(self.current.auth, new.auth),
        )
        set_log_level(self.current.log_level)
        self.apply(self.current)
        log.warning(
            "configuration reloaded",
            extra={
                "fields": {"file": str(self.path), "changed": applied, "logLevel": self.current.log_level}
            },
        )
        if ignored:
            log.warning(
                "configuration changes that need a restart were not applied",
                extra={"fields": {"needs_restart": ignored}},
            )
        return True
