"""Authentication and authorization over real HTTP (a real registry on real etcd).

Users come from an htpasswd file of bcrypt entries made here; each client
sends one user's credentials (Basic, or a bearer token fetched from
``/auth/token``) on every request.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import Client, expect_error, push_blob, push_image, start_led_replicas
from registries import running
from token_flow import access_control, write_htpasswd

from hareg.config.model import BindingConfig, TokenConfig
from hareg.http.app import init_app
from hareg.kv.etcd import EtcdKV
from hareg.registry.access import AccessControl
from hareg.registry.service import Registry
from hareg.registry.tokens import Grant, TokenIssuer, TokenVerifier, generate_key_pem
from hareg.storage.filesystem import FilesystemBlobStore

USERS = ("vera", "ed", "ada", "root")
BINDINGS = (
    BindingConfig("vera", "viewer", ("team/*",)),
    BindingConfig("ed", "editor", ("team/*",)),
    BindingConfig("ada", "admin", ("team/*",)),
    BindingConfig("root", "cluster-admin", ()),
    BindingConfig("anonymous", "viewer", ("public/*",)),
)

MakeClient = Callable[..., Awaitable[Client]]


def basic(name: str, password: str | None = None) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password or name + '-pw'}".encode()).decode()


@pytest.fixture
async def registry(kv: EtcdKV, tmp_path: Path) -> AsyncIterator[Registry]:
    async with running(kv, FilesystemBlobStore(tmp_path / "blobs")) as reg:
        yield reg


@pytest.fixture
async def access(registry: Registry, tmp_path: Path) -> AccessControl:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {name: f"{name}-pw" for name in USERS})
    return await access_control(registry, htpasswd, BINDINGS)


@pytest.fixture
async def make_client(registry: Registry, access: AccessControl) -> AsyncIterator[MakeClient]:
    """A client of its own server (same registry, same access control) sending ``authorization``."""
    async with AsyncExitStack() as stack:

        async def make(authorization: str | None = None) -> Client:
            headers = {"Authorization": authorization} if authorization else {}
            client: Client = TestClient(TestServer(init_app(registry, access=access)), headers=headers)
            await stack.enter_async_context(client)
            return client

        yield make


async def token_for(client: Client, *scopes: str) -> tuple[int, dict[str, Any]]:
    r = await client.get("/auth/token", params=[("service", "hareg"), *(("scope", s) for s in scopes)])
    return r.status, await r.json()


async def test_no_credentials_get_the_token_challenge(make_client: MakeClient) -> None:
    anon = await make_client()
    r = await anon.get("/v2/")
    await expect_error(r, 401, "UNAUTHORIZED")
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="http://127.0.0.1:') and 'service="hareg"' in challenge
    r = await anon.post("/v2/team/app/blobs/uploads/")
    await expect_error(r, 401, "UNAUTHORIZED")
    assert 'scope="repository:team/app:pull,push"' in r.headers["WWW-Authenticate"]


async def test_a_viewer_is_refused_a_push_and_an_editor_outside_its_patterns(make_client: MakeClient) -> None:
    ed, vera = await make_client(basic("ed")), await make_client(basic("vera"))
    image = await push_image(ed, "team/app", "v1")
    r = await vera.get(f"/v2/team/app/manifests/{image.digest}")
    assert r.status == 200 and await r.read() == image.body
    await expect_error(await vera.post("/v2/team/app/blobs/uploads/"), 403, "DENIED")
    await expect_error(await vera.delete(f"/v2/team/app/manifests/{image.digest}"), 403, "DENIED")
    await expect_error(await ed.post("/v2/other/app/blobs/uploads/"), 403, "DENIED")
    # Outside its patterns, a repository that exists and one that does not answer alike.
    root = await make_client(basic("root"))
    await push_image(root, "other/app", "v1")
    exists = await ed.get("/v2/other/app/manifests/v1")
    missing = await ed.get("/v2/other/none/manifests/v1")
    assert (exists.status, await exists.json()) == (missing.status, await missing.json())
    assert exists.status == 403


async def test_a_mount_needs_pull_on_the_source(make_client: MakeClient) -> None:
    ed, root = await make_client(basic("ed")), await make_client(basic("root"))
    digest = await push_blob(root, "private/x", b"secret layer")
    r = await ed.post("/v2/team/app/blobs/uploads/", params={"mount": digest, "from": "private/x"})
    await expect_error(r, 403, "DENIED")


async def test_anonymous_pulls_only_where_bound(make_client: MakeClient) -> None:
    root, anon = await make_client(basic("root")), await make_client()
    public = await push_image(root, "public/base", "v1")
    await push_image(root, "team/app", "v1")
    r = await anon.get("/v2/public/base/manifests/v1")
    assert r.status == 200 and await r.read() == public.body
    await expect_error(await anon.get("/v2/team/app/manifests/v1"), 401, "UNAUTHORIZED")
    await expect_error(await anon.post("/v2/public/base/blobs/uploads/"), 401, "UNAUTHORIZED")
    r = await anon.get("/v2/_catalog")
    assert await r.json() == {"repositories": ["public/base"]}


async def test_the_catalog_lists_only_what_the_caller_can_pull(make_client: MakeClient) -> None:
    root = await make_client(basic("root"))
    for repo in ("a", "public/p", "team/t1", "team/t2", "z"):
        await push_blob(root, repo, repo.encode())
    vera = await make_client(basic("vera"))
    r = await vera.get("/v2/_catalog")
    assert (await r.json())["repositories"] == ["team/t1", "team/t2"]  # vera's only, not anonymous's
    r = await vera.get("/v2/_catalog", params={"n": "1"})
    assert (await r.json())["repositories"] == ["team/t1"]
    assert "last=team%2Ft1" in r.headers["Link"]
    r = await root.get("/v2/_catalog")
    assert (await r.json())["repositories"] == ["a", "public/p", "team/t1", "team/t2", "z"]


async def test_cluster_endpoints_only_for_cluster_admin(make_client: MakeClient) -> None:
    for name in ("vera", "ed", "ada"):
        client = await make_client(basic(name))
        await expect_error(await client.put("/hareg/v1/read-only", json={"readOnly": True}), 403, "DENIED")
        await expect_error(await client.get("/hareg/v1/status"), 403, "DENIED")
        await expect_error(await client.post("/hareg/v1/prune"), 403, "DENIED")
    root = await make_client(basic("root"))
    r = await root.get("/hareg/v1/read-only")
    assert r.status == 200
    # Probes stay open to everyone.
    assert (await (await make_client()).get("/healthz")).status == 200
    for name in ("vera", "ada"):
        await expect_error(await (await make_client(basic(name))).get("/hareg/v1/members"), 403, "DENIED")
    assert (await root.get("/hareg/v1/members")).status == 200


async def test_the_console_page_is_open_and_its_data_is_not(make_client: MakeClient) -> None:
    anonymous = await make_client()
    r = await anonymous.get("/console/repositories/team-a/app/tags/v1")
    assert r.status == 200 and "<title>hareg console</title>" in await r.text()
    # What the page reads is refused as any other client's request would be.
    await expect_error(await anonymous.get("/v2/team-a/app/tags/list"), 401, "UNAUTHORIZED")
    await expect_error(await anonymous.get("/hareg/v1/members"), 401, "UNAUTHORIZED")


async def test_rollback_and_immutability_need_admin(make_client: MakeClient) -> None:
    ed, ada = await make_client(basic("ed")), await make_client(basic("ada"))
    first = await push_image(ed, "team/app", "v1", seed="1")
    await push_image(ed, "team/app", "v1", seed="2")
    rollback = "/hareg/v1/repositories/team/app/tags/v1/rollback"
    await expect_error(await ed.post(rollback, json={"digest": first.digest}), 403, "DENIED")
    assert (await ada.post(rollback, json={"digest": first.digest})).status == 201
    rule = "/hareg/v1/repositories/team/app/immutability"
    await expect_error(await ed.put(rule, json={"patterns": ["v*"]}), 403, "DENIED")
    assert (await ada.put(rule, json={"patterns": ["v*"]})).status == 200
    assert (await ed.get(rule)).status == 200  # reading the rule is a viewer's


async def test_a_repository_admin_prunes_its_repositories_only(make_client: MakeClient) -> None:
    ed, ada, root = [await make_client(basic(n)) for n in ("ed", "ada", "root")]
    await push_image(ed, "team/app", "v1", seed="1")
    await push_image(ed, "team/app", "v1", seed="2")
    prune = "/hareg/v1/repositories/team/app/prune?dryRun=true"
    await expect_error(await ed.post(prune), 403, "DENIED")
    r = await ada.post(prune)
    assert r.status == 200, await r.text()
    report = await r.json()
    assert report["repositories"] == ["team/app"] and report["dryRun"] is True
    await expect_error(await ada.post("/hareg/v1/repositories/other/prune?dryRun=true"), 403, "DENIED")
    await expect_error(await ada.post("/hareg/v1/prune?dryRun=true"), 403, "DENIED")  # the whole registry
    assert (await root.post("/hareg/v1/prune?dryRun=true")).status == 200


async def test_the_token_flow_push_and_pull(make_client: MakeClient) -> None:
    ed_login = await make_client(basic("ed"))
    status, body = await token_for(ed_login, "repository:team/app:pull,push", "repository:other:pull,push")
    assert status == 200
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"]
    claims = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    assert claims["iss"] == "hareg" and claims["aud"] == "hareg" and claims["sub"] == "ed"
    ed = await make_client(f"Bearer {body['token']}")
    image = await push_image(ed, "team/app", "v1")
    assert (await ed.get(f"/v2/team/app/manifests/{image.digest}")).status == 200
    # A scope the token lacks but ed could get: fetch another token.
    r = await ed.delete(f"/v2/team/app/manifests/{image.digest}")
    await expect_error(r, 401, "UNAUTHORIZED")
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    # One ed could never get: denied.
    await expect_error(await ed.post("/v2/other/blobs/uploads/"), 403, "DENIED")


async def test_anonymous_tokens_and_bad_credentials_at_the_token_endpoint(make_client: MakeClient) -> None:
    status, body = await token_for(await make_client(), "repository:public/x:pull,push")
    assert status == 200
    claims = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
    assert claims["sub"] == "anonymous"
    assert claims["access"] == [{"type": "repository", "name": "public/x", "actions": ["pull"]}]
    r = await (await make_client(basic("ed", "wrong"))).get("/auth/token", params={"service": "hareg"})
    await expect_error(r, 401, "UNAUTHORIZED")
    r = await (await make_client(basic("ed"))).get("/auth/token", params={"scope": "nonsense"})
    await expect_error(r, 400, "UNSUPPORTED")


@pytest.mark.parametrize("problem", ["expired", "wrongly signed", "wrong audience"])
async def test_unacceptable_tokens_are_refused(
    make_client: MakeClient, access: AccessControl, problem: str
) -> None:
    assert access.issuer is not None
    grants = [Grant("repository", "team/app", ("pull", "push"))]
    now = time.time()
    if problem == "expired":
        token = access.issuer.issue("ed", grants, now - 3600, "t")
    elif problem == "wrongly signed":
        token = TokenIssuer(generate_key_pem(), "hareg", 300).issue("ed", grants, now, "t")
    else:
        other = TokenIssuer(generate_key_pem(), "elsewhere", 300)
        other.key = access.issuer.key  # the right key, the wrong audience
        token = other.issue("ed", grants, now, "t")
    client = await make_client(f"Bearer {token}")
    r = await client.get("/v2/team/app/tags/list")
    await expect_error(r, 401, "UNAUTHORIZED")
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


async def test_brute_force_is_answered_429(make_client: MakeClient, access: AccessControl) -> None:
    attacker = await make_client(basic("ed", "guess"))
    for _ in range(access.limiter.max_failures):
        await expect_error(await attacker.get("/v2/"), 401, "UNAUTHORIZED")
    r = await attacker.get("/v2/")
    await expect_error(r, 429, "TOOMANYREQUESTS")
    assert int(r.headers["Retry-After"]) >= 1
    # The right password from the same address is refused too until the window ends.
    await expect_error(await (await make_client(basic("ed"))).get("/v2/"), 429, "TOOMANYREQUESTS")


async def test_every_write_is_audited_without_credentials(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="hareg.audit")
    ed = await make_client(basic("ed"))
    image = await push_image(ed, "team/app", "v1")
    await ed.post("/v2/other/blobs/uploads/")
    entries = [r.fields for r in caplog.records if r.name == "hareg.audit"]  # type: ignore[attr-defined]
    assert {"subject": "ed", "method": "PUT", "repository": "team/app", "status": 201}.items() <= next(
        e for e in entries if e["method"] == "PUT" and e["reference"] == "v1"
    ).items()
    assert any(e["digest"] == image.blobs[0] for e in entries)
    refused = [e for e in entries if e["repository"] == "other"]
    assert refused and refused[0]["outcome"] == "refused" and refused[0]["status"] == 403
    assert "ed-pw" not in caplog.text and "Basic" not in caplog.text


async def test_without_access_control_the_registry_is_open(registry: Registry) -> None:
    async with TestClient(TestServer(init_app(registry))) as client:
        assert (await client.get("/v2/")).status == 200
        await push_blob(client, "x", b"data")
        await expect_error(await client.get("/auth/token"), 404, "UNSUPPORTED")


def test_token_config_default_expiry() -> None:
    assert TokenConfig().expiry == 300


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Basic " + base64.b64encode(b":empty-name").decode(),
        "Basic " + base64.b64encode(b"anonymous:anything").decode(),
        "Bearer",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0.",  # alg none
        "Bearer " + "x" * 5000,
        "Digest username=ed",
        "\u00e9\u00e9",
    ],
)
async def test_malformed_credentials_are_401_never_500(make_client: MakeClient, authorization: str) -> None:
    client = await make_client(authorization)
    for path in ("/v2/", "/v2/team/app/tags/list", "/auth/token?scope=repository:team/app:pull"):
        r = await client.get(path)
        await expect_error(r, 401, "UNAUTHORIZED")
        assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")


@pytest.mark.parametrize(
    "query",
    [
        [("scope", "repository:a")],
        [("scope", " ".join(f"repository:r{i}:pull" for i in range(100)))],
        [("service", "someone-else")],
    ],
)
async def test_malformed_token_requests_are_400(
    make_client: MakeClient, query: list[tuple[str, str]]
) -> None:
    r = await (await make_client(basic("ed"))).get("/auth/token", params=query)
    assert r.status == 400, await r.text()
    assert (await r.json())["errors"][0]["message"]


async def test_a_prune_forwarded_to_the_leader_is_authorized_there(
    etcd_url: str, tmp_path: Path, access: AccessControl
) -> None:
    prefix = f"/test-fwd-{time.monotonic_ns()}"
    async with AsyncExitStack() as stack:
        _, (_, follower) = await start_led_replicas(
            stack,
            etcd_url,
            tmp_path / "shared-blobs",
            prefix,
            access=access,
            headers={"Authorization": basic("root")},
        )
        r = await follower.post("/hareg/v1/prune")
        assert r.status == 200, await r.text()
        r = await follower.post("/hareg/v1/prune", headers={"Authorization": basic("ed")})
        await expect_error(r, 403, "DENIED")


@pytest.mark.parametrize(
    "path", ["/v2/a%0d%0ab/manifests/x", "/v2/a%22b/tags/list", "/v2/%e9/blobs/uploads/"]
)
async def test_a_malformed_name_never_reaches_the_challenge(make_client: MakeClient, path: str) -> None:
    r = await (await make_client()).get(path)
    assert r.status in (400, 401, 404, 405), await r.text()
    assert "\n" not in r.headers.get("WWW-Authenticate", "") and "%" not in r.headers.get(
        "WWW-Authenticate", ""
    )


async def test_an_external_issuers_tokens_are_verified_against_its_jwks(
    make_client: MakeClient, access: AccessControl
) -> None:
    from joserfc import jwt
    from joserfc.jwk import KeySet, RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "ext-1"})
    jwks = json.dumps(KeySet([key]).as_dict(private=False))
    access.external = TokenVerifier.from_jwks(jwks, "https://idp.example.com", "hareg")
    root = await make_client(basic("root"))
    image = await push_image(root, "team/app", "v1")

    def sign(issuer: str, audience: str, exp_in: int, signer: RSAKey = key) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer, "aud": audience, "sub": "ci-bot", "iat": now, "exp": now + exp_in,
            "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
        }  # fmt: skip
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)

    good = await make_client(f"Bearer {sign('https://idp.example.com', 'hareg', 60)}")
    r = await good.get(f"/v2/team/app/manifests/{image.digest}")
    assert r.status == 200 and await r.read() == image.body
    await expect_error(await good.post("/v2/team/app/blobs/uploads/"), 403, "DENIED")
    stranger = RSAKey.generate_key(2048, parameters={"kid": "ext-1"})
    for token in (
        sign("https://other.example.com", "hareg", 60),
        sign("https://idp.example.com", "someone-else", 60),
        sign("https://idp.example.com", "hareg", -60),
        sign("https://idp.example.com", "hareg", 60, stranger),
    ):
        bad = await make_client(f"Bearer {token}")
        await expect_error(await bad.get("/v2/team/app/tags/list"), 401, "UNAUTHORIZED")


async def test_behind_a_trusted_proxy_failed_logins_count_per_forwarded_address(
    make_client: MakeClient, access: AccessControl
) -> None:
    async def login(user: str, password: str, client: str) -> int:
        c = await make_client(basic(user, password))
        r = await c.get("/v2/", headers={"X-Forwarded-For": client})
        return r.status

    # Untrusted: the header is ignored and every client shares the peer's address.
    for _ in range(access.limiter.max_failures):
        assert await login("mallory", "guess", "203.0.113.1") == 401
    assert await login("ed", "ed-pw", "203.0.113.2") == 429
    access.limiter.succeeded("addr:127.0.0.1")
    access.limiter = type(access.limiter)(access.clock)
    access.reconfigure(replace(access.config, trusted_proxies=("127.0.0.1/32",)))
    for _ in range(access.limiter.max_failures):
        assert await login("mallory", "guess", "203.0.113.1") == 401
    assert await login("ed", "ed-pw", "203.0.113.2") == 200  # another client is not locked out
    assert await login("ed", "ed-pw", "203.0.113.1") == 429  # the attacker's address is
