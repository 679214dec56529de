"""``hareg fsck``: check that every object in a running registry's blob store
hashes to its digest, and optionally quarantine the damaged ones."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hareg.cli.client import add_registry_options, call, remote, run_command

# Exit code when damaged objects were found and are still in place.
CORRUPT = 3
# A check reads every stored byte: it may take long on a large registry.
DEFAULT_TIMEOUT = 24 * 3600.0


def _counts(report: dict[str, Any]) -> tuple[int, int]:
    """(damaged, quarantined): the counts, which a long list may exceed."""
    corrupt = report["corrupt"]
    counts = report.get("counts") or {}
    total = counts.get("corrupt", len(corrupt))
    quarantined = counts.get("quarantined", sum(bool(c.get("quarantined")) for c in corrupt))
    return int(total), int(quarantined)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; expected a number of seconds > 0")
    return value


def _summary(report: dict[str, Any]) -> str:
    corrupt = report["corrupt"]
    total, quarantined = _counts(report)
    head = f"fsck checked {report.get('checked', 0)} objects in the blob store: "
    if not total:
        return head + "all match their digests"
    head += f"{total} damaged"
    if report.get("repair"):
        head += f", {quarantined} quarantined (push them again to restore them)"
    else:
        head += " (run with --repair to quarantine them)"
    lines = [head]
    for c in corrupt:
        state = "quarantined" if c.get("quarantined") else (c.get("note") or "left in place")
        lines.append(f"  {c['digest']}  {c['reason']}  [{state}]")
    if total > len(corrupt):
        lines.append(f"  ... and {total - len(corrupt)} more (the registry's log names each one)")
    return "\n".join(lines)


def _fsck(args: argparse.Namespace) -> int:
    base = remote(args)
    query = "?repair=true" if args.repair else ""
    _, report = call(base, "POST", f"/hareg/v1/fsck{query}", timeout=args.timeout)
    if not isinstance(report, dict) or not isinstance(report.get("corrupt"), list):
        print(f"hareg fsck: {base} gave no fsck report; is this a hareg registry?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_summary(report))
    total, quarantined = _counts(report)
    return CORRUPT if total > quarantined else 0


def register(sub: Any) -> None:
    fsck = sub.add_parser(
        "fsck",
        help="check that every stored blob and manifest body hashes to its digest",
        description="Read every object in the registry's blob store, re-hash it and report those whose "
        "bytes do not match their digest. --repair quarantines them (pulls then fail with BLOB_UNKNOWN "
        "or MANIFEST_UNKNOWN until an honest push restores them). Exit status: 0 nothing damaged (or "
        f"all quarantined), {CORRUPT} damaged objects left in place, 1 the registry refused or could "
        "not be reached.",
    )
    fsck.add_argument("--repair", action="store_true", help="quarantine damaged objects")
    fsck.add_argument("--json", action="store_true", help='print the report as JSON: {"checked", "corrupt"}')
    add_registry_options(fsck)
    fsck.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the check to finish (default {DEFAULT_TIMEOUT:.0f})",
    )
    fsck.set_defaults(func=lambda a: run_command(_fsck, a))
