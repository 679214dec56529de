"""``hareg status`` and ``hareg read-only``: a running registry's conditions and its
cluster-wide read-only switch (see docs/operations.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hareg.cli.client import add_registry_options, call, remote, run_command

# Exit code of ``hareg status`` when the registry answered but is not Available.
NOT_AVAILABLE = 3


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip() for r in rows]


def format_status(base: str, doc: dict[str, Any]) -> str:
    read_only = doc.get("readOnly") or {}
    if read_only.get("readOnly"):
        sources = [name for name in ("cluster", "config") if read_only.get(name)]
        mode = f"read-only ({' and '.join(sources)})"
    else:
        mode = "read-write"
    limits = doc.get("requests") or {}

    def limit(kind: str) -> str:
        lim = limits.get(kind) or {}
        if not lim.get("maxRunning"):
            return f"{kind} unlimited"
        return (
            f"{kind} {lim.get('running', 0)}/{lim['maxRunning']} running, "
            f"{lim.get('queued', 0)}/{lim.get('maxInQueue', 0)} queued"
        )

    lines = [
        f"Registry:   {base}",
        f"Replica:    {doc.get('replica')} (managementState {doc.get('managementState')}, {mode})",
        f"Requests:   {limit('read')}; {limit('write')}",
        "",
    ]
    conditions = doc.get("conditions") or []
    lines += _table(
        [["CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"]]
        + [
            [c["type"], c["status"], c["reason"], c.get("lastTransitionTime", ""), c.get("message", "")]
            for c in conditions
        ]
    )
    return "\n".join(lines)


def _available(doc: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Available" and c.get("status") == "True" for c in doc.get("conditions") or []
    )


def _status(args: argparse.Namespace) -> int:
    base = remote(args)
    _, doc = call(base, "GET", "/hareg/v1/status")
    if not isinstance(doc, dict):
        print(f"hareg status: {base} gave no status document; is this a hareg registry?", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else format_status(str(base), doc))
    return 0 if _available(doc) else NOT_AVAILABLE


def _read_only(args: argparse.Namespace) -> int:
    base = remote(args)
    if args.state == "status":
        _, doc = call(base, "GET", "/hareg/v1/read-only")
    else:
        _, doc = call(base, "PUT", "/hareg/v1/read-only", {"readOnly": args.state == "on"})
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    switch = "on" if doc.get("cluster") else "off"
    state = "read-only" if doc.get("readOnly") else "read-write"
    line = f"cluster read-only switch: {switch}; this replica is {state}"
    if doc.get("config"):
        line += " (its configuration file sets readOnly: true, which the switch cannot override)"
    print(line)
    return 0


def register(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="show a registry's conditions (Available, Progressing, Degraded)",
        description="Show the conditions of the replica behind --registry. Exit status: 0 Available, "
        f"{NOT_AVAILABLE} not Available, 1 unreachable.",
    )
    add_registry_options(status)
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.set_defaults(func=lambda a: run_command(_status, a))

    read_only = sub.add_parser(
        "read-only",
        help="switch the whole cluster to read-only mode and back",
        description="on: every replica refuses pushes, mounts, deletes and tag changes (pulls go on); "
        "off: the switch is cleared (a replica whose file sets readOnly stays read-only); "
        "status: show the switch.",
    )
    read_only.add_argument("state", choices=("on", "off", "status"))
    add_registry_options(read_only)
    read_only.add_argument("--json", action="store_true", help="print the answer as JSON")
    read_only.set_defaults(func=lambda a: run_command(_read_only, a))
