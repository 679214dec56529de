"""The ``hareg`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hareg import __version__


def _serve(args: argparse.Namespace) -> int:
    from hareg.config.model import ConfigError
    from hareg.config.reader import load_config
    from hareg.kv.base import KVError
    from hareg.observability.logs import setup_logging
    from hareg.processes.etcd import EtcdError
    from hareg.server.serve import ServeOptions, StartupError, serve

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"hareg: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    from hareg.plants import from_environment, planting

    try:
        plants = from_environment(os.environ)
    except ValueError as exc:
        print(f"hareg: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    if plants:
        import logging

        logging.getLogger("hareg").warning(
            "PLANTED BUGS switched on (HAREG_TEST_PLANTS, for tests only): %s", ", ".join(sorted(plants))
        )
    endpoints = tuple(e for e in (args.etcd_endpoints or "").split(",") if e) or config.etcd.endpoints
    options = ServeOptions(
        config=config,
        data_dir=Path(args.data_dir).resolve(),
        listen=args.listen or config.listen,
        etcd_endpoints=endpoints,
        etcd_binary=args.etcd_binary,
        replica=args.replica,
        config_path=args.config,
    )

    def ready(url: str) -> None:
        print(f"hareg registry listening on {url}", flush=True)

    try:
        import uvloop

        with planting(plants):  # none unless HAREG_TEST_PLANTS asks (tests only)
            uvloop.run(serve(options, ready))
    except (StartupError, EtcdError) as exc:
        print(f"hareg: {exc}", file=sys.stderr)
        return 1
    except KVError as exc:
        print(
            f"hareg: cannot reach etcd at {', '.join(endpoints) or 'the embedded member'}: {exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _config_validate(args: argparse.Namespace) -> int:
    from hareg.config.model import ConfigError
    from hareg.config.reader import load_config

    try:
        load_config(args.file, os.environ)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.errors)} problem(s):\n{exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid")
    return 0


def _config_defaults(args: argparse.Namespace) -> int:
    from hareg.config.render import defaults_yaml

    print(defaults_yaml(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hareg", description="A highly available OCI container image registry."
    )
    parser.add_argument("--version", action="version", version=f"hareg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one registry replica")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default: config 'listen', 127.0.0.1:5000)")
    serve.add_argument(
        "--data-dir",
        default=os.environ.get("HAREG_DATA_DIR", "hareg-data"),
        help="directory for the embedded etcd and filesystem blobs (default: ./hareg-data)",
    )
    serve.add_argument("--config", help="YAML configuration file")
    serve.add_argument(
        "--etcd-endpoints",
        help="comma-separated etcd client URLs; without them a private etcd child process is started",
    )
    serve.add_argument("--etcd-binary", help="etcd executable for the embedded member (default: from PATH)")
    serve.add_argument("--replica", help="this replica's name (default: HOST:PORT)")
    serve.set_defaults(func=_serve)

    config = sub.add_parser("config", help="check or print the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    validate = config_sub.add_parser("validate", help="report every problem in a configuration file")
    validate.add_argument("file")
    validate.set_defaults(func=_config_validate)
    defaults = config_sub.add_parser("defaults", help="print the default configuration as YAML")
    defaults.set_defaults(func=_config_defaults)

    from hareg.cluster.cli import register as register_cluster

    register_cluster(sub)

    from hareg.cli.lifecycle import register as register_lifecycle

    register_lifecycle(sub)
    from hareg.cli.prune import register as register_prune

    register_prune(sub)
    from hareg.cli.fsck import register as register_fsck

    register_fsck(sub)
    from hareg.cli.ops import register as register_ops

    register_ops(sub)
    from hareg.cli.access import register as register_access

    register_access(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
