"""``hareg history``, ``hareg rollback`` and ``hareg immutable``: clients of a
running registry's extension API (``/hareg/v1/``, see hareg/http/extensions.py).
``register(subparsers)`` adds them to the ``hareg`` command.

The registry is ``--registry URL``, else ``$HAREG_REGISTRY``, else
http://127.0.0.1:5000.  Exit codes: 0 done, 1 the registry refused or could
not be reached, 2 bad usage.  Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from hareg.cli.client import (
    CliError,
    Remote,
    add_registry_options,
    call,
    remote,
    run_command,
)

__all__ = ["register"]

# A table shows digests as "sha256:" and this many hex digits (--no-trunc: all).
SHORT_HEX = 12


def _repo_path(repo: str) -> str:
    return "/hareg/v1/repositories/" + urllib.parse.quote(repo, safe="/")


def _reference(text: str) -> tuple[str, str]:
    from hareg.registry.errors import RegistryError
    from hareg.registry.names import check_name, check_tag

    repo, sep, tag = text.rpartition(":")
    if not sep or not repo or not tag or "/" in tag:
        raise CliError(f"{text!r}: expected REPO:TAG, for example library/app:v1", 2)
    if ":" in repo:
        raise CliError(f"{text!r}: give the registry with --registry, and REPO:TAG without a host", 2)
    try:
        check_name(repo)
        check_tag(tag)
    except RegistryError as exc:
        raise CliError(exc.message, 2) from None
    return repo, tag


def _repository(text: str) -> str:
    from hareg.registry.errors import RegistryError
    from hareg.registry.names import check_name

    try:
        return check_name(text)
    except RegistryError as exc:
        raise CliError(exc.message, 2) from None


def _patterns(patterns: list[str]) -> tuple[str, ...]:
    from hareg.registry.errors import RegistryError
    from hareg.registry.tag_lifecycle import check_patterns

    try:
        return check_patterns(patterns)
    except RegistryError as exc:
        raise CliError(exc.message, 2) from None


def _short(digest: str | None, no_trunc: bool) -> str:
    if digest is None:
        return "-"
    if no_trunc:
        return digest
    alg, _, hexpart = digest.partition(":")
    return f"{alg}:{hexpart[:SHORT_HEX]}"


# ------------------------------------------------------------------ commands


def _history(args: argparse.Namespace) -> int:
    repo, tag = _reference(args.reference)
    _, entries = call(remote(args), "GET", f"{_repo_path(repo)}/tags/{tag}/history")
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    rows = [("SEQ", "TIME", "ACTION", "OLD → NEW", "REPLICA")]
    for e in entries:
        change = f"{_short(e['old'], args.no_trunc)} → {_short(e['new'], args.no_trunc)}"
        rows.append((str(e["seq"]), e["time"], e["action"], change, e["replica"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _resolve_digest(base: Remote, repo: str, tag: str, text: str) -> str:
    """A full digest as given, or the one digest in the tag's history that
    starts with ``text`` (as the history table shows them, shortened)."""
    from hareg.registry.digests import parse_digest
    from hareg.registry.errors import RegistryError

    try:
        return str(parse_digest(text))
    except RegistryError:
        pass
    if not text or not all(c.isalnum() or c in ":+._-" for c in text):
        raise CliError(f"{text!r} is not a digest", 2)
    _, entries = call(base, "GET", f"{_repo_path(repo)}/tags/{tag}/history")
    seen: set[str] = {d for e in entries for d in (e["old"], e["new"]) if d}
    found = sorted(d for d in seen if d.startswith(text) or d.partition(":")[2].startswith(text))
    if not found:
        raise CliError(f"no digest in the history of {repo}:{tag} starts with {text!r}")
    if len(found) > 1:
        raise CliError(f"{text!r} is ambiguous in the history of {repo}:{tag}: {', '.join(found)}")
    return found[0]


def _rollback(args: argparse.Namespace) -> int:
    repo, tag = _reference(args.reference)
    base = remote(args)
    digest = _resolve_digest(base, repo, tag, args.digest)
    status, entry = call(base, "POST", f"{_repo_path(repo)}/tags/{tag}/rollback", {"digest": digest})
    if args.json:
        print(json.dumps(entry, indent=2))
    elif status == 201:
        was = f"; was {entry['old']}" if entry["old"] else ""
        print(f"{repo}:{tag} now points at {entry['new']} (history entry {entry['seq']}{was})")
    else:
        print(f"{repo}:{tag} already points at {digest}; nothing changed")
    return 0


def _immutable(args: argparse.Namespace) -> int:
    repo = _repository(args.repository)
    base = remote(args)
    path = f"{_repo_path(repo)}/immutability"
    if args.off:
        _, doc = call(base, "PUT", path, {"patterns": []})
    elif args.patterns:
        _, doc = call(base, "PUT", path, {"patterns": list(_patterns(args.patterns))})
    else:
        _, doc = call(base, "GET", path)
    if args.json:
        print(json.dumps(doc, indent=2))
    elif doc["patterns"]:
        print(f"{repo}: tags matching these patterns cannot be moved or deleted (since {doc['updated']}):")
        for pattern in doc["patterns"]:
            print(f"  {pattern}")
    else:
        print(f"{repo}: no immutable tags")
    return 0


# ------------------------------------------------------------------ parser


def register(sub: Any) -> None:
    """Add the lifecycle commands to the ``hareg`` subparsers."""

    history = sub.add_parser(
        "history",
        help="show every move of a tag (push, delete, rollback)",
        description="Show a tag's history, oldest first: each entry is a forward move of the tag.",
    )
    history.add_argument("reference", metavar="REPO:TAG")
    history.add_argument("--json", action="store_true", help="print the entries as JSON")
    history.add_argument("--no-trunc", action="store_true", help="show full digests")
    add_registry_options(history)
    history.set_defaults(func=lambda a: run_command(_history, a))

    rollback = sub.add_parser(
        "rollback",
        help="point a tag back at an earlier digest (a new history entry)",
        description="Point REPO:TAG at DIGEST, a manifest of the repository. This adds a new "
        "history entry (action 'rollback'); history is never rewritten. DIGEST may be "
        "shortened to a unique prefix of a digest in the tag's history.",
    )
    rollback.add_argument("reference", metavar="REPO:TAG")
    rollback.add_argument("digest", metavar="DIGEST")
    rollback.add_argument("--json", action="store_true", help="print the new history entry as JSON")
    add_registry_options(rollback)
    rollback.set_defaults(func=lambda a: run_command(_rollback, a))

    immutable = sub.add_parser(
        "immutable",
        help="show or set a repository's immutable tag patterns",
        description="Tags matching a pattern (fnmatch: * ? [...]; '*' for every tag) can be "
        "created but never moved to another digest or deleted. --pattern replaces the "
        "repository's patterns; --off removes them; without either, show them.",
    )
    immutable.add_argument("repository", metavar="REPO")
    change = immutable.add_mutually_exclusive_group()
    change.add_argument(
        "--pattern",
        dest="patterns",
        action="append",
        metavar="P",
        help="an immutable tag pattern (repeat for several; replaces the current ones)",
    )
    change.add_argument("--off", action="store_true", help="remove every pattern (no tag is immutable)")
    immutable.add_argument("--show", action="store_true", help="show the patterns (the default)")
    immutable.add_argument("--json", action="store_true", help="print the rule as JSON")
    add_registry_options(immutable)
    immutable.set_defaults(func=lambda a: run_command(_immutable, a))
