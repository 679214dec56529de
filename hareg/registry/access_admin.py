"""Access management at runtime: grants, revokes and robot accounts.

What ``hareg access`` (and ``/hareg/v1/access/``) does, for cluster-admins
only (the HTTP layer's rules: every ``/hareg/v1`` endpoint needs the
cluster role).  The changes are kept in etcd (``hareg/metadata/access.py``)
and apply to the next request every replica admits, since each request reads
them through the read barrier (``access.py``).  The configuration's own
bindings are listed beside them but change only with the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from hareg.clock import rfc3339
from hareg.metadata.access import AccessMetadata, MissingSubject, TooMany
from hareg.registry import robots
from hareg.registry.authz import ROLE_NAMES, Role
from hareg.registry.errors import ErrorCode, RegistryError

__all__ = ["MAX_PATTERN", "MAX_SUBJECT", "AccessAdmin", "NewRobot"]

MAX_SUBJECT: Final = 256
MAX_PATTERN: Final = 256

audit = logging.getLogger("hareg.audit")


@dataclass(frozen=True, slots=True)
class NewRobot:
    name: str
    subject: str
    secret: str  # shown once; only its hash is kept

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "subject": self.subject, "secret": self.secret}


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, message, status=400)


def _check_text(value: object, field: str, limit: int, expected: str) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _invalid(f"{field}: expected {expected} (1 to {limit} characters)")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise _invalid(f"{field}: expected {expected}, without spaces or control characters")
    return value


def check_binding(subject: object, role: object, pattern: object) -> tuple[str, Role, str]:
    """The grant's fields, checked; a 400 naming the field otherwise."""
    subject = _check_text(subject, "subject", MAX_SUBJECT, "a user name, robot+NAME or anonymous")
    if not isinstance(role, str) or role not in ROLE_NAMES:
        raise _invalid(f"role: expected one of {', '.join(ROLE_NAMES)}")
    pattern = _check_text(pattern, "pattern", MAX_PATTERN, "a repository glob such as team/*")
    if role == Role.CLUSTER_ADMIN.value and pattern != "*":
        raise _invalid("pattern: cluster-admin covers every repository; expected *")
    if robots.is_robot(subject) and (problem := robots.check_robot_name(subject[len(robots.PREFIX) :])):
        raise _invalid(f"subject: {problem}")
    return subject, Role(role), pattern


class AccessAdmin:
    def __init__(self, store: AccessMetadata, random_bytes: Callable[[int], bytes]) -> None:
        self.store = store
        self.random_bytes = random_bytes  # the robots' secrets (the OS's randomness; seeded in the simulator)

    async def grant(self, by: str, subject: object, role: object, pattern: object) -> bool:
        """Bind the role; False if it was bound already."""
        subject, checked_role, pattern = check_binding(subject, role, pattern)
        robot = subject[len(robots.PREFIX) :] if robots.is_robot(subject) else None
        try:
            added = await self.store.add_grant(subject, checked_role.value, pattern, by, robot=robot)
        except MissingSubject:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, f"robot account {robot!r} does not exist", status=404
            ) from None
        except TooMany as exc:
            raise RegistryError(ErrorCode.DENIED, str(exc), status=409) from None
        _audit(by, "grant", target=subject, role=checked_role.value, pattern=pattern, changed=added)
        return added

    async def revoke(self, by: str, subject: object, role: object, pattern: object) -> bool:
        """Unbind it; False if it was not bound at runtime."""
        subject, checked_role, pattern = check_binding(subject, role, pattern)
        removed = await self.store.remove_grant(subject, checked_role.value, pattern)
        _audit(by, "revoke", target=subject, role=checked_role.value, pattern=pattern, changed=removed)
        return removed

    async def grants(self) -> list[dict[str, Any]]:
        view = await self.store.access_view()
        return [
            {
                "subject": g.subject,
                "role": g.role,
                "pattern": g.pattern,
                "created": rfc3339(g.created),
                "by": g.by,
            }
            for g in sorted(view.grants, key=lambda g: (g.subject, g.role, g.pattern))
        ]

    async def create_robot(self, by: str, name: object) -> NewRobot:
        checked = self._robot_name(name)
        secret, hashed = robots.new_secret(self.random_bytes)
        try:
            created = await self.store.add_robot(checked, hashed, by)
        except TooMany as exc:
            raise RegistryError(ErrorCode.DENIED, str(exc), status=409) from None
        if not created:
            raise RegistryError(
                ErrorCode.DENIED,
                f"robot account {checked!r} exists; delete it first to make a new secret",
                status=409,
            )
        _audit(by, "robot-create", target=robots.subject_of(checked), changed=True)
        return NewRobot(checked, robots.subject_of(checked), secret)

    async def delete_robot(self, by: str, name: object) -> bool:
        """Delete the account and its grants; False if there was none."""
        checked = self._robot_name(name)
        removed = await self.store.remove_robot(checked, robots.subject_of(checked))
        _audit(by, "robot-delete", target=robots.subject_of(checked), changed=removed)
        return removed

    async def list_robots(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "subject": robots.subject_of(name), "created": rfc3339(rec.created), "by": rec.by}
            for name, rec in await self.store.list_robots()
        ]

    @staticmethod
    def _robot_name(name: object) -> str:
        if not isinstance(name, str):
            raise _invalid(f"name: expected a robot account name: {robots.NAME_RULE}")
        if name.startswith(robots.PREFIX):
            name = name[len(robots.PREFIX) :]
        if problem := robots.check_robot_name(name):
            raise _invalid(f"name: {problem}")
        return name


def _audit(by: str, action: str, **fields: object) -> None:
    """An access change: who made it and what it changed (never a secret)."""
    audit.info("audit", extra={"fields": {"subject": by, "action": action, **fields}})
