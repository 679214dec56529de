"""The extension API under /hareg/v1/: tag history, rollback and immutable
tags, their enforcement on the OCI API, and their error paths (spec JSON)."""

from __future__ import annotations

import json
import re
import uuid
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from oci_helpers import (
    Client,
    config_blob,
    dumps,
    expect_error,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
    raw_request,
    snapshot,
    start_replicas,
)

from hareg.metadata.store import DEFAULT_INLINE_LIMIT
from hareg.registry.service import Registry

ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
V1 = "/hareg/v1/repositories"


async def history(client: Client, repo: str, tag: str) -> list[dict[str, Any]]:
    r = await client.get(f"{V1}/{repo}/tags/{tag}/history")
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    doc: list[dict[str, Any]] = await r.json()
    return doc


async def pulled_digest(client: Client, repo: str, tag: str) -> str:
    r = await client.head(f"/v2/{repo}/manifests/{tag}")
    assert r.status == 200, r.status
    return r.headers["Docker-Content-Digest"]


async def rollback(client: Client, repo: str, tag: str, digest: str) -> Any:
    return await client.post(f"{V1}/{repo}/tags/{tag}/rollback", json={"digest": digest})


# ----------------------------------------------------------------- history


async def test_history_lists_every_move_newest_last(client: Client) -> None:
    a = await push_image(client, "team/app", "v1", seed="a")
    b = await push_image(client, "team/app", "v1", seed="b")
    assert (await client.delete("/v2/team/app/manifests/v1")).status == 202
    entries = await history(client, "team/app", "v1")
    assert [(e["seq"], e["action"], e["old"], e["new"]) for e in entries] == [
        (1, "push", None, a.digest),
        (2, "push", a.digest, b.digest),
        (3, "delete", b.digest, None),
    ]
    for e in entries:
        assert set(e) == {"seq", "time", "action", "old", "new", "replica"}
        assert ISO_RE.fullmatch(e["time"]), e["time"]
        assert e["replica"] == "replica"
    times = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in entries]
    assert times == sorted(times)


async def test_history_errors(client: Client) -> None:
    await push_image(client, "repo", "v1")
    await expect_error(await client.get(f"{V1}/nope/tags/v1/history"), 404, "NAME_UNKNOWN")
    entry = await expect_error(await client.get(f"{V1}/repo/tags/never/history"), 404, "MANIFEST_UNKNOWN")
    assert "never" in entry["message"]
    await expect_error(await client.get(f"{V1}/Bad/tags/v1/history"), 400, "NAME_INVALID")
    await expect_error(await client.get(f"{V1}/repo/tags/-x/history"), 400, "MANIFEST_INVALID")
    await expect_error(await client.post(f"{V1}/repo/tags/v1/history"), 405, "UNSUPPORTED")
    await expect_error(await client.get("/hareg/v1/nothing-here"), 404, "UNSUPPORTED")


async def test_repository_names_that_look_like_routes(client: Client) -> None:
    """Repository names contain '/', even 'tags' or 'immutability' components:
    the last segments decide the route."""
    odd = "x/tags/v1/history"
    a = await push_image(client, odd, "immutability")
    b = await push_image(client, "x/immutability", "v1")
    [entry] = await history(client, odd, "immutability")
    assert entry["new"] == a.digest
    [entry] = await history(client, "x/immutability", "v1")
    assert entry["new"] == b.digest
    r = await client.put(f"{V1}/{odd}/immutability", json={"patterns": ["*"]})
    assert r.status == 200 and (await r.json())["name"] == odd
    r = await client.get(f"{V1}/x/immutability/immutability")
    assert (await r.json()) == {"name": "x/immutability", "patterns": [], "updated": None}


# ---------------------------------------------------------------- rollback


async def test_rollback_is_a_new_forward_entry(client: Client) -> None:
    a = await push_image(client, "repo", "latest", seed="a")
    b = await push_image(client, "repo", "latest", seed="b")
    r = await rollback(client, "repo", "latest", a.digest)
    assert r.status == 201, await r.text()
    entry = await r.json()
    assert (entry["seq"], entry["action"], entry["old"], entry["new"]) == (3, "rollback", b.digest, a.digest)
    assert ISO_RE.fullmatch(entry["time"])
    assert await pulled_digest(client, "repo", "latest") == a.digest
    r = await client.get("/v2/repo/manifests/latest", headers={"Accept": a.media_type})
    assert await r.read() == a.body
    entries = await history(client, "repo", "latest")
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[-1] == entry

    # Already there: nothing written, 200 with the entry that put it there.
    r = await rollback(client, "repo", "latest", a.digest)
    assert r.status == 200
    assert await r.json() == entry
    assert len(await history(client, "repo", "latest")) == 3

    # Forward again to b, and to an untagged manifest of the repository.
    assert (await rollback(client, "repo", "latest", b.digest)).status == 201
    c = await push_image(client, "repo", None, seed="c")
    assert (await rollback(client, "repo", "latest", c.digest)).status == 201
    assert await pulled_digest(client, "repo", "latest") == c.digest
    assert [e["seq"] for e in await history(client, "repo", "latest")] == [1, 2, 3, 4, 5]


