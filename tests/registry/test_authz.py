"""hareg.registry.authz: the role table and what each request needs, table-tested."""

from __future__ import annotations

import pytest

from hareg.registry.authz import (
    ADMIN,
    ANONYMOUS,
    CLUSTER,
    DELETE,
    PULL,
    PUSH,
    Binding,
    Need,
    Role,
    allowed,
    request_needs,
)

BINDINGS = (
    Binding("vera", Role.VIEWER, ("team-a/*",)),
    Binding("ed", Role.EDITOR, ("team-a/*", "tools")),
    Binding("ada", Role.ADMIN, ("team-a/*",)),
    Binding("root", Role.CLUSTER_ADMIN, ()),
    Binding(ANONYMOUS, Role.VIEWER, ("public/*",)),
    Binding("ed", Role.VIEWER, ("public/*",)),
)


@pytest.mark.parametrize(
    ("subject", "action", "repo", "expected"),
    [
        ("vera", PULL, "team-a/app", True),
        ("vera", PULL, "team-a/deep/app", True),  # * crosses /
        ("vera", PUSH, "team-a/app", False),
        ("vera", DELETE, "team-a/app", False),
        ("vera", PULL, "team-b/app", False),
        ("vera", PULL, "team-a", False),  # the glob needs the slash
        ("ed", PUSH, "team-a/app", True),
        ("ed", DELETE, "tools", True),
        ("ed", PUSH, "tools/x", False),
        ("ed", PUSH, "public/x", False),  # viewer there only
        ("ed", PULL, "public/x", True),
        ("ed", ADMIN, "team-a/app", False),
        ("ada", ADMIN, "team-a/app", True),
        ("ada", PUSH, "team-a/app", True),
        ("ada", ADMIN, "tools", False),
        ("ada", CLUSTER, None, False),
        ("root", CLUSTER, None, True),
        ("root", ADMIN, "anything/at/all", True),
        (ANONYMOUS, PULL, "public/x", True),
        (ANONYMOUS, PUSH, "public/x", False),
        (ANONYMOUS, PULL, "team-a/app", False),
        ("stranger", PULL, "public/x", False),  # anonymous's bindings are its own
        ("vera", CLUSTER, None, False),
    ],
)
def test_allowed(subject: str, action: str, repo: str | None, expected: bool) -> None:
    assert allowed(BINDINGS, subject, action, repo) is expected


@pytest.mark.parametrize(
    ("method", "path", "query", "needs"),
    [
        ("GET", "/healthz", {}, [Need(open=True)]),
        ("GET", "/auth/token", {}, [Need(open=True)]),
        ("GET", "/v2/", {}, [Need(login=True)]),
        ("GET", "/v2/_catalog", {}, [Need(browse=True)]),
        ("GET", "/v2/a/b/manifests/latest", {}, [Need(PULL, "a/b")]),
        ("HEAD", "/v2/a/blobs/sha256:00", {}, [Need(PULL, "a")]),
        ("PUT", "/v2/a/b/manifests/v1", {}, [Need(PUSH, "a/b")]),
        ("DELETE", "/v2/a/manifests/v1", {}, [Need(DELETE, "a")]),
        ("DELETE", "/v2/a/blobs/sha256:00", {}, [Need(DELETE, "a")]),
        ("POST", "/v2/a/blobs/uploads/", {}, [Need(PUSH, "a")]),
        ("GET", "/v2/a/blobs/uploads/u1", {}, [Need(PUSH, "a")]),
        ("DELETE", "/v2/a/blobs/uploads/u1", {}, [Need(PUSH, "a")]),
        (
            "POST",
            "/v2/a/blobs/uploads/",
            {"mount": "sha256:00", "from": "b/c"},
            [Need(PUSH, "a"), Need(PULL, "b/c")],
        ),
        ("GET", "/v2/a/tags/list", {}, [Need(PULL, "a")]),
        ("GET", "/v2/a/referrers/sha256:00", {}, [Need(PULL, "a")]),
        # A repository named like a resource: the name is the router's (greedy).
        ("GET", "/v2/a/manifests/b/blobs/sha256:00", {}, [Need(PULL, "a/manifests/b")]),
        ("PUT", "/v2/x/blobs/uploads/y/manifests/v1", {}, [Need(PUSH, "x/blobs/uploads/y")]),
        ("GET", "/hareg/v1/repositories/a/b/tags/t/history", {}, [Need(PULL, "a/b")]),
        ("POST", "/hareg/v1/repositories/a/b/tags/t/rollback", {}, [Need(ADMIN, "a/b")]),
        ("PUT", "/hareg/v1/repositories/a/immutability", {}, [Need(ADMIN, "a")]),
        ("GET", "/hareg/v1/repositories/a/immutability", {}, [Need(PULL, "a")]),
        ("POST", "/hareg/v1/repositories/team/a/prune", {}, [Need(ADMIN, "team/a")]),
        ("POST", "/hareg/v1/prune", {}, [Need(CLUSTER)]),
        ("PUT", "/hareg/v1/read-only", {}, [Need(CLUSTER)]),
        ("GET", "/hareg/v1/status", {}, [Need(CLUSTER)]),
        ("POST", "/hareg/v1/prune", {}, [Need(CLUSTER)]),
        ("POST", "/hareg/v1/fsck", {}, [Need(CLUSTER)]),
        ("GET", "/hareg/v1/members", {}, [Need(CLUSTER)]),
        # The console's static files: open (its data comes through the API).
        ("GET", "/console", {}, [Need(open=True)]),
        ("GET", "/console/repositories/a/b/tags/t", {}, [Need(open=True)]),
        ("GET", "/consoles", {}, [Need(login=True)]),
        ("GET", "/nowhere", {}, [Need(login=True)]),
    ],
)
def test_request_needs(method: str, path: str, query: dict[str, str], needs: list[Need]) -> None:
    assert request_needs(method, path, query) == needs
