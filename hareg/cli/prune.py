"""``hareg prune``: run the pruner once on a running registry (or see what it would delete)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from hareg.cli.client import add_registry_options, call, remote, run_command


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _summary(report: dict[str, Any]) -> str:
    c = report["counts"]
    verb = "would delete" if report["dryRun"] else "deleted"
    scope = f" in {', '.join(report['repositories'])}" if report.get("repositories") else ""
    lines = [
        f"pruner {verb}{scope} (at etcd revision {report['revision']}):",
        f"  tag history entries  {c['historyEntries']}",
        f"  manifests            {c['manifests']}",
        f"  blob links           {c['links']}",
        f"  blobs                {c['blobs']}  ({_human(c['bytes'])})",
        f"  upload stagings      {c['uploads']}",
    ]
    if c.get("skipped"):
        lines.append(f"  skipped (changed during the run; next run retries)  {c['skipped']}")
    return "\n".join(lines)


def _prune(args: argparse.Namespace) -> int:
    base = remote(args)
    query = "?dryRun=true" if args.dry_run else ""
    path = "/hareg/v1/prune"
    if args.repository:
        path = f"/hareg/v1/repositories/{urllib.parse.quote(args.repository, safe='/')}/prune"
    _, report = call(base, "POST", f"{path}{query}")
    print(json.dumps(report, indent=2) if args.json else _summary(report))
    return 0


def register(sub: Any) -> None:
    prune = sub.add_parser("prune", help="run the pruner (garbage collection) once")
    prune.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    prune.add_argument("--json", action="store_true", help="print the full report as JSON")
    prune.add_argument(
        "--repository",
        metavar="NAME",
        help="prune only this repository (its admins may; the whole registry needs cluster-admin)",
    )
    add_registry_options(prune)
    prune.set_defaults(func=lambda a: run_command(_prune, a))