async def test_rollback_recreates_a_deleted_tag(client: Client) -> None:
    a = await push_image(client, "repo", "t")
    assert (await client.delete("/v2/repo/manifests/t")).status == 202
    r = await rollback(client, "repo", "t", a.digest)
    assert r.status == 201
    assert (await r.json())["old"] is None
    assert await pulled_digest(client, "repo", "t") == a.digest


async def test_a_body_split_across_tcp_segments_is_read_whole(client: Client) -> None:
    """The body is read to its end before it is parsed, however TCP cuts it."""
    a = await push_image(client, "repo", "t")
    await push_image(client, "repo", "t", seed="b")
    body = json.dumps({"digest": a.digest}).encode()
    headers = {"Content-Type": "application/json"}
    r = await raw_request(
        client,
        "POST",
        b"/hareg/v1/repositories/repo/tags/t/rollback",
        headers=headers,
        body=body,
        split_at=12,
    )
    assert r.status == 201, r.body[:300]


async def test_rollback_errors(client: Client) -> None:
    a = await push_image(client, "repo", "t")
    other = await push_image(client, "other", "t", seed="other")
    unknown = "sha256:" + "0" * 64
    entry = await expect_error(await rollback(client, "repo", "t", unknown), 404, "MANIFEST_UNKNOWN")
    assert entry["message"] == f"manifest {unknown} is not in repository repo"
    await expect_error(await rollback(client, "repo", "t", other.digest), 404, "MANIFEST_UNKNOWN")
    await expect_error(await rollback(client, "repo", "t", "sha256:abc"), 400, "DIGEST_INVALID")
    await expect_error(await rollback(client, "repo", "t", "md5:" + "0" * 32), 400, "DIGEST_INVALID")
    await expect_error(await rollback(client, "Repo", "t", a.digest), 400, "NAME_INVALID")
    await expect_error(await rollback(client, "repo", ".t", a.digest), 400, "MANIFEST_INVALID")
    url = f"{V1}/repo/tags/t/rollback"
    deep = b"[" * 100_000 + b"]" * 100_000  # too deep for the parser: 400, not 500
    for body in (b"", b"not json", b"[]", b'{"digest": 5}', b'{"other": "x"}', b"[" * 50_000, deep):
        entry = await expect_error(await client.post(url, data=body), 400, "UNSUPPORTED")
        assert "digest" in entry["message"]
    big = json.dumps({"digest": a.digest, "pad": "x" * (1 << 20)}).encode()
    await expect_error(await client.post(url, data=big), 413, "SIZE_INVALID")
    # Nothing of that changed the tag.
    assert [e["seq"] for e in await history(client, "repo", "t")] == [1]


async def test_rollback_on_one_replica_is_pulled_on_another(etcd_url: str, tmp_path: Path) -> None:
    prefix = f"/ext-{uuid.uuid4().hex[:10]}"
    async with AsyncExitStack() as stack:
        clients = [
            client for _, client in await start_replicas(stack, etcd_url, tmp_path / "blobs", prefix, 2)
        ]
        a = await push_image(clients[0], "repo", "t", seed="a")
        await push_image(clients[0], "repo", "t", seed="b")
        assert (await rollback(clients[1], "repo", "t", a.digest)).status == 201
        # Read-your-writes: the other replica's cached tag is already moved back.
        assert await pulled_digest(clients[0], "repo", "t") == a.digest
        assert [e["replica"] for e in await history(clients[0], "repo", "t")] == ["r0", "r0", "r1"]


# ------------------------------------------------------------ immutability


async def test_immutability_rule_get_put_remove(client: Client) -> None:
    await push_image(client, "repo", "v1")
    url = f"{V1}/repo/immutability"
    assert await (await client.get(url)).json() == {"name": "repo", "patterns": [], "updated": None}
    r = await client.put(url, json={"patterns": ["v*", "release-[0-9]*", "v*"]})
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["name"] == "repo" and doc["patterns"] == ["v*", "release-[0-9]*"]  # duplicates dropped
    assert ISO_RE.fullmatch(doc["updated"])
    assert await (await client.get(url)).json() == doc
    r = await client.put(url, json={"patterns": []})
    assert await r.json() == {"name": "repo", "patterns": [], "updated": None}
    assert await (await client.get(url)).json() == {"name": "repo", "patterns": [], "updated": None}


async def test_a_rule_may_be_set_before_the_first_push(client: Client) -> None:
    await expect_error(await client.get(f"{V1}/fresh/immutability"), 404, "NAME_UNKNOWN")
    r = await client.put(f"{V1}/fresh/immutability", json={"patterns": ["*"]})
    assert r.status == 200
    assert (await (await client.get(f"{V1}/fresh/immutability")).json())["patterns"] == ["*"]
    await push_image(client, "fresh", "v1", seed="a")  # creating a tag is allowed
    config = config_blob("b")
    await push_blob(client, "fresh", config)
    r = await put_manifest(client, "fresh", "v1", image_manifest(config, []))
    await expect_error(r, 409, "DENIED")


