"""Access management over real HTTP (hareg/http/access.py): grants, revokes and
robot accounts, on two replicas sharing one real etcd, each with its own
access control.  A change made through one replica is in force on the other
for the very next request (linearizable, like tag reads).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from kv_hooks import HookedKV
from oci_helpers import Client, expect_error, push_image
from registries import running
from token_flow import access_control, write_htpasswd

from hareg.config.model import BindingConfig
from hareg.http.app import init_app
from hareg.kv.etcd import EtcdKV
from hareg.registry.access import AccessControl
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

USERS = ("root", "ada", "ed")
BINDINGS = (
    BindingConfig("root", "cluster-admin", ()),
    BindingConfig("ada", "admin", ("team/*",)),
)
GRANTS = "/hareg/v1/access/grants"
ROBOTS = "/hareg/v1/access/robots"


def basic(name: str, password: str | None = None) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password or name + '-pw'}".encode()).decode()


class Replicas:
    """Two replicas of one registry; ``client(i, authorization)`` talks to replica i."""

    def __init__(
        self, stack: AsyncExitStack, pairs: list[tuple[Registry, AccessControl]], kvs: list[HookedKV]
    ) -> None:
        self.stack = stack
        self.pairs = pairs
        self.kvs = kvs  # each replica's connection to etcd

    async def client(self, i: int, authorization: str | None = None) -> Client:
        registry, access = self.pairs[i]
        headers = {"Authorization": authorization} if authorization else {}
        client: Client = TestClient(TestServer(init_app(registry, access=access)), headers=headers)
        await self.stack.enter_async_context(client)
        return client


@pytest.fixture
async def replicas(kv: EtcdKV, etcd_url: str, tmp_path: Path) -> AsyncIterator[Replicas]:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {name: f"{name}-pw" for name in USERS})
    prefix = f"/test-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        pairs, kvs = [], []
        for _ in range(2):
            connection = await EtcdKV.connect([etcd_url])
            stack.push_async_callback(connection.close)
            own_kv = HookedKV(connection)
            kvs.append(own_kv)
            registry = await stack.enter_async_context(
                running(own_kv, FilesystemBlobStore(tmp_path / "blobs"), prefix=prefix)
            )
            access = await access_control(registry, htpasswd, BINDINGS)
            pairs.append((registry, access))
        yield Replicas(stack, pairs, kvs)


async def token(client: Client, scope: str) -> str:
    r = await client.get("/auth/token", params={"service": "hareg", "scope": scope})
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return str(body["token"])


async def test_a_grant_and_a_revoke_apply_at_once_on_a_replica_whose_watch_lags(replicas: Replicas) -> None:
    """Replica 1 hears nothing from its watch: its cache cannot know of the
    grant, so only the linearizable read lets the next request see it."""
    root = await replicas.client(0, basic("root"))
    ed = await replicas.client(1, basic("ed"))
    await expect_error(await ed.post("/v2/team/lag/blobs/uploads/"), 403, "DENIED")
    replicas.kvs[1].watch_gate.clear()
    try:
        r = await root.post(GRANTS, json={"subject": "ed", "role": "editor", "pattern": "team/*"})
        assert r.status == 201
        assert (await ed.post("/v2/team/lag/blobs/uploads/")).status == 202
        r = await root.delete(GRANTS, params={"subject": "ed", "role": "editor", "pattern": "team/*"})
        assert r.status == 200
        await expect_error(await ed.post("/v2/team/lag/blobs/uploads/"), 403, "DENIED")
    finally:
        replicas.kvs[1].watch_gate.set()


async def test_a_grant_and_a_revoke_apply_at_once_on_another_replica(replicas: Replicas) -> None:
    root = await replicas.client(0, basic("root"))
    ed_elsewhere = await replicas.client(1, basic("ed"))
    await expect_error(await ed_elsewhere.post("/v2/team/app/blobs/uploads/"), 403, "DENIED")

    r = await root.post(GRANTS, json={"subject": "ed", "role": "editor", "pattern": "team/*"})
    assert r.status == 201 and (await r.json())["changed"] is True
    # The very next request on the other replica: no waiting for a watch.
    image = await push_image(ed_elsewhere, "team/app", "v1")
    ed_token = await token(ed_elsewhere, "repository:team/app:pull,push")
    ed_bearer = await replicas.client(1, f"Bearer {ed_token}")
    assert (await ed_bearer.get(f"/v2/team/app/manifests/{image.digest}")).status == 200
    listed = await (await root.get(GRANTS)).json()
    assert [(g["subject"], g["role"], g["pattern"], g["by"]) for g in listed["grants"]] == [
        ("ed", "editor", "team/*", "root")
    ]
    assert {"subject": "ada", "role": "admin", "patterns": ["team/*"]} in listed["configured"]

    r = await root.delete(GRANTS, params={"subject": "ed", "role": "editor", "pattern": "team/*"})
    assert r.status == 200
    # Refused at once on the other replica: Basic, and the token issued before the revoke.
    await expect_error(await ed_elsewhere.get(f"/v2/team/app/manifests/{image.digest}"), 403, "DENIED")
    await expect_error(await ed_bearer.get(f"/v2/team/app/manifests/{image.digest}"), 403, "DENIED")
    r = await root.delete(GRANTS, params={"subject": "ed", "role": "editor", "pattern": "team/*"})
    await expect_error(r, 404, "NAME_UNKNOWN")


async def test_a_robot_account_pushes_until_it_is_deleted(replicas: Replicas) -> None:
    root = await replicas.client(0, basic("root"))
    r = await root.post(ROBOTS, json={"name": "ci"})
    assert r.status == 201 and r.headers["Cache-Control"] == "no-store"
    robot = await r.json()
    assert robot["subject"] == "robot+ci" and robot["secret"].startswith("hrs_")
    listed = await (await root.get(ROBOTS)).json()
    assert [(x["name"], x["by"]) for x in listed["robots"]] == [("ci", "root")]
    assert robot["secret"] not in str(listed)  # shown once
    await expect_error(await root.post(ROBOTS, json={"name": "ci"}), 409, "DENIED")

    assert (
        await root.post(GRANTS, json={"subject": "robot+ci", "role": "editor", "pattern": "ci/*"})
    ).status == 201
    ci = await replicas.client(1, basic("robot+ci", robot["secret"]))
    image = await push_image(ci, "ci/app", "v1")
    await expect_error(await ci.post("/v2/team/app/blobs/uploads/"), 403, "DENIED")  # outside its pattern
    wrong = await replicas.client(1, basic("robot+ci", "hrs_guess"))
    await expect_error(await wrong.get(f"/v2/ci/app/manifests/{image.digest}"), 401, "UNAUTHORIZED")

    assert (await root.delete(f"{ROBOTS}/ci")).status == 200
    await expect_error(await ci.get(f"/v2/ci/app/manifests/{image.digest}"), 401, "UNAUTHORIZED")
    assert (await (await root.get(GRANTS)).json())["grants"] == []  # its grants went with it
    await expect_error(await root.delete(f"{ROBOTS}/ci"), 404, "NAME_UNKNOWN")
    # A grant to a robot that does not exist is refused.
    r = await root.post(GRANTS, json={"subject": "robot+ci", "role": "viewer", "pattern": "ci/*"})
    await expect_error(r, 404, "NAME_UNKNOWN")


async def test_only_cluster_admins_manage_access(replicas: Replicas) -> None:
    ada = await replicas.client(0, basic("ada"))
    for method, path in (("GET", GRANTS), ("POST", GRANTS), ("GET", ROBOTS), ("POST", ROBOTS)):
        await expect_error(await ada.request(method, path, json={"name": "x"}), 403, "DENIED")
    anonymous = await replicas.client(0)
    await expect_error(await anonymous.get(GRANTS), 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"subject": "ed", "role": "owner", "pattern": "x"}, "role"),
        ({"subject": "ed", "role": "cluster-admin", "pattern": "team/*"}, "pattern"),
        ({"subject": "", "role": "viewer", "pattern": "x"}, "subject"),
        ({"subject": "e d", "role": "viewer", "pattern": "x"}, "subject"),
        ({"subject": "ed", "role": "viewer"}, "pattern"),
        ({"subject": "ed", "role": "viewer", "pattern": "x" * 300}, "pattern"),
        ({"subject": "robot+Bad!", "role": "viewer", "pattern": "x"}, "subject"),
    ],
)
async def test_a_malformed_grant_is_400_naming_the_field(
    replicas: Replicas, body: dict[str, Any], field: str
) -> None:
    root = await replicas.client(0, basic("root"))
    r = await root.post(GRANTS, json=body)
    error = await expect_error(r, 400, "UNSUPPORTED")
    assert error["message"].startswith(f"{field}:")


async def test_malformed_bodies_and_robot_names_are_400(replicas: Replicas) -> None:
    root = await replicas.client(0, basic("root"))
    await expect_error(await root.post(GRANTS, data=b"{not json"), 400, "UNSUPPORTED")
    await expect_error(await root.post(GRANTS, json=["ed"]), 400, "UNSUPPORTED")
    for name in ("", "Caps", "-lead", "a" * 64, 7):
        await expect_error(await root.post(ROBOTS, json={"name": name}), 400, "UNSUPPORTED")


async def test_access_changes_work_while_the_registry_is_read_only(replicas: Replicas) -> None:
    root = await replicas.client(0, basic("root"))
    assert (await root.put("/hareg/v1/read-only", json={"readOnly": True})).status == 200
    assert (await root.post(GRANTS, json={"subject": "ed", "role": "viewer", "pattern": "x"})).status == 201
    assert (
        await root.delete(GRANTS, params={"subject": "ed", "role": "viewer", "pattern": "x"})
    ).status == 200
    assert (await root.post(ROBOTS, json={"name": "ci"})).status == 201


async def test_without_authentication_there_is_nothing_to_manage(client: Client) -> None:
    r = await client.get(GRANTS)
    error = await expect_error(r, 404, "UNSUPPORTED")
    assert "authentication is off" in error["message"]
