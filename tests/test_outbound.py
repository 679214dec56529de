"""Outgoing requests honour proxy.http, proxy.https and proxy.noProxy."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from hareg.config import ProxyConfig
from hareg.outbound import OutboundClient, Proxies


def test_proxy_choice_by_scheme_and_no_proxy() -> None:
    proxies = Proxies(
        ProxyConfig(
            http="http://proxy:3128",
            https="http://secure-proxy:3128",
            no_proxy="internal.example.com, .corp.example, 10.0.0.0/8, localhost:5000, [::1], fd00::/8",
        )
    )
    assert proxies.proxy_for("http://quay.io/v2/") == "http://proxy:3128"
    assert proxies.proxy_for("https://quay.io/v2/") == "http://secure-proxy:3128"
    assert proxies.proxy_for("https://internal.example.com/v2/") is None
    assert proxies.proxy_for("https://sub.internal.example.com/v2/") is None
    assert proxies.proxy_for("https://notinternal.example.com/v2/") == "http://secure-proxy:3128"
    assert proxies.proxy_for("https://corp.example/v2/") is None
    assert proxies.proxy_for("https://a.b.corp.example/v2/") is None
    assert proxies.proxy_for("http://10.1.2.3:5000/v2/") is None
    assert proxies.proxy_for("http://11.1.2.3/v2/") == "http://proxy:3128"
    assert proxies.proxy_for("http://localhost:5000/") is None
    assert proxies.proxy_for("http://localhost:6000/") == "http://proxy:3128"
    assert proxies.proxy_for("http://[::1]:8080/") is None
    assert proxies.proxy_for("http://[fd00::5]/") is None
    assert proxies.proxy_for("ftp://quay.io/") is None
    assert Proxies(ProxyConfig(http="http://p:1", no_proxy="*")).proxy_for("http://x/") is None
    assert Proxies().proxy_for("https://quay.io/") is None
    assert Proxies(ProxyConfig(http="http://p:1")).proxy_for("https://quay.io/") is None


NAME = web.AppKey("name", str)


async def test_requests_go_through_the_proxy_unless_no_proxy() -> None:
    seen: list[tuple[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Host", ""), str(request.rel_url)))
        return web.Response(text="via " + request.app[NAME])

    def app(name: str) -> web.Application:
        a = web.Application()
        a[NAME] = name
        a.router.add_route("*", "/{tail:.*}", record)
        return a

    async with TestServer(app("proxy")) as proxy, TestServer(app("direct")) as direct:
        proxy_url = f"http://127.0.0.1:{proxy.port}"
        config = ProxyConfig(http=proxy_url, no_proxy=f"127.0.0.1:{direct.port}")
        async with OutboundClient(config) as client:
            # An upstream that does not exist: only the proxy can answer for it.
            async with client.get("http://upstream.invalid/v2/library/alpine/manifests/3") as r:
                assert await r.text() == "via proxy"
            async with client.get(f"http://127.0.0.1:{direct.port}/v2/") as r:
                assert await r.text() == "via direct"
    assert seen[0][0] == "upstream.invalid"
    assert seen[0][1].endswith("/v2/library/alpine/manifests/3")
