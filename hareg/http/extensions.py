"""hareg's extension API under ``/hareg/v1/``: tag history, rollback and
immutable tags.  Errors use the distribution spec's JSON error format.

    GET  /hareg/v1/repositories/<name>/tags/<tag>/history   [entry, ...], oldest first
    POST /hareg/v1/repositories/<name>/tags/<tag>/rollback  {"digest": D} -> 201 entry
                                                            (200 if the tag is already there)
    GET  /hareg/v1/repositories/<name>/immutability         {"name", "patterns", "updated"}
    PUT  /hareg/v1/repositories/<name>/immutability         {"patterns": [...]} ([] removes the rule)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from hareg.http.base import json_response, parse_json_body, read_body, registry, repo_name
from hareg.metadata.records import HistoryEntry, ImmutabilityRecord
from hareg.registry.errors import ErrorCode, RegistryError

PREFIX = "/hareg/v1"
# Repository names contain '/': they match greedily up to the resource part,
# whose last segments ("/tags/<tag>/history", "/immutability") cannot clash.
_REPO = PREFIX + "/repositories/{name:.+}"
# Request bodies here are small JSON documents, read whole before parsing.
MAX_BODY = 1024 * 1024


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "time": iso_time(entry.time),
        "action": entry.action,
        "old": entry.old,
        "new": entry.new,
        "replica": entry.replica,
    }


def immutability_json(repo: str, record: ImmutabilityRecord | None) -> dict[str, Any]:
    return {
        "name": repo,
        "patterns": list(record.patterns) if record else [],
        "updated": iso_time(record.updated) if record else None,
    }


def _bad_body(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, message, status=400)


async def json_body(request: web.Request, field: str, kind: type) -> Any:
    """The ``field`` of the request's JSON object body, which must be a ``kind``."""
    doc = parse_json_body(await read_body(request, MAX_BODY), f'{{"{field}": ...}}')
    if not isinstance(doc, dict) or not isinstance(doc.get(field), kind):
        raise _bad_body(f"request body must be a JSON object with a {kind.__name__} field {field!r}")
    return doc[field]


async def tag_history(request: web.Request) -> web.Response:
    entries = await registry(request).tag_lifecycle.history(repo_name(request), request.match_info["tag"])
    return json_response([entry_json(e) for e in entries])


async def rollback(request: web.Request) -> web.Response:
    digest = await json_body(request, "digest", str)
    move = await registry(request).tag_lifecycle.rollback(
        repo_name(request), request.match_info["tag"], digest
    )
    body = entry_json(move.entry) if move.entry else None
    return json_response(body, status=201 if move.moved else 200)


async def get_immutability(request: web.Request) -> web.Response:
    repo = repo_name(request)
    return json_response(immutability_json(repo, await registry(request).tag_lifecycle.immutability(repo)))


async def put_immutability(request: web.Request) -> web.Response:
    repo = repo_name(request)
    patterns = await json_body(request, "patterns", list)
    record = await registry(request).tag_lifecycle.set_immutability(repo, patterns)
    return json_response(immutability_json(repo, record))


def register(router: web.UrlDispatcher) -> None:
    router.add_get(f"{_REPO}/tags/{{tag}}/history", tag_history)
    router.add_post(f"{_REPO}/tags/{{tag}}/rollback", rollback)
    router.add_get(f"{_REPO}/immutability", get_immutability)
    router.add_put(f"{_REPO}/immutability", put_immutability)
