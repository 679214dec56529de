"""Writing an availability run down: the JSON, a Markdown summary beside it and
a PNG timeline (throughput and errors per second, faults shaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.availability import OPS


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,.1f}" if isinstance(v, float) else str(v)


def _lin_line(lin: Any) -> str:
    if lin is None:
        return "history not checked"
    return f"{lin['violations']} linearizability violations in {lin['checked_ops']} checked tag operations"


def _load(v: Any) -> str:
    return "-" if not v else " ".join(f"{x:.2f}" for x in v)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    c = doc.get("cluster", {})
    lines = [
        f"# Availability, {doc['started_at']}{' (quick)' if doc.get('quick') else ''}",
        "",
        f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['mem_total_gib']} GiB. Cluster: "
        f"{c.get('replicas')} replicas, 3 etcd members, storage {c.get('storage')}, haproxy. "
        f"Workload {doc['options']['duration']:.0f} s at concurrency {doc['options']['concurrency']}; "
        f"healed in {doc.get('heal_s')} s; run took {doc.get('elapsed_s')} s.",
        "",
        f"**Verdict: {doc['verdict']}**: {doc['acknowledged_pushes']} acknowledged pushes, "
        f"{doc['lost']} lost, {doc['dangling']} dangling; "
        f"{_lin_line(doc.get('linearizability'))}. Load average before / after: "
        f"{_load(doc.get('load_before'))} / {_load(doc.get('load_after'))}. Partitions: {doc.get('partitions', '-')}."
        + (f" **Planted bug: {doc['options']['plant']}.**" if doc["options"].get("plant") else ""),
        "",
        "| operation | count | success | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in OPS:
        s = doc["operations"][kind]
        lines.append(
            f"| {kind} | {s['count']} | {_pct(s['success_rate'])} | {_num(s['p50_ms'])} | {_num(s['p99_ms'])} |"
        )
    lines += ["", "## Per fault window (from the fault's injection to the next one)", "",
              "| window | at s | op | count | success | ok/s | p99 ms | time to recover s | errors |",
              "|---|---:|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for w in doc["windows"]:
        for kind in OPS:
            s = w["ops"][kind]
            kinds = ", ".join(f"{k} x{n}" for k, n in (s.get("error_kinds") or {}).items())
            lines.append(
                f"| {w['window']} | {w['start_s']} | {kind} | {s['count']} | {_pct(s['success_rate'])} | "
                f"{_num(s.get('ok_per_s'))} | {_num(s['p99_ms'])} | {_num(s.get('time_to_recover_s'))} | {kinds} |"
            )
    lines += ["", "## Faults", ""]
    for f in doc["faults"]:
        extra = f" (skipped: {f['skipped']})" if f.get("skipped") else ""
        lines.append(f"- {f['name']}: injected at {f['injected_at']} s, healed at {f['healed_at']} s, "
                     f"{f['details']}{extra}")  # fmt: skip
    lines += ["", "## Targets", "", "| check | value | met |", "|---|---:|---|"]
    for ch in doc["checks"]:
        value = ch["value"]
        shown = _pct(value) if isinstance(value, float) else _num(value)
        lines.append(
            f"| {ch['check']} | {shown} | {({True: 'met', False: '**missed**', None: 'n/a'})[ch['met']]} |"
        )
    lin = doc.get("linearizability")
    if lin is not None:
        lines += ["", "## History", "",
                  f"{doc['history']['operations']} operations recorded: "
                  + "; ".join(f"{k} {v}" for k, v in doc["history"]["outcomes"].items()) + ".",
                  f"Linearizability (per tag, the simulator's checker): {lin['checked_ops']} operations on "
                  f"{lin['tags']} tags checked, {lin['violations']} violations, {lin['exempt_reads']} reads "
                  f"exempt as stale by design (in {doc['stale_reads']['seconds']} s of stale-read intervals), "
                  f"{lin['inconclusive_tags']} tags inconclusive, {lin['check_s']} s."]  # fmt: skip
        lines += [f"- {e}" for e in lin["examples"]]
    mem = doc.get("memory")
    if mem:
        lines += ["", "## Memory (resident set)", "", "| process | pids | first MiB | last MiB | peak MiB | growth MiB/10 min |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, m in mem.items():
            lines.append(f"| {name} | {len(m['pids'])} | {m['first_mib']} | {m['last_mib']} | {m['peak_mib']} | "
                         f"{_num(m['growth_mib_per_10min'])} |")  # fmt: skip
    v = doc["verification"]
    if v["lost_examples"] or v["dangling_examples"] or v["dangling_check_errors"]:
        lines += ["", "## Verification details", ""]
        lines += [f"- lost {k}: {errs[0]}" for k, errs in v["lost_examples"].items()]
        lines += [f"- dangling {d}" for d in v["dangling_examples"]]
        lines += [f"- dangling check error: {e}" for e in v["dangling_check_errors"]]
    return "\n".join(lines) + "\n"


def timeline_png(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = doc["timeline"]
    xs = list(range(len(t["errors"])))
    fig, ax = plt.subplots(figsize=(14, 5))
    for kind, color in zip(OPS, ("tab:blue", "tab:green", "tab:purple", "tab:brown"), strict=True):
        ax.plot(xs, t[f"{kind}_ok"], label=f"{kind} ok/s", color=color, linewidth=1.2)
    ax.bar(xs, t["errors"], color="tab:red", alpha=0.7, label="errors/s", width=1.0)
    top = max([1] + [max(v) for v in t.values() if v])
    for f in doc["faults"]:
        if f["injected_at"] is None:
            continue
        end = (
            f["healed_at"]
            if f["healed_at"] and f["healed_at"] > f["injected_at"] + 0.5
            else f["injected_at"] + 0.5
        )
        ax.axvspan(f["injected_at"], end, color="orange", alpha=0.25)
        ax.text(f["injected_at"], top * 1.02, f["name"], rotation=30, fontsize=8, va="bottom")
    ax.set_xlabel("seconds since the workload started")
    ax.set_ylabel("operations per second")
    ax.set_ylim(0, top * 1.35)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Availability: {doc['acknowledged_pushes']} acknowledged pushes, {doc['lost']} lost, "
                 f"{doc['dangling']} dangling (faults shaded)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def memory_png(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 5))
    for name, m in doc["memory"].items():
        xs = [p[0] for p in m["series"]]
        ax.plot(xs, [p[1] for p in m["series"]], label=name, linewidth=1.0)
    ax.set_xlabel("seconds since the workload started")
    ax.set_ylabel("resident set, MiB")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_title("Memory of every process of the run")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(doc: dict[str, Any], json_path: Path, *, with_plots: bool = True) -> list[Path]:
    """The JSON, the Markdown beside it, the history as JSON lines and the PNG timelines."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    stem = json_path.with_suffix("")
    written = [json_path]
    history = doc.pop("_history", None)
    if history is not None:
        recorder, t0 = history
        jsonl = recorder.write_jsonl(stem.with_name(stem.name + "-history.jsonl"), t0)
        doc["history"]["file"] = str(jsonl)
        written.append(jsonl)
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md = stem.with_suffix(".md")
    md.write_text(markdown(doc))
    written.append(md)
    if with_plots:
        written.append(timeline_png(doc, stem.with_name(stem.name + "-timeline.png")))
        if doc.get("memory"):
            written.append(memory_png(doc, stem.with_name(stem.name + "-memory.png")))
    return written
