"""``python -m bench throughput [--target hareg|hareg-cluster|distribution|distribution-cluster|ceiling|URL ...] [--quick] [--auth] [--json FILE]``
``python -m bench availability [--duration S] [--quick] [--json FILE]``
``python -m bench scale [--manifests N] [--repositories R] [--json FILE]``

``throughput`` without ``--target`` runs distribution, hareg, the ceiling
(bare aiohttp + uvloop, the reads only) and (when ``hareg cluster up`` exists)
distribution-cluster and hareg-cluster; with ``--quick``, distribution, hareg and the ceiling; with
``--auth``, distribution and hareg, both authenticating the
same users (hareg with tokens, distribution with htpasswd), beside an
unauthenticated hareg for the manifest reads.  ``availability`` runs the local cluster through faults.
``scale`` grows one ``hareg serve`` to N small images and reports what each costs (bench/scale.py).
Progress bars go to stderr; the Markdown summary is printed at the end and
written beside the JSON with the plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.blobs import MiB
from bench.targets import (
    AUTH_KINDS,
    TargetError,
    TargetSpec,
    cluster_available,
    distribution_available,
    parse_target,
)
from bench.users import BCRYPT_COST
from bench.workload import NoProgress, Progress

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "throughput.json"
DEFAULT_AVAILABILITY_JSON = RESULTS / "availability.json"
UNITS = {"": 1, "B": 1, "K": 1024, "KIB": 1024, "M": MiB, "MIB": MiB, "G": 1024 * MiB, "GIB": 1024 * MiB}


def parse_size(text: str) -> int:
    """``4MiB``, ``512K``, ``1048576`` -> bytes."""
    t = text.strip().upper()
    digits = t.rstrip("KMGIB")
    unit = t[len(digits) :]
    if not digits.isdigit() or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: expected e.g. 512K, 4MiB, 1G")
    return int(digits) * UNITS[unit]


def parse_blob_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``1MiB:64,32MiB:8`` -> ((1 MiB, 64), (32 MiB, 8))."""
    out = []
    for part in text.split(","):
        size, sep, count = part.partition(":")
        if not sep or not count.strip().isdigit():
            raise argparse.ArgumentTypeError(f"bad blob size {part!r}: expected SIZE:COUNT, e.g. 4MiB:16")
        out.append((parse_size(size), int(count)))
    return tuple(out)


def _target(text: str) -> TargetSpec:
    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _progress_factory(enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return lambda desc, total, unit: NoProgress()
    from tqdm import tqdm

    def make(desc: str, total: float, unit: str) -> Progress:
        bar: Progress = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=unit == "B",
            unit_divisor=1024 if unit == "B" else 1000,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.25,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}]"
            if unit == "s"
            else None,
        )
        return bar

    return make


def _json_argument(p: argparse.ArgumentParser, default: Path, beside: str) -> None:
    p.add_argument(
        "--json",
        type=Path,
        default=default,
        metavar="FILE",
        help=f"where to write the JSON ({beside} beside it; default {default})",
    )


def _storage_argument(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    p.add_argument(
        flag,
        choices=("auto", "seaweedfs", "filesystem"),
        default="auto",
        help=f"{what} blob storage; auto tries SeaweedFS, then a shared directory",
    )


def _run_arguments(p: argparse.ArgumentParser, *, starting: str, plots: str) -> None:
    """The flags every command ends with: how long starting may take, progress bars, plots."""
    p.add_argument("--start-timeout", type=float, default=120.0, help=f"seconds {starting} may take to start")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--no-plots", dest="plots", action="store_false", help=plots)


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named flags' values that are not None, by name: each flag's dest is the
    name of the option field it sets, and None leaves the field's default."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def throughput_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "throughput", help="blob and manifest throughput, hareg side by side with distribution"
    )
    p.add_argument(
        "--target",
        action="append",
        type=_target,
        metavar="hareg|hareg-cluster|distribution|distribution-cluster|ceiling|URL",
        help="a target to run (repeatable); default: distribution, hareg, ceiling, distribution-cluster "
        "and hareg-cluster (--quick: distribution, hareg and ceiling); ceiling is bare aiohttp + uvloop "
        "answering the read routes with fixed bodies (bench/ceiling.py); distribution-cluster is two "
        "distribution registries on one SeaweedFS bucket behind haproxy",
    )
    p.add_argument("--quick", action="store_true", help="a small workload (under 90 s on 2 cores)")
    _json_argument(p, DEFAULT_JSON, "Markdown and PNGs")
    p.add_argument(
        "--blob-sizes",
        type=parse_blob_sizes,
        metavar="SIZE:COUNT,...",
        help="blobs per push phase, e.g. 1MiB:64,32MiB:8",
    )
    p.add_argument("--chunk-size", type=parse_size, help="PATCH size of chunked pushes (default 4MiB)")
    p.add_argument("--concurrency", type=int, help="concurrent blob operations (default 4)")
    p.add_argument(
        "--request-concurrency", type=int, help="concurrent manifest/HEAD/tag/mount requests (default 16)"
    )
    p.add_argument("--manifests", type=int, help="manifests PUT (and tags) per target")
    p.add_argument("--mounts", type=int, help="cross-repo mounts per target")
    p.add_argument("--duration", type=float, help="seconds per read phase")
    p.add_argument("--pull-rounds", type=int, help="times each pushed blob is pulled")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", default=None, help="skip the wrk phase")
    p.add_argument("--wrk-duration", type=float, help="seconds of wrk")
    p.add_argument("--wrk-connections", type=int, help="wrk connections (default 32)")
    p.add_argument("--wrk-threads", type=int, help="wrk threads (default 1)")
    p.add_argument("--seed", type=int, help="seed of the blob contents")
    p.add_argument("--cluster-replicas", type=int, default=2, help="hareg-cluster replicas (default 2)")
    _storage_argument(p, "--cluster-storage", "hareg-cluster")
    p.add_argument(
        "--auth",
        action="store_true",
        help="both targets authenticate the same htpasswd users (hareg: token flow; distribution: "
        "Basic), and an unauthenticated hareg runs the manifest phases beside the authenticated one "
        f"(targets: {', '.join(AUTH_KINDS)})",
    )
    p.add_argument(
        "--bcrypt-cost",
        type=int,
        default=BCRYPT_COST,
        help=f"bcrypt cost of the --auth users' htpasswd entries (default {BCRYPT_COST}, htpasswd -B's)",
    )
    p.add_argument(
        "--token-expiry",
        type=float,
        default=300.0,
        help="seconds hareg's tokens live in an --auth run (default 300, hareg's default; "
        "must exceed the wrk duration by 10 s)",
    )
    _run_arguments(p, starting="a target", plots="no PNG plots")


