"""The web console's static files (hareg/http/console.py): the page at every
deep link, its assets with their types and headers, and nothing fetched
from elsewhere.  The console itself runs in a real browser in
tests/e2e/test_console.py and tests/cluster/test_console.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from hareg.http.console import ASSETS_DIR, ConsoleAssets

Client = TestClient[object, object]


@pytest.mark.parametrize(
    "path",
    [
        "/console/",
        "/console/repositories",
        "/console/repositories/team/app",
        "/console/repositories/team/app/tags/v1",
        "/console/repositories/team/app/manifests/sha256:" + "a" * 64,
        "/console/cluster",
    ],
)
async def test_every_deep_link_answers_the_page(client: Client, path: str) -> None:
    r = await client.get(path)
    assert r.status == 200
    assert r.content_type == "text/html"
    assert "<title>hareg console</title>" in await r.text()
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_bare_path_redirects_to_the_page(client: Client) -> None:
    r = await client.get("/console", allow_redirects=False)
    assert r.status == 301 and r.headers["Location"] == "/console/"


@pytest.mark.parametrize(("name", "kind"), [("app.js", "text/javascript"), ("style.css", "text/css")])
async def test_assets_are_served_with_their_type(client: Client, name: str, kind: str) -> None:
    r = await client.get(f"/console/assets/{name}")
    assert r.status == 200 and r.content_type == kind
    assert await r.read() == (ASSETS_DIR / name).read_bytes()


@pytest.mark.parametrize("name", ["nothing.js", "..%2Fconsole.py", "app.js.map"])
async def test_an_unknown_asset_is_a_json_404(client: Client, name: str) -> None:
    r = await client.get(f"/console/assets/{name}")
    assert r.status == 404
    body = await r.json()
    assert body["errors"][0]["code"] == "UNSUPPORTED"


def test_every_asset_is_local() -> None:
    """No CDN, no remote font or script: every URL in the page and the
    module is a path on the registry itself."""
    for path in ASSETS_DIR.iterdir():
        text = path.read_text()
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", text) + re.findall(r"url\(([^)]+)\)", text)
        for url in urls:
            assert url.startswith(("/console/", "data:", "#")), f"{path.name} loads {url}"
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text, path.name


def test_a_directory_without_the_page_is_refused(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("")
    with pytest.raises(ValueError, match=r"index\.html is missing"):
        ConsoleAssets(tmp_path)
