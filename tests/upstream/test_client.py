"""hareg.upstream.client against small real HTTP(S) upstreams written here:
TLS verified unless caFile or insecure says otherwise, the token flow (one
token per scope until it expires), refusals and oversized answers as the
service layer's errors naming the upstream."""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from e2e.certs import self_signed

from hareg.clock import SystemClock
from hareg.processes.ports import free_port
from hareg.registry.upstream import UpstreamDenied, UpstreamError, UpstreamInvalid
from hareg.upstream.client import Credentials, RegistryClient

BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()


@asynccontextmanager
async def serve(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def manifest(request: web.Request) -> web.Response:
    headers = {"Docker-Content-Digest": DIGEST}
    return web.Response(body=BODY, headers=headers, content_type="application/vnd.oci.image.manifest.v1+json")


def registry_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v2/lib/app/manifests/{ref}", manifest)
    return app


async def test_tls_is_verified_unless_a_ca_file_or_insecure_says_otherwise(tmp_path: Path) -> None:
    cert, key, _ = self_signed(tmp_path, "localhost")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with serve(registry_app(), tls) as url:
        verified = RegistryClient(url, SystemClock())
        try:
            with pytest.raises(UpstreamError) as info:
                await verified.get_manifest("lib/app", "v1", 1 << 20)
            assert url in str(info.value)
            assert "Certificate" in str(info.value) or "SSL" in str(info.value)
        finally:
            await verified.close()
        for client in (
            RegistryClient(url, SystemClock(), ca_file=str(cert)),
            RegistryClient(url, SystemClock(), insecure=True),
        ):
            try:
                got = await client.get_manifest("lib/app", "v1", 1 << 20)
                assert (got.body, got.digest) == (BODY, DIGEST)
            finally:
                await client.close()


async def test_a_bearer_token_is_fetched_once_per_scope_with_the_credentials() -> None:
    seen = {"challenged": 0, "tokens": 0}
    expected_basic = "Basic " + base64.b64encode(b"bot:pw").decode()

    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer t-1":
            seen["challenged"] += 1
            realm = f"http://{request.host}/token"
            challenge = f'Bearer realm="{realm}",service="upstream",scope="repository:lib/app:pull"'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})
        return await manifest(request)

    async def token(request: web.Request) -> web.Response:
        seen["tokens"] += 1
        assert request.headers.get("Authorization") == expected_basic
        assert request.query["service"] == "upstream"
        assert request.query["scope"] == "repository:lib/app:pull"
        return web.json_response({"token": "t-1", "expires_in": 300})

    app = web.Application()
    app.router.add_get("/v2/lib/app/manifests/{ref}", guarded)
    app.router.add_get("/token", token)
    async with serve(app) as url:
        client = RegistryClient(url, SystemClock(), credentials=Credentials("bot", "pw"))
        try:
            for _ in range(3):
                assert (await client.get_manifest("lib/app", "v1", 1 << 20)).body == BODY
        finally:
            await client.close()
    assert seen == {"challenged": 1, "tokens": 1}


async def test_refusals_and_oversized_answers_name_the_upstream() -> None:
    async def basic_only(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="upstream"'})

    app = web.Application()
    app.router.add_get("/v2/lib/app/manifests/{ref}", manifest)
    app.router.add_get("/v2/lib/private/manifests/{ref}", basic_only)
    async with serve(app) as url:
        client = RegistryClient(url, SystemClock())
        try:
            with pytest.raises(UpstreamDenied) as denied:
                await client.get_manifest("lib/private", "v1", 1 << 20)
            assert url in str(denied.value) and "no" in str(denied.value)
            with pytest.raises(UpstreamInvalid) as large:
                await client.get_manifest("lib/app", "v1", len(BODY) - 1)
            assert url in str(large.value)
        finally:
            await client.close()
        wrong = RegistryClient(url, SystemClock(), credentials=Credentials("bot", "secret-pw"))
        try:
            with pytest.raises(UpstreamDenied) as refused:
                await wrong.get_manifest("lib/private", "v1", 1 << 20)
            assert "secret-pw" not in str(refused.value)
        finally:
            await wrong.close()


async def test_a_referrers_link_is_followed_only_on_the_same_path_of_the_same_remote() -> None:
    """The next page is taken from ``Link: <...>; rel="next"`` when it names
    the same referrers path on the same remote (relative or absolute); a link
    elsewhere is not followed (our credentials would go with it)."""
    links: dict[str, str] = {}
    asked: list[str] = []

    async def referrers(request: web.Request) -> web.Response:
        asked.append(request.query_string)
        headers = (
            {"Link": links[request.query.get("page", "first")]}
            if request.query.get("page", "first") in links
            else {}
        )
        return web.json_response({"schemaVersion": 2, "manifests": []}, headers=headers)

    app = web.Application()
    app.router.add_get(f"/v2/lib/app/referrers/{DIGEST}", referrers)
    async with serve(app) as url:
        client = RegistryClient(url, SystemClock())
        try:
            links["first"] = f'</v2/lib/app/referrers/{DIGEST}?page=two&n=2>; rel="next"'
            links["two"] = f'<{url}/v2/lib/app/referrers/{DIGEST}?page=three>; rel="next"'
            links["three"] = f'<http://127.0.0.2:1/v2/lib/app/referrers/{DIGEST}?page=four>; rel="next"'
            links["four"] = '</v2/other/referrers/x?page=five>; rel="next"'
            first = await client.get_referrers("lib/app", DIGEST, None, 1 << 20)
            assert first.next_page == "page=two&n=2"
            two = await client.get_referrers("lib/app", DIGEST, None, 1 << 20, first.next_page)
            assert two.next_page == "page=three"
            three = await client.get_referrers("lib/app", DIGEST, None, 1 << 20, two.next_page)
            assert three.next_page is None, "another origin"
            four = await client.get_referrers("lib/app", DIGEST, None, 1 << 20, "page=four")
            assert four.next_page is None, "another path"
            assert asked == ["", "page=two&n=2", "page=three", "page=four"]
        finally:
            await client.close()