def default_targets(quick: bool, auth: bool = False) -> list[TargetSpec]:
    specs = []
    if distribution_available():
        specs.append(parse_target("distribution"))
    specs.append(parse_target("hareg"))
    if not auth:
        specs.append(parse_target("ceiling"))
    if not quick and not auth and cluster_available():
        if distribution_available():
            specs.append(parse_target("distribution-cluster"))
        specs.append(parse_target("hareg-cluster"))
    return specs


def run_throughput(args: argparse.Namespace) -> int:
    from bench import report
    from bench.throughput import Options, Workload, run, with_overrides

    base = Workload.quick() if args.quick else Workload()
    workload = with_overrides(
        base,
        blob_sizes=args.blob_sizes,
        chunk_size=args.chunk_size,
        concurrency=args.concurrency,
        request_concurrency=args.request_concurrency,
        manifests=args.manifests,
        mounts=args.mounts,
        duration=args.duration,
        pull_rounds=args.pull_rounds,
        wrk=args.wrk,
        wrk_duration=args.wrk_duration if args.wrk_duration is not None else args.duration,
        wrk_connections=args.wrk_connections,
        wrk_threads=args.wrk_threads,
        seed=args.seed,
    )
    targets = tuple(args.target or default_targets(args.quick, args.auth))
    if args.auth:
        problem = auth_problem(targets, args.bcrypt_cost, args.token_expiry, workload.wrk_duration)
        if problem:
            print(f"python -m bench throughput: {problem}", file=sys.stderr)
            return 2
    options = Options(
        targets=targets,
        workload=workload,
        **_given(
            args,
            "quick",
            "cluster_replicas",
            "cluster_storage",
            "start_timeout",
            "auth",
            "bcrypt_cost",
            "token_expiry",
        ),
    )
    doc = run(
        options, _progress_factory(args.progress), log=lambda msg: print(msg, file=sys.stderr, flush=True)
    )
    written = report.write(doc, args.json, with_plots=args.plots)
    print(report.markdown(doc))
    print("written: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if doc["targets"] and not doc["failed_targets"] else 1


def auth_problem(targets: tuple[TargetSpec, ...], bcrypt_cost: int, token_expiry: float, wrk_s: float) -> str:
    """What is wrong with an --auth run's options ("" if nothing)."""
    other = [t.name for t in targets if t.kind not in AUTH_KINDS]
    if other:
        return f"--auth runs only {' and '.join(AUTH_KINDS)} targets, not {', '.join(other)}"
    if not 4 <= bcrypt_cost <= 31:
        return f"--bcrypt-cost {bcrypt_cost}: bcrypt allows 4 to 31"
    if token_expiry < wrk_s + 10:
        return (
            f"--token-expiry {token_expiry:g}: wrk sends one token for its whole run, "
            f"so it must be at least the wrk duration + 10 s ({wrk_s + 10:g})"
        )
    return ""


def availability_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("availability", help="a mixed workload on the local cluster while its processes die")
    p.add_argument("--duration", type=float, help="seconds of workload (default 180; --quick 45)")
    p.add_argument("--quick", action="store_true", help="a short run (under 90 s on 2 cores)")
    _json_argument(p, DEFAULT_AVAILABILITY_JSON, "Markdown and PNG")
    p.add_argument("--concurrency", type=int, help="concurrent workers (default 6; --quick 4)")
    p.add_argument("--replicas", type=int, default=3, help="cluster replicas (default 3)")
    _storage_argument(p, "--storage", "cluster")
    p.add_argument("--seed", type=int, default=1, help="seed of the workload's choices and contents")
    p.add_argument(
        "--no-partitions",
        action="store_true",
        help="leave out the partition faults (iptables rules on loopback; they need root)",
    )
    p.add_argument(
        "--faults",
        default="",
        metavar="KIND,...",
        help="only these fault kinds, in the usual order (default: all; e.g. etcd_member_partition)",
    )
    p.add_argument(
        "--plant",
        default="",
        metavar="NAME",
        help="FOR TESTING: switch a planted bug on in the replicas (hareg/plants.py), to show the "
        "history check catches it; e.g. cache-keeps-moved-tag",
    )
    _run_arguments(p, starting="the cluster", plots="no PNG timeline")


def run_availability(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bench import availability_report
    from bench.availability import AvailabilityOptions, run

    base = AvailabilityOptions.quick_options() if args.quick else AvailabilityOptions()
    options = replace(
        base,
        **_given(args, "duration", "concurrency", "replicas", "storage", "seed", "start_timeout"),
        partitions=not args.no_partitions,
        plant=args.plant,
        faults=tuple(args.faults.split(",")) if args.faults else (),
    )
    if args.faults:
        from bench.faults import FAULT_ORDER

        unknown = [k for k in options.faults if k not in FAULT_ORDER]
        if unknown:
            print(
                f"bench: --faults: unknown {', '.join(unknown)}; known: {', '.join(FAULT_ORDER)}",
                file=sys.stderr,
            )
            return 2
    if args.plant:
        from hareg.plants import DESCRIPTIONS

        if args.plant not in DESCRIPTIONS:
            print(
                f"bench: --plant {args.plant!r}: unknown; known: {', '.join(sorted(DESCRIPTIONS))}",
                file=sys.stderr,
            )
            return 2
    try:
        doc = run(
            options, _progress_factory(args.progress), log=lambda msg: print(msg, file=sys.stderr, flush=True)
        )
    except (TargetError, RuntimeError) as exc:
        print(f"bench: availability run failed: {exc}", file=sys.stderr)
        return 2
    written = availability_report.write(doc, args.json, with_plots=args.plots)
    print(availability_report.markdown(doc))
    print("written: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if doc["verdict"] == "pass" else 1


def scale_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bench.scale import DEFAULT_JSON as SCALE_JSON
    from bench.scale import ScaleOptions

    d = ScaleOptions()
    p = sub.add_parser("scale", help="grow one hareg serve to N small images: memory, etcd bytes, latency")
    p.add_argument(
        "--manifests", type=int, default=d.manifests, help=f"images at the end (default {d.manifests})"
    )
    p.add_argument("--repositories", type=int, default=d.repositories, help=f"default {d.repositories}")
    p.add_argument(
        "--steps", type=int, default=d.steps, help=f"sizes measured on the way (default {d.steps})"
    )
    p.add_argument("--reads", type=int, default=d.reads, help=f"GET-by-tag requests per measure ({d.reads})")
    p.add_argument("--hot", type=int, default=d.hot, help=f"the hot set: the last images pushed ({d.hot})")
    p.add_argument(
        "--concurrency", type=int, default=d.concurrency, help=f"pushes in flight ({d.concurrency})"
    )
    p.add_argument(
        "--read-concurrency",
        type=int,
        default=d.read_concurrency,
        help=f"reads in flight ({d.read_concurrency})",
    )
    p.add_argument(
        "--cache-bytes", type=parse_size, help="the replica's limits.manifestCacheBytes (default: hareg's)"
    )
    p.add_argument("--no-fresh-replica", dest="fresh_replica", action="store_false")
    p.add_argument("--start-timeout", type=float, default=d.start_timeout)
    _json_argument(p, SCALE_JSON, "Markdown")


def run_scale(args: argparse.Namespace) -> int:
    import tempfile

    from bench.scale import ScaleOptions, main_scale

    if args.manifests < 1 or args.repositories < 1 or args.steps < 2 or args.reads < 1 or args.hot < 1:
        print(
            "bench scale: --manifests, --repositories, --reads, --hot >= 1 and --steps >= 2", file=sys.stderr
        )
        return 2
    options = ScaleOptions(
        manifests=args.manifests,
        repositories=args.repositories,
        concurrency=args.concurrency,
        read_concurrency=args.read_concurrency,
        reads=args.reads,
        hot=args.hot,
        steps=args.steps,
        cache_bytes=args.cache_bytes,
        fresh_replica=args.fresh_replica,
        start_timeout=args.start_timeout,
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as workdir:
        return main_scale(options, args.json, Path(workdir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    sub = parser.add_subparsers(dest="command", required=True)
    throughput_parser(sub)
    availability_parser(sub)
    scale_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "availability":
        return run_availability(args)
    if args.command == "scale":
        return run_scale(args)
    return run_throughput(args)


if __name__ == "__main__":
    sys.exit(main())
