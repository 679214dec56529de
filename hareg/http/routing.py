"""A shortcut through aiohttp's router for the hottest routes (manifests and blobs by reference).

aiohttp resolves ``/v2/<name>/...`` by trying every route registered under
``/v2`` in order, a regular expression and a coroutine each, until one
matches: seven of them before ``/v2/{name}/blobs/{digest}`` answers a blob
HEAD.  ``HotRoutes`` is registered before them and looks at the segment
before the last (``manifests``, ``blobs``): where that segment decides the
route, it asks that route's resource alone, which resolves exactly as it
would have in turn (its own pattern, its own methods).  Otherwise, or when
that resource does not match, it steps aside and the router goes on as
usual, so 404s, 405s (their ``Allow``) and every other route are untouched.

Why the segment decides: a path ``.../manifests/<ref>`` (``<ref>`` without
``/``) can match no route registered before the manifests one (tags/list
and referrers end otherwise); ``.../blobs/<digest>`` none before the blobs
one except ``.../blobs/uploads`` (an upload's start), which is left to the
router.  ``tests/http/test_routing.py`` checks the resolutions against the
router's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, AbstractRoute, UrlMappingMatchInfo
from yarl import URL

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import _InfoDict

__all__ = ["HotRoutes"]

_Resolve = tuple[UrlMappingMatchInfo | None, set[str]]


class HotRoutes(AbstractResource):
    """Routes chosen by the path's segment before the last (register first among ``/v2``)."""

    def __init__(self) -> None:
        super().__init__()
        # segment -> (the resource it decides, last segments left to the router)
        self._by_segment: dict[str, tuple[web.AbstractResource, frozenset[str]]] = {}

    def add(
        self, segment: str, resource: web.AbstractResource, *, unless_last: frozenset[str] = frozenset()
    ) -> None:
        """Paths ``/v2/<name>/<segment>/<last>`` go straight to ``resource``
        (except where ``<last>`` is in ``unless_last``)."""
        self._by_segment[segment] = (resource, unless_last)

    @property
    def canonical(self) -> str:
        return "/v2/{hot}"  # indexed under /v2, where the routes it stands for are

    def url_for(self, **kwargs: str) -> URL:
        raise RuntimeError("HotRoutes builds no URLs: use the routes it stands for")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("HotRoutes cannot be moved under a prefix")

    def get_info(self) -> _InfoDict:
        return {"formatter": self.canonical}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[AbstractRoute]:
        return iter(())

    async def resolve(self, request: web.Request) -> _Resolve:
        path = request.rel_url.path_safe
        head, _, last = path.rpartition("/")
        entry = self._by_segment.get(head[head.rfind("/") + 1 :]) if last else None
        if entry is None or last in entry[1] or not path.startswith("/v2/"):
            return None, set()
        match, allowed = await entry[0].resolve(request)
        if match is None:
            return None, set()  # the router goes on: its 404 or 405 as before
        return match, allowed
