"""``hareg access``: grants, revokes and robot accounts of a running registry
(cluster-admins only; see docs/security.md).

A grant or revoke is in force on every replica when the command returns.
A robot account's secret is printed once, by ``robot create``: the registry
keeps only its hash.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from hareg.cli.client import CliError, add_registry_options, call, remote, run_command

GRANTS = "/hareg/v1/access/grants"
ROBOTS = "/hareg/v1/access/robots"
ROLES = ("viewer", "editor", "admin", "cluster-admin")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _grant(args: argparse.Namespace) -> int:
    body = {"subject": args.subject, "role": args.role, "pattern": args.pattern}
    status, _ = call(remote(args), "POST", GRANTS, body)
    already = " (it was already granted)" if status == 200 else ""
    print(f"granted {args.role} on {args.pattern} to {args.subject}{already}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({"subject": args.subject, "role": args.role, "pattern": args.pattern})
    call(remote(args), "DELETE", f"{GRANTS}?{query}")
    print(f"revoked {args.role} on {args.pattern} from {args.subject}")
    return 0


def _list(args: argparse.Namespace) -> int:
    _, doc = call(remote(args), "GET", GRANTS)
    if not isinstance(doc, dict):
        raise CliError("the registry's answer is not a list of grants; is this a hareg registry?")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    rows = [["SUBJECT", "ROLE", "REPOSITORIES", "SOURCE", "BY"]]
    for b in doc.get("configured") or []:
        rows.append([b["subject"], b["role"], ",".join(b["patterns"]) or "*", "config", ""])
    for g in doc.get("grants") or []:
        rows.append([g["subject"], g["role"], g["pattern"], f"granted {g['created']}", g["by"]])
    print(_table(rows))
    return 0


def _robot(args: argparse.Namespace) -> int:
    base = remote(args)
    if args.robot_command == "create":
        _, doc = call(base, "POST", ROBOTS, {"name": args.name})
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(f"robot account {doc['subject']} created; its secret (shown only now, keep it safe):")
            print(doc["secret"])
            print(
                f"grant it a role: hareg access grant {doc['subject']} editor 'REPOSITORY-PATTERN'",
                file=sys.stderr,
            )
        return 0
    if args.robot_command == "delete":
        call(base, "DELETE", f"{ROBOTS}/{urllib.parse.quote(args.name, safe='')}")
        print(f"robot account {args.name} deleted, with its grants")
        return 0
    _, doc = call(base, "GET", ROBOTS)
    robots: list[dict[str, Any]] = (doc or {}).get("robots") or []
    if args.json:
        print(json.dumps(doc, indent=2))
    elif robots:
        print(
            _table(
                [["NAME", "SUBJECT", "CREATED", "BY"]]
                + [[r["name"], r["subject"], r["created"], r["by"]] for r in robots]
            )
        )
    else:
        print("no robot accounts")
    return 0


def register(sub: Any) -> None:
    access = sub.add_parser(
        "access",
        help="grant and revoke roles, manage robot accounts (cluster-admin)",
        description="Manage who may do what on a running registry. Roles: viewer (pull), editor (push, "
        "delete), admin (rollback, immutability rules), cluster-admin (everything). A change is in force "
        "on every replica when the command returns.",
    )
    commands = access.add_subparsers(dest="access_command", required=True)
    for name, fn, what in (
        ("grant", _grant, "bind a role on repositories matching PATTERN to SUBJECT"),
        ("revoke", _revoke, "remove a grant made with `hareg access grant`"),
    ):
        cmd = commands.add_parser(name, help=what, description=what)
        cmd.add_argument("subject", help="a user name, robot+NAME, or anonymous")
        cmd.add_argument("role", choices=ROLES)
        cmd.add_argument("pattern", help="repository glob, such as 'team/*' (cluster-admin: '*')")
        add_registry_options(cmd)
        cmd.set_defaults(func=lambda a, fn=fn: run_command(fn, a))
    listing = commands.add_parser("list", help="the bindings from the configuration and the runtime grants")
    add_registry_options(listing)
    listing.add_argument("--json", action="store_true", help="print the answer as JSON")
    listing.set_defaults(func=lambda a: run_command(_list, a))

    robot = commands.add_parser("robot", help="robot accounts for CI systems")
    robot_commands = robot.add_subparsers(dest="robot_command", required=True)
    for name, what in (
        ("create", "make a robot account and print its secret (once)"),
        ("delete", "delete a robot account and its grants"),
        ("list", "list the robot accounts"),
    ):
        cmd = robot_commands.add_parser(name, help=what, description=what)
        if name != "list":
            cmd.add_argument("name", help="the account's name (it logs in as robot+NAME)")
        add_registry_options(cmd)
        cmd.add_argument("--json", action="store_true", help="print the answer as JSON")
        cmd.set_defaults(func=lambda a: run_command(_robot, a))
