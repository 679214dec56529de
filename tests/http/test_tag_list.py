"""Tag lists: /v2/<name>/tags/list with n, last and the Link header."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import Client, expect_error, follow_links, push_image, put_manifest

from hareg.clock import SystemClock
from hareg.http.app import init_app
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

TAGS = sorted(["A", "B1", "Z", "_u", "a", "a-1", "a.2", "a_3", "latest", "v1.0", "v1.1", "v10"])


async def tag_all(client: Client, repo: str, tags: list[str]) -> None:
    image = await push_image(client, repo)
    r = await put_manifest(client, repo, image.digest, image.body, params=[("tag", t) for t in tags])
    assert r.status == 201


async def test_list_is_sorted_and_named(client: Client) -> None:
    await tag_all(client, "repo", list(reversed(TAGS)))
    r = await client.get("/v2/repo/tags/list")
    assert r.status == 200
    assert r.content_type == "application/json"
    assert await r.json() == {"name": "repo", "tags": TAGS}
    assert "Link" not in r.headers
    # ASCIIbetical: upper case before '_' before lower case.
    assert TAGS.index("Z") < TAGS.index("_u") < TAGS.index("a")


async def test_nested_repositories_keep_their_own_tags(client: Client) -> None:
    await tag_all(client, "a", ["one"])
    await tag_all(client, "a/b", ["two"])
    await tag_all(client, "a-b", ["three"])
    assert (await (await client.get("/v2/a/tags/list")).json())["tags"] == ["one"]
    assert (await (await client.get("/v2/a/b/tags/list")).json()) == {"name": "a/b", "tags": ["two"]}
    assert (await (await client.get("/v2/a-b/tags/list")).json())["tags"] == ["three"]


@pytest.mark.parametrize("n", [1, 2, 5, 11])
async def test_following_link_collects_everything_once_in_order(client: Client, n: int) -> None:
    await tag_all(client, "org/repo", TAGS)
    collected, sizes, links = await follow_links(client, f"/v2/org/repo/tags/list?n={n}", "tags")
    assert collected == TAGS
    assert len(sizes) == -(-len(TAGS) // n) and all(size == n for size in sizes[:-1])
    ends = [TAGS[n * (i + 1) - 1] for i in range(len(links))]  # each page's last tag
    assert links == [f"/v2/org/repo/tags/list?n={n}&last={last}" for last in ends]


async def test_exactly_n_tags_has_no_link(client: Client) -> None:
    await tag_all(client, "repo", TAGS)
    r = await client.get(f"/v2/repo/tags/list?n={len(TAGS)}")
    assert (await r.json())["tags"] == TAGS
    assert "Link" not in r.headers
    r = await client.get(f"/v2/repo/tags/list?n={len(TAGS) + 10}")
    assert (await r.json())["tags"] == TAGS
    assert "Link" not in r.headers


async def test_n_zero_is_empty_without_link(client: Client) -> None:
    await tag_all(client, "repo", TAGS)
    r = await client.get("/v2/repo/tags/list?n=0")
    assert r.status == 200
    assert await r.json() == {"name": "repo", "tags": []}
    assert "Link" not in r.headers
    r = await client.get("/v2/repo/tags/list?n=0&last=a")
    assert (await r.json())["tags"] == []
    assert "Link" not in r.headers


async def test_last_without_n(client: Client) -> None:
    await tag_all(client, "repo", TAGS)
    r = await client.get("/v2/repo/tags/list?last=a_3")
    assert r.status == 200
    assert (await r.json())["tags"] == TAGS[TAGS.index("a_3") + 1 :]
    assert "Link" not in r.headers


async def test_last_is_exclusive_and_need_not_exist(client: Client) -> None:
    await tag_all(client, "repo", TAGS)
    r = await client.get("/v2/repo/tags/list?n=2&last=latest")
    assert (await r.json())["tags"] == ["v1.0", "v1.1"]
    r = await client.get("/v2/repo/tags/list?n=2&last=b")  # between 'a_3' and 'latest'
    assert (await r.json())["tags"] == ["latest", "v1.0"]
    r = await client.get("/v2/repo/tags/list?last=zzz")
    assert r.status == 200
    assert (await r.json())["tags"] == []


async def test_conformance_style_n_and_last(client: Client) -> None:
    """As the conformance suite does: half the tags, then the half after the last one seen."""
    await tag_all(client, "repo", ["test0", "test1", "test2", "test3"])
    r = await client.get("/v2/repo/tags/list?n=2")
    first = (await r.json())["tags"]
    assert first == ["test0", "test1"]
    r = await client.get(f"/v2/repo/tags/list?n=2&last={first[-1]}")
    assert r.status == 200
    assert (await r.json())["tags"] == ["test2", "test3"]


@pytest.mark.parametrize(
    "query", ["", "?n=5", "?n=0", "?last=a", "?n=2&last=a", "?n=0&last=zzz", "?n=99999999999"]
)
async def test_unknown_repository_is_404_name_unknown(client: Client, query: str) -> None:
    await tag_all(client, "other", ["a"])
    await expect_error(await client.get(f"/v2/nosuch/tags/list{query}"), 404, "NAME_UNKNOWN")


async def test_repository_without_tags_is_an_empty_list(client: Client) -> None:
    await push_image(client, "repo")  # pushed by digest only
    r = await client.get("/v2/repo/tags/list")
    assert r.status == 200
    assert await r.json() == {"name": "repo", "tags": []}


async def test_deleting_tags_shows_in_the_list(client: Client) -> None:
    await tag_all(client, "repo", ["a", "b", "c"])
    assert (await client.delete("/v2/repo/manifests/b")).status == 202
    assert (await (await client.get("/v2/repo/tags/list")).json())["tags"] == ["a", "c"]


@pytest.mark.parametrize("n", ["abc", "-1", "1.5", "%C2%B2", "%D9%A3", "", "0x10", " 1"])
async def test_invalid_n_is_400(client: Client, n: str) -> None:
    await tag_all(client, "repo", ["a"])
    r = await client.get(f"/v2/repo/tags/list?n={n}")
    assert r.status == 400
    await expect_error(r, 400, "UNSUPPORTED")


async def test_invalid_repository_name_is_400(client: Client) -> None:
    await expect_error(await client.get("/v2/Repo/tags/list"), 400, "NAME_INVALID")


async def collect(client: Client, url: str) -> tuple[list[str], list[int]]:
    """Follow the Link headers from ``url``: every tag, and the size of each page."""
    tags, sizes, _ = await follow_links(client, url, "tags")
    return tags, sizes


async def test_1200_tags_are_listed_in_pages_of_at_most_1000(client: Client) -> None:
    image = await push_image(client, "big")
    tags = [f"t{i:04d}" for i in range(1200)]
    for i in range(0, len(tags), 100):  # 100 tags a PUT keeps each transaction small
        r = await put_manifest(
            client, "big", image.digest, image.body, params=[("tag", t) for t in tags[i : i + 100]]
        )
        assert r.status == 201, await r.text()
    r = await client.get("/v2/big/tags/list")
    assert r.status == 200
    assert (await r.json())["tags"] == tags[:1000]
    assert r.headers["Link"] == '</v2/big/tags/list?n=1000&last=t0999>; rel="next"'
    assert await collect(client, "/v2/big/tags/list") == (tags, [1000, 200])
    # n above the maximum is clamped to it, not refused; huge values too.
    for n in ("1001", "5000", "99999999999999999999999999"):
        r = await client.get(f"/v2/big/tags/list?n={n}")
        assert r.status == 200
        assert len((await r.json())["tags"]) == 1000
        assert r.headers["Link"] == '</v2/big/tags/list?n=1000&last=t0999>; rel="next"'
    assert await collect(client, "/v2/big/tags/list?n=500") == (tags, [500, 500, 200])
    assert await collect(client, "/v2/big/tags/list?n=" + "0" * 40 + "700") == (tags, [700, 500])
    assert await collect(client, "/v2/big/tags/list?last=t0100") == (tags[101:], [1000, 99])


async def test_the_page_size_is_the_configured_maximum(kv: EtcdKV, tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "blobs")
    reg = Registry(
        kv, store, SystemClock(), RandomIds(), prefix=f"/test-{uuid.uuid4().hex[:12]}", max_list_page_size=5
    )
    await reg.start()
    try:
        async with TestClient(TestServer(init_app(reg))) as c:
            await tag_all(c, "repo", TAGS)
            r = await c.get("/v2/repo/tags/list?n=50")
            assert (await r.json())["tags"] == TAGS[:5]
            assert r.headers["Link"] == f'</v2/repo/tags/list?n=5&last={TAGS[4]}>; rel="next"'
            assert await collect(c, "/v2/repo/tags/list") == (TAGS, [5, 5, 2])
            assert await collect(c, "/v2/repo/tags/list?n=3") == (TAGS, [3, 3, 3, 3])
    finally:
        await reg.stop()
        await store.close()
