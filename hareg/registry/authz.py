"""Authorization: which roles allow which actions, and what a request needs.

Pure rules on plain values, so the HTTP middleware, the token endpoint and
the simulator apply the same ones (docs/security.md, "Roles"):

* ``viewer``: pull, list tags, referrers, tag history, immutability rules (read);
* ``editor``: viewer, plus push, delete manifests, tags and blobs, and mount
  from a repository it can pull;
* ``admin``: editor, plus rollback, immutability rules and prune of those repositories;
* ``cluster-admin``: everything, ``/hareg/v1`` cluster endpoints included
  (read-only switch, prune, fsck, status).

A binding gives a subject (a user name, or ``anonymous`` for requests
without credentials) one role on the repositories matching any of its glob
patterns (``fnmatch``: ``*`` also crosses ``/``, so ``team/*`` covers
``team/a/b``).  The actions are the Docker token spec's words (``pull``,
``push``, ``delete``, ``*`` for everything on a repository) so a token's
``access`` claim is the decision written down.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatchcase
from typing import Final

__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "CLUSTER",
    "DELETE",
    "PULL",
    "PUSH",
    "Binding",
    "Need",
    "Role",
    "allowed",
    "allowed_actions",
    "can_see_cluster",
    "request_needs",
]

ANONYMOUS: Final = "anonymous"
PULL: Final = "pull"
PUSH: Final = "push"
DELETE: Final = "delete"
ADMIN: Final = "*"  # the token spec's "everything on this resource"
CLUSTER: Final = "cluster"  # the /hareg/v1 cluster endpoints; not a repository action
REPOSITORY_ACTIONS: Final = (PULL, PUSH, DELETE, ADMIN)


class Role(Enum):
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"
    CLUSTER_ADMIN = "cluster-admin"

    @property
    def actions(self) -> frozenset[str]:
        return _ROLE_ACTIONS[self]


_ROLE_ACTIONS: Final = {
    Role.VIEWER: frozenset({PULL}),
    Role.EDITOR: frozenset({PULL, PUSH, DELETE}),
    Role.ADMIN: frozenset({PULL, PUSH, DELETE, ADMIN}),
    Role.CLUSTER_ADMIN: frozenset({PULL, PUSH, DELETE, ADMIN, CLUSTER}),
}
ROLE_NAMES: Final = tuple(role.value for role in Role)


@dataclass(frozen=True, slots=True)
class Binding:
    subject: str
    role: Role
    repositories: tuple[str, ...]  # glob patterns; a cluster-admin binding's are ignored

    def covers(self, repo: str) -> bool:
        return self.role is Role.CLUSTER_ADMIN or any(fnmatchcase(repo, p) for p in self.repositories)


def allowed_actions(bindings: Iterable[Binding], subject: str, repo: str) -> frozenset[str]:
    """Every repository action ``subject`` may take on ``repo``."""
    out: set[str] = set()
    for binding in bindings:
        if binding.subject == subject and binding.covers(repo):
            out |= binding.role.actions
    return frozenset(out - {CLUSTER})


def can_see_cluster(bindings: Iterable[Binding], subject: str) -> bool:
    return any(b.subject == subject and b.role is Role.CLUSTER_ADMIN for b in bindings)


def allowed(bindings: Iterable[Binding], subject: str, action: str, repo: str | None) -> bool:
    """May ``subject`` take ``action`` on ``repo`` (None: the cluster itself)?"""
    bindings = tuple(bindings)
    if action == CLUSTER or repo is None:
        return can_see_cluster(bindings, subject)
    return action in allowed_actions(bindings, subject, repo)


@dataclass(frozen=True, slots=True)
class Need:
    """What one request needs: ``action`` on ``repo`` (None: the cluster).
    ``open``: anyone may send it (probes, the token endpoint); ``login``: any
    authenticated caller (``/v2/``, which clients probe for the challenge);
    ``browse``: the catalog, filtered, open to ``anonymous`` when it has a
    binding."""

    action: str = PULL
    repo: str | None = None
    open: bool = False
    login: bool = False
    browse: bool = False


_OPEN: Final = Need(open=True)
_LOGIN: Final = Need(login=True)
_OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/auth/token"})
_CONSOLE: Final = "/console"
_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# The repository routes of hareg/http/app.py and extensions.py, in the order
# the router tries them: the name matches greedily and the tail has no '/', as
# aiohttp's ``{name:.+}`` and ``{reference}`` do, so the name decided here is
# the name the handler serves.
_ROUTE_PATTERNS: Final = (
    (r"/v2/(?P<name>.+)/tags/list", "read"),
    (r"/v2/(?P<name>.+)/referrers/[^/]+", "read"),
    (r"/v2/(?P<name>.+)/manifests/[^/]+", "content"),
    (r"/v2/(?P<name>.+)/blobs/uploads/?", "upload"),
    (r"/v2/(?P<name>.+)/blobs/uploads/[^/]+", "upload"),
    (r"/v2/(?P<name>.+)/blobs/[^/]+", "content"),
    (r"/hareg/v1/repositories/(?P<name>.+)/tags/[^/]+/(?:history|rollback)", "admin"),
    (r"/hareg/v1/repositories/(?P<name>.+)/immutability", "admin"),
    (r"/hareg/v1/repositories/(?P<name>.+)/prune", "admin"),
)
# All of them as one alternation, each its own group: a full match takes the
# first alternative (in the order above) that matches the whole path, as
# trying them one after another does, in one call instead of nine.
_ROUTES: Final = re.compile(
    "|".join(
        f"(?P<r{i}>{pattern.replace('(?P<name>', f'(?P<n{i}>')})"
        for i, (pattern, _) in enumerate(_ROUTE_PATTERNS)
    )
)
_ROUTE_KINDS: Final = {f"r{i}": (f"n{i}", kind) for i, (_, kind) in enumerate(_ROUTE_PATTERNS)}


def request_needs(method: str, path: str, query: Mapping[str, str] | None = None) -> list[Need]:
    """What a request needs, from its method, path and query alone.  A path no
    route serves needs a login (it is answered 404 after that).  A mount
    (``POST .../blobs/uploads/?mount=&from=``) also needs pull on ``from``."""
    if path in _OPEN_PATHS:
        return [_OPEN]
    if path in ("/v2", "/v2/"):
        return [_LOGIN]
    if path == _CONSOLE or path.startswith(_CONSOLE + "/"):
        # The web console's static files hold no data: it reads the registry
        # through the API with the caller's own credentials.
        return [_OPEN]
    if path == "/v2/_catalog":
        return [Need(browse=True)]
    read = method in _READS
    match = _ROUTES.fullmatch(path)
    if match is not None:
        # The outer group of the alternative that matched is the last one closed.
        group, kind = _ROUTE_KINDS[match.lastgroup or ""]
        name = match[group]
        if kind == "upload":
            needs = [Need(PUSH, name)]
            source = (query or {}).get("from")
            if method == "POST" and source and (query or {}).get("mount"):
                needs.append(Need(PULL, source))
            return needs
        if read:
            return [Need(PULL, name)]
        if kind == "admin":
            return [Need(ADMIN, name)]
        if kind == "read":
            return [_LOGIN]  # no write is routed there: the router answers 405
        return [Need(PUSH if method == "PUT" else DELETE, name)]
    if path.startswith("/hareg/v1/") or path == "/hareg/v1":
        return [Need(CLUSTER)]
    return [_LOGIN]