@pytest.mark.parametrize(
    "body",
    [
        {"patterns": [""]},
        {"patterns": ["a/b"]},
        {"patterns": ["v!"]},
        {"patterns": ["tag with space"]},
        {"patterns": ["x" * 129]},
        {"patterns": [5]},
        {"patterns": [None]},
        {"patterns": ["*"] * 101},
        {"patterns": "v*"},
        {"pattern": ["v*"]},
        ["v*"],
    ],
)
async def test_invalid_patterns_are_refused(client: Client, body: Any) -> None:
    await push_image(client, "repo", "v1")
    entry = await expect_error(await client.put(f"{V1}/repo/immutability", json=body), 400, "UNSUPPORTED")
    assert "pattern" in entry["message"]
    assert (await (await client.get(f"{V1}/repo/immutability")).json())["patterns"] == []


async def test_longest_and_widest_valid_patterns(client: Client) -> None:
    patterns = ["x" * 128, "[a-z]?*_.-9", *(f"p{i}" for i in range(98))]
    r = await client.put("/hareg/v1/repositories/repo/immutability", json={"patterns": patterns})
    assert r.status == 200
    assert (await r.json())["patterns"] == patterns


async def test_immutable_tags_are_enforced_on_the_oci_api(client: Client, registry: Registry) -> None:
    a = await push_image(client, "repo", "v1", seed="a")
    b = await push_image(client, "repo", "latest", seed="b")
    r = await client.put(f"{V1}/repo/immutability", json={"patterns": ["v*"]})
    assert r.status == 200

    # Moving v1 by a push is refused with DENIED, and says why.
    r = await put_manifest(client, "repo", "v1", b.body)
    entry = await expect_error(r, 409, "DENIED")
    assert entry["message"] == "tag v1 in repo is immutable (pattern 'v*')"
    assert entry["detail"] == {"tag": "v1", "pattern": "v*"}
    # So are deleting it, deleting its manifest, and rolling it back.
    await expect_error(await client.delete("/v2/repo/manifests/v1"), 409, "DENIED")
    await expect_error(await client.delete(f"/v2/repo/manifests/{a.digest}"), 409, "DENIED")
    await expect_error(await rollback(client, "repo", "v1", b.digest), 409, "DENIED")
    # ?tag= pushes are refused as a whole.
    r = await put_manifest(client, "repo", b.digest, b.body, params=[("tag", "v1"), ("tag", "new")])
    await expect_error(r, 409, "DENIED")
    assert (await client.head("/v2/repo/manifests/new")).status == 404

    # Allowed: the same digest again, new matching tags, non-matching tags.
    assert (await put_manifest(client, "repo", "v1", a.body)).status == 201
    assert (await put_manifest(client, "repo", "v2", b.body)).status == 201
    assert (await put_manifest(client, "repo", "latest", a.body)).status == 201
    assert (await client.delete("/v2/repo/manifests/latest")).status == 202
    assert await pulled_digest(client, "repo", "v1") == a.digest
    assert [e["seq"] for e in await history(client, "repo", "v1")] == [1]

    # Lifting the rule lets v1 move again.
    assert (await client.put(f"{V1}/repo/immutability", json={"patterns": []})).status == 200
    assert (await rollback(client, "repo", "v1", b.digest)).status == 201


async def test_a_refused_large_manifest_leaves_storage_unchanged(client: Client, registry: Registry) -> None:
    """Large manifests are written to the blob store before the metadata
    commit: the immutability pre-check refuses them before that."""
    await push_image(client, "repo", "v1")
    await client.put(f"{V1}/repo/immutability", json={"patterns": ["v1"]})
    config = config_blob("big")
    await push_blob(client, "repo", config)
    doc = json.loads(image_manifest(config, []))
    doc["annotations"] = {"pad": "x" * (DEFAULT_INLINE_LIMIT + 1000)}
    before = await snapshot(registry)
    await expect_error(await put_manifest(client, "repo", "v1", dumps(doc)), 409, "DENIED")
    after = await snapshot(registry)
    assert after.files == before.files
    # Registry metadata unchanged (cluster settings under c/ are not the push's).
    assert {k: v for k, v in after.keys.items() if b"/c/" not in k} == {
        k: v for k, v in before.keys.items() if b"/c/" not in k
    }


async def test_extension_api_errors_keep_the_spec_format(client: Client) -> None:
    await push_image(client, "repo", "v1")
    await expect_error(await client.delete(f"{V1}/repo/immutability"), 405, "UNSUPPORTED")
    await expect_error(await client.get(f"{V1}/repo/tags/v1/rollback"), 405, "UNSUPPORTED")
    r = await raw_request(client, "GET", f"{V1}/repo/tags/v1/../v1/history".encode())
    assert r.status in (200, 404)  # normalised or not, never a 500
    r = await raw_request(client, "PUT", f"{V1}/repo/immutability".encode(), body=b"\xff\xfe")
    assert r.status == 400 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
