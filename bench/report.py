"""Writing a throughput run down: the JSON, a Markdown table beside it and PNG
plots (matplotlib, Agg backend) beside that.

``write(doc, json_path)`` writes ``FILE.json``, ``FILE.md``,
``FILE-throughput.png``, ``FILE-latency.png`` and ``FILE-resources.png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.throughput import BLOB_PHASES, CEILING_PHASES, COMPANION_PHASES, PHASES, iter_phase_rows

PHASE_LABELS = {
    "push": "blob push, monolithic",
    "push_chunked": "blob push, chunked",
    "pull": "blob pull",
    "manifest_put": "manifest PUT",
    "manifest_get_tag": "manifest GET by tag",
    "manifest_get_digest": "manifest GET by digest",
    "head_blob": "HEAD blob",
    "tag_list": "tag list",
    "mount": "cross-repo mount",
    "wrk_manifest_get_tag": "manifest GET by tag (wrk)",
}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _figure(phase: str, s: dict[str, Any]) -> tuple[float, str]:
    if phase in BLOB_PHASES:
        return float(s["mb_s"]), "MB/s"
    return float(s["ops_s"]), "ops/s"


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# Throughput, {doc['started_at']}{' (quick)' if doc.get('quick') else ''}",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['mem_total_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}. Run took {doc.get('elapsed_s')} s.",
        "",
    ]
    ratio_key = doc.get("ratios_target")
    base = doc.get("baseline")
    ratio_table: dict[str, Any] = doc.get("ratios_by_target", {})
    header = "| phase | target | figure | p50 ms | p99 ms | server CPU s | CPU ms/op | server peak RSS MB | errors |"
    lines += [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for phase, name, s in iter_phase_rows(doc):
        value, unit = _figure(phase, s)
        lines.append(
            f"| {PHASE_LABELS.get(phase, phase)} | {name} | {_fmt(value)} {unit} | {_fmt(s.get('p50_ms'), 2)} | "
            f"{_fmt(s.get('p99_ms'), 2)} | {_fmt(s.get('server_cpu_s'), 2)} | "
            f"{_fmt(s.get('server_cpu_ms_per_op'), 3)} | {_fmt(s.get('server_peak_rss_mb'))} | {s.get('errors', 0)} |"
        )
    if ratio_table and base:
        lines += _ratio_section(f"Ratios (hareg target / {base})", ratio_table)
        if ratio_key:
            lines += ["", f"Top-level `ratios` are those of `{ratio_key}`."]
    cluster_table: dict[str, Any] = doc.get("ratios_cluster_by_target", {})
    cluster_base = doc.get("cluster_baseline")
    if cluster_table and cluster_base:
        lines += _ratio_section(f"Cluster ratios (hareg-cluster / {cluster_base})", cluster_table)
        lines += ["", f"Largest replica process: {_fmt(doc.get('cluster_replica_peak_rss_mb'))} MB."]
    raw = doc.get("storage_raw")
    if raw:
        lines += [
            "",
            f"The object store of {raw.get('target')} on its own (obstore, the push blobs): "
            + (
                f"PUT {_fmt(raw.get('put_mb_s'))} MB/s, GET {_fmt(raw.get('get_mb_s'))} MB/s."
                if "error" not in raw
                else f"failed: {raw['error']}"
            ),
        ]
    lines += _ceiling_section(doc)
    lines += _auth_section(doc)
    lines += ["", "## Peak RSS by role over the run (MB; largest single process in brackets)", ""]
    for name, t in doc["targets"].items():
        roles = t.get("peak_rss_mb_by_role", {})
        single = t.get("max_process_peak_rss_mb_by_role", {})
        parts = [f"{r} {_fmt(v)} ({_fmt(single.get(r))})" for r, v in roles.items()]
        lines.append(f"- {name}: " + (", ".join(parts) if parts else "not measured (external URL)"))
    checks = doc.get("target_checks", [])
    if checks:
        lines += ["", "## Targets", "", "| target | check | value | met |", "|---|---|---:|---|"]
        for c in checks:
            met = {True: "met", False: "**missed**", None: "n/a"}[c["met"]]
            lines.append(f"| {c['target']} | {c['check']} | {_fmt(c['value'], 2)} | {met} |")
    failed = doc.get("failed_targets", {})
    if failed:
        lines += ["", "## Targets that did not run", ""]
        lines += [f"- {n}: {msg.splitlines()[0] if msg else ''}" for n, msg in failed.items()]
    return "\n".join(lines) + "\n"


# The columns of a ratio table: (header, the figure's key for a phase and its throughput key).
Column = tuple[str, Callable[[str, str], str]]
_THROUGHPUT: Column = ("throughput", lambda phase, key: key)
_P99: Column = ("p99", lambda phase, key: f"{phase}_p99_ms")
_CPU: Column = ("CPU/op", lambda phase, key: f"{phase}_server_cpu_ms_per_op")


def _ratio_section(
    title: str,
    table: dict[str, Any],
    phases: tuple[str, ...] = PHASES,
    columns: tuple[Column, ...] = (_THROUGHPUT, _P99, _CPU),
) -> list[str]:
    """A table of ratios per phase: each column for every target of ``table``."""
    names = list(table)
    header = " | ".join(f"{n} {label}" for label, _ in columns for n in names)
    lines = ["", f"## {title}", "", f"| phase | figure | {header} |"]
    lines.append("|---|---|" + "---:|" * (len(columns) * len(names)))
    for phase in phases:
        key = f"{phase}_mb_s" if phase in BLOB_PHASES else f"{phase}_ops"
        if not any(key in table[n] for n in names):
            continue
        cells = [_fmt(table[n].get(figure(phase, key)), 2) for _, figure in columns for n in names]
        lines.append(f"| {PHASE_LABELS.get(phase, phase)} | {key} | " + " | ".join(cells) + " |")
    return lines


def _ceiling_section(doc: dict[str, Any]) -> list[str]:
    """hareg over the ceiling (bench.ceiling), for the reads the ceiling serves."""
    table: dict[str, dict[str, Any]] = doc.get("ratios_ceiling_by_target", {})
    ceiling = doc.get("ceiling")
    if not table or not ceiling:
        return []
    title = f"Against the ceiling (hareg target / {ceiling}: bare aiohttp + uvloop, fixed bodies)"
    return _ratio_section(title, table, CEILING_PHASES, (_THROUGHPUT, _CPU))


def _auth_section(doc: dict[str, Any]) -> list[str]:
    """``--auth``: how each target authenticated, and the authenticated hareg
    beside the unauthenticated one, phase by phase."""
    auth = doc.get("auth")
    if not auth:
        return []
    lines = [
        "",
        "## Authentication",
        "",
        f"Users {', '.join(auth['users'])} (bcrypt cost {auth['bcrypt_cost']}) on every target; "
        f"hareg tokens live {auth['token_expiry_s']:g} s.",
        "",
    ]
    for name, t in doc["targets"].items():
        d = t["details"]
        fetches = d.get("auth_token_fetches")
        lines.append(
            f"- {name}: auth `{d.get('auth', '-')}`, `/v2/` without credentials answered "
            f"{d.get('anonymous_v2_status', '-')}"
            + (f", {fetches} tokens fetched" if fetches is not None else "")
        )
    for name, plain in doc.get("unauthenticated_targets", {}).items():
        table = doc.get("auth_ratios", {}).get(name, {})
        lines += [
            "",
            f"| phase | {name} (auth) | {name} (no auth) | auth / no auth | p99 ms auth / no auth "
            "| server CPU ms/op auth / no auth |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for phase in COMPANION_PHASES:
            a = doc["targets"][name]["phases"].get(phase, {})
            b = plain["phases"].get(phase, {})
            if "ops_s" not in a or "ops_s" not in b:
                continue
            lines.append(
                f"| {PHASE_LABELS.get(phase, phase)} | {_fmt(a['ops_s'])} ops/s | {_fmt(b['ops_s'])} ops/s | "
                f"{_fmt(table.get(f'{phase}_ops'), 2)} | {_fmt(a.get('p99_ms'), 2)} / {_fmt(b.get('p99_ms'), 2)} | "
                f"{_fmt(a.get('server_cpu_ms_per_op'), 3)} / {_fmt(b.get('server_cpu_ms_per_op'), 3)} |"
            )
    return lines


def plots(doc: dict[str, Any], stem: Path) -> list[Path]:
    """Three PNGs beside ``stem``: throughput, latency and server resources per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["targets"])
    phases = [
        p
        for p in PHASES
        if any(p in doc["targets"][n]["phases"] and "ops_s" in doc["targets"][n]["phases"][p] for n in names)
    ]
    if not names or not phases:
        return []
    colors = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(names)}
    written: list[Path] = []

    def summary(name: str, phase: str) -> dict[str, Any]:
        s = doc["targets"][name]["phases"].get(phase, {})
        return s if "ops_s" in s else {}

    # Throughput: one panel per phase (units differ).
    cols = 4
    rows = math.ceil(len(phases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, phase in zip(axes.flat, phases, strict=False):
        values = [(_figure(phase, summary(n, phase))[0] if summary(n, phase) else 0.0) for n in names]
        ax.bar(range(len(names)), values, color=[colors[n] for n in names])
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(PHASE_LABELS.get(phase, phase), fontsize=9)
        ax.set_ylabel("MB/s" if phase in BLOB_PHASES else "ops/s", fontsize=8)
    for ax in list(axes.flat)[len(phases) :]:
        ax.axis("off")
    fig.suptitle("Throughput per phase (higher is better)")
    written.append(_save(fig, stem, "throughput"))

    # Latency: p50 and p99 per phase, grouped by target, log scale.
    fig, ax = plt.subplots(figsize=(min(16, max(8, 1.2 * len(phases) * len(names))), 4.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        xs = [j + i * width for j in range(len(phases))]
        p99 = [summary(n, p).get("p99_ms") or 0.0 for p in phases]
        p50 = [summary(n, p).get("p50_ms") or 0.0 for p in phases]
        ax.bar(xs, p99, width, color=colors[n], alpha=0.45, label=f"{n} p99")
        ax.bar(xs, p50, width, color=colors[n], label=f"{n} p50")
    _phase_ticks(ax, phases, width)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log)")
    ax.legend(fontsize=7, ncol=len(names))
    ax.set_title("Latency per operation (lower is better)")
    written.append(_save(fig, stem, "latency"))

    # Server resources: CPU ms per operation and peak RSS per phase.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
    for i, n in enumerate(names):
        xs = [j + i * width for j in range(len(phases))]
        for ax, key in ((ax1, "server_cpu_ms_per_op"), (ax2, "server_peak_rss_mb")):
            ax.bar(xs, [summary(n, p).get(key) or 0.0 for p in phases], width, color=colors[n], label=n)
    for ax, title in ((ax1, "server CPU ms per operation (log)"), (ax2, "server peak RSS, MB (all roles)")):
        _phase_ticks(ax, phases, width)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    ax1.set_yscale("log")
    written.append(_save(fig, stem, "resources"))
    return written


def _phase_ticks(ax: Any, phases: list[str], width: float) -> None:
    """One label per phase, under the middle of its group of bars."""
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(phases))],
        [PHASE_LABELS.get(p, p) for p in phases],
        rotation=25,
        ha="right",
        fontsize=8,
    )


def _save(fig: Any, stem: Path, what: str) -> Path:
    """Lay ``fig`` out, write it as STEM-WHAT.png and free it; the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = stem.with_name(f"{stem.name}-{what}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(doc: dict[str, Any], json_path: Path, *, with_plots: bool = True) -> list[Path]:
    """Write the JSON, the Markdown table and (optionally) the plots; the paths written."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    stem = json_path.with_suffix("")
    md = stem.with_suffix(".md")
    md.write_text(markdown(doc))
    written = [json_path, md]
    if with_plots:
        written += plots(doc, stem)
    return written
