"""The web console's static files, served at ``/console/`` (docs/console.md).

The console is plain HTML, CSS and one ES module shipped in the package
(``console_assets/``): no build step, nothing fetched from elsewhere.  It
reads and changes the registry only through the ``/v2`` and ``/hareg/v1``
APIs, with the caller's own token, so every rule of the service layer
applies to it as to any client; these handlers serve files that hold no
data, which is why ``authz.request_needs`` leaves ``/console`` open.

Every path under ``/console/`` that is not an asset answers the page itself,
so a deep link (``/console/repositories/<name>/tags/<tag>``) survives a
reload: the module reads the path and renders that view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from aiohttp import web

from hareg.registry.errors import ErrorCode, RegistryError

__all__ = ["ASSETS_DIR", "CONSOLE_PATH", "ConsoleAssets", "register"]

CONSOLE_PATH: Final = "/console"
ASSETS_DIR: Final = Path(__file__).with_name("console_assets")
_TYPES: Final = MappingProxyType(
    {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
)
# Scripts, styles and requests come from this origin only; no inline script,
# no framing (clickjacking of the rollback button).
_HEADERS: Final = MappingProxyType(
    {
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidate, so an upgraded replica's console is the one that loads.
        "Cache-Control": "no-cache",
    }
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


class ConsoleAssets:
    """The console's files, read once (a few tens of KiB)."""

    def __init__(self, directory: Path = ASSETS_DIR) -> None:
        files = {}
        for path in sorted(directory.iterdir()):
            kind = _TYPES.get(path.suffix)
            if path.is_file() and kind is not None:
                files[path.name] = Asset(path.read_bytes(), kind)
        if "index.html" not in files:
            raise ValueError(f"the console's index.html is missing from {directory}")
        self.files: MappingProxyType[str, Asset] = MappingProxyType(files)

    def response(self, name: str) -> web.Response:
        asset = self.files.get(name)
        if asset is None:
            raise RegistryError(ErrorCode.UNSUPPORTED, f"the console has no file {name!r}", status=404)
        return web.Response(body=asset.body, content_type=asset.content_type, headers=dict(_HEADERS))


def register(router: web.UrlDispatcher, assets: ConsoleAssets) -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(f"{CONSOLE_PATH}/")

    async def page(request: web.Request) -> web.Response:
        return assets.response("index.html")

    async def asset(request: web.Request) -> web.Response:
        return assets.response(request.match_info["file"])

    router.add_get(CONSOLE_PATH, redirect)
    router.add_get(f"{CONSOLE_PATH}/", page)
    router.add_get(f"{CONSOLE_PATH}/assets/{{file}}", asset)
    router.add_get(f"{CONSOLE_PATH}/{{view:.+}}", page)
