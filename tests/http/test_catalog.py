"""The repository catalog: /v2/_catalog with n, last and the Link header."""

from __future__ import annotations

import asyncio
import re

import pytest
from oci_helpers import Client, expect_error, follow_links, push_blob

REPOS = sorted(["a", "a-b", "a/b", "a/b/c", "b", "library/ubuntu", "z0", "zz/top"])
LINK_RE = re.compile(r'^<(?P<url>/v2/_catalog\?[^>]+)>; rel="next"$')


async def create_repos(client: Client, names: list[str]) -> None:
    for name in names:
        await push_blob(client, name, f"blob of {name}".encode())


async def test_catalog_lists_every_repository_sorted(client: Client) -> None:
    r = await client.get("/v2/_catalog")
    assert r.status == 200
    assert await r.json() == {"repositories": []}
    await create_repos(client, list(reversed(REPOS)))
    r = await client.get("/v2/_catalog")
    assert r.status == 200
    assert await r.json() == {"repositories": REPOS}
    assert "Link" not in r.headers


@pytest.mark.parametrize("n", [1, 3, 7])
async def test_following_link_collects_everything_once_in_order(client: Client, n: int) -> None:
    await create_repos(client, REPOS)
    collected, sizes, _ = await follow_links(client, f"/v2/_catalog?n={n}", "repositories")
    assert collected == REPOS
    assert len(sizes) == -(-len(REPOS) // n) and all(size == n for size in sizes[:-1])


async def test_n_zero_and_n_larger_than_the_catalog(client: Client) -> None:
    await create_repos(client, REPOS)
    r = await client.get("/v2/_catalog?n=0")
    assert r.status == 200
    assert await r.json() == {"repositories": []}
    assert "Link" not in r.headers
    r = await client.get(f"/v2/_catalog?n={len(REPOS)}")
    assert (await r.json())["repositories"] == REPOS
    assert "Link" not in r.headers


async def test_last(client: Client) -> None:
    await create_repos(client, REPOS)
    r = await client.get("/v2/_catalog", params={"last": "a/b"})
    assert (await r.json())["repositories"] == REPOS[REPOS.index("a/b") + 1 :]
    r = await client.get("/v2/_catalog", params={"n": "2", "last": "library/ubuntu"})
    assert (await r.json())["repositories"] == ["z0", "zz/top"]
    assert "Link" not in r.headers


@pytest.mark.parametrize("n", ["x", "-3", "%C2%B2", "", "1e3"])
async def test_invalid_n_is_400(client: Client, n: str) -> None:
    await expect_error(await client.get(f"/v2/_catalog?n={n}"), 400, "UNSUPPORTED")


async def test_catalog_method_not_allowed(client: Client) -> None:
    await expect_error(await client.delete("/v2/_catalog"), 405, "UNSUPPORTED")


async def test_1200_repositories_are_listed_in_pages_of_at_most_1000(client: Client) -> None:
    names = [f"repo{i:04d}" for i in range(1200)]
    gate = asyncio.Semaphore(16)

    async def create(name: str) -> None:
        async with gate:
            await push_blob(client, name, f"blob of {name}".encode())

    await asyncio.gather(*(create(name) for name in names))
    r = await client.get("/v2/_catalog")
    assert r.status == 200
    assert (await r.json())["repositories"] == names[:1000]
    assert r.headers["Link"] == '</v2/_catalog?n=1000&last=repo0999>; rel="next"'
    m = LINK_RE.match(r.headers["Link"])
    assert m
    r = await client.get(m["url"])
    assert (await r.json())["repositories"] == names[1000:]
    assert "Link" not in r.headers
    # n above the maximum is clamped to it, not refused.
    for n in ("1001", "99999999999999999999"):
        r = await client.get(f"/v2/_catalog?n={n}")
        assert r.status == 200
        assert (await r.json())["repositories"] == names[:1000]
        assert r.headers["Link"] == '</v2/_catalog?n=1000&last=repo0999>; rel="next"'
    r = await client.get("/v2/_catalog?n=700&last=repo0999")
    assert (await r.json())["repositories"] == names[1000:]
    assert "Link" not in r.headers
