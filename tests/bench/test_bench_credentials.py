"""The benchmark client's credentials against real registries started with the
``--auth`` users: ``hareg serve`` refuses a request without credentials and
accepts the token the client fetched (and refreshes it when it ages),
distribution takes Basic on every request; wrong passwords and tampered
tokens are refused; credentials never go to another origin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from bench.blobs import BlobSpec
from bench.client import OCIClient, RegistryHTTPError, image_manifest
from bench.credentials import (
    BasicCredentials,
    TokenCredentials,
    TokenError,
    parse_challenge,
    pull_scope,
    push_scope,
)
from bench.targets import RunningTarget
from bench.users import BenchUsers

REPO = "bench/creds"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def status(session: aiohttp.ClientSession, url: str, authorization: str | None = None) -> int:
    headers = {"Authorization": authorization} if authorization else {}
    async with session.get(url, headers=headers) as resp:
        await resp.read()
        return resp.status


async def round_trip(client: OCIClient, seed: int) -> None:
    """A push (blob, config, manifest by tag) and its pull, all with credentials."""
    layer = BlobSpec(seed=seed, size=90_000)
    assert await client.push_blob_post_put(REPO, layer) == layer.digest()
    assert await client.push_blob_chunked(REPO, BlobSpec(seed=seed + 1, size=70_000), 30_000)
    config = await client.push_small_blob(REPO, b'{"os":"linux"}')
    body = image_manifest((config, 14), [(layer.digest(), layer.size)], annotation=str(seed))
    digest = await client.put_manifest(REPO, f"s{seed}", body)
    assert (await client.get_manifest(REPO, f"s{seed}")).digest == digest
    assert await client.pull_blob(REPO, layer.digest(), layer.size) == layer.size
    assert await client.head_blob(REPO, layer.digest()) == layer.size
    assert f"s{seed}" in await client.list_tags(REPO)
    assert await client.mount_blob(f"bench/creds-mounted-{seed}", REPO, layer.digest())


async def test_hareg_refuses_no_credentials_and_accepts_the_bench_token(
    hareg_auth_target: RunningTarget, bench_users: BenchUsers, session: aiohttp.ClientSession
) -> None:
    assert hareg_auth_target.details["auth"] == "token"
    creds = TokenCredentials(bench_users.username, bench_users.password)
    client = OCIClient(session, hareg_auth_target.url, credentials=creds)
    await client.ping()
    assert client.anonymous_ping_status == 401
    assert creds.realm is not None and creds.realm.path == "/auth/token"
    await round_trip(client, seed=301)
    assert creds.fetches >= 3  # push, pull and mount scopes differ

    tags = f"{hareg_auth_target.url}/v2/{REPO}/tags/list"
    token = await creds.header(session, (pull_scope(REPO),))
    assert token.startswith("Bearer ")
    assert await status(session, tags, token) == 200
    assert await status(session, tags) == 401
    assert await status(session, tags, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")) == 401
    # A token for another repository's scope does not open this one.
    other = await creds.header(session, (pull_scope("bench/elsewhere"),))
    assert await status(session, tags, other) == 401


async def test_hareg_refuses_a_wrong_password(
    hareg_auth_target: RunningTarget, bench_users: BenchUsers, session: aiohttp.ClientSession
) -> None:
    client = OCIClient(
        session, hareg_auth_target.url, credentials=TokenCredentials(bench_users.username, "not-the-password")
    )
    with pytest.raises(TokenError, match="HTTP 401"):
        await client.ping()


async def test_tokens_are_fetched_once_per_scope_and_again_when_they_age(
    hareg_auth_target: RunningTarget, bench_users: BenchUsers, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    creds = TokenCredentials(bench_users.username, bench_users.password, clock=clock)
    await OCIClient(session, hareg_auth_target.url, credentials=creds).ping()
    fetched = creds.fetches
    scopes = (push_scope(REPO),)
    # Concurrent requests needing the same scopes share one fetch.
    first = await asyncio.gather(*(creds.header(session, scopes) for _ in range(8)))
    assert len(set(first)) == 1 and creds.fetches == fetched + 1
    assert await creds.header(session, scopes) == first[0] and creds.fetches == fetched + 1
    # hareg's tokens live 300 s: past three quarters of that, a new one.
    clock.now += 0.8 * bench_users.token_expiry
    assert await creds.header(session, scopes) != first[0] and creds.fetches == fetched + 2
    # A caller needing more life than a fresh token has is told so.
    with pytest.raises(TokenError, match="less than"):
        await creds.header(session, scopes, valid_for=bench_users.token_expiry + 1)


async def test_distribution_takes_basic_on_every_request(
    distribution_auth_target: RunningTarget, bench_users: BenchUsers, session: aiohttp.ClientSession
) -> None:
    assert distribution_auth_target.details["auth"] == "basic"
    client = OCIClient(
        session,
        distribution_auth_target.url,
        credentials=BasicCredentials(bench_users.username, bench_users.password),
    )
    await client.ping()
    assert client.anonymous_ping_status == 401
    await round_trip(client, seed=401)
    tags = f"{distribution_auth_target.url}/v2/{REPO}/tags/list"
    assert await status(session, tags) == 401
    wrong = OCIClient(
        session, distribution_auth_target.url, credentials=BasicCredentials(bench_users.username, "wrong")
    )
    with pytest.raises(RegistryHTTPError) as err:
        await wrong.ping()
    assert err.value.status == 401


async def test_credentials_go_only_to_the_registry_origin(session: aiohttp.ClientSession) -> None:
    client = OCIClient(session, "http://127.0.0.1:5000", credentials=BasicCredentials("u", "p"))
    assert "Authorization" in await client.headers(URL("http://127.0.0.1:5000/v2/x/blobs/sha256:a"), ())
    assert await client.headers(URL("http://127.0.0.1:8333/bucket/blob?sig=1"), (), {"A": "b"}) == {"A": "b"}


def test_challenges_parse_as_docker_writes_them() -> None:
    c = parse_challenge(
        'Bearer realm="http://h:1/auth/token",service="hareg",scope="repository:a/b:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "http://h:1/auth/token",
        "service": "hareg",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="hareg-bench"').params == {"realm": "hareg-bench"}
