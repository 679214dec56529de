"""A small client for a running registry's JSON API (``/hareg/v1/``), shared by
the CLI commands.

The registry is ``--registry URL``, else ``$HAREG_REGISTRY``, else
http://127.0.0.1:5000.  A registry with authentication (docs/security.md) is
sent Basic credentials: the user from ``--username`` (else
``$HAREG_USERNAME``), the password from standard input with
``--password-stdin`` (else ``$HAREG_PASSWORD``); never from the command
line, where other users of the host could read it.  Failures become ``CliError`` with a one-line message
and an exit code (1: the registry refused or could not be reached; 2: bad usage).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

__all__ = [
    "DEFAULT_REGISTRY",
    "CliError",
    "Remote",
    "add_registry_options",
    "authorization",
    "base_url",
    "call",
    "error_message",
    "remote",
]

DEFAULT_REGISTRY = "http://127.0.0.1:5000"
TIMEOUT = 30.0


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ plumbing


def base_url(args: argparse.Namespace) -> str:
    url: str = args.registry or os.environ.get("HAREG_REGISTRY") or DEFAULT_REGISTRY
    if "://" not in url:
        url = "http://" + url
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CliError(f"--registry {url!r}: expected http://HOST:PORT or https://HOST:PORT", 2)
    return url.rstrip("/")


@dataclass(frozen=True)
class Remote:
    """The registry a command talks to, and the credentials it sends."""

    url: str
    authorization: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.url


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", metavar="URL", help="registry URL (default: $HAREG_REGISTRY or http://127.0.0.1:5000)"
    )
    parser.add_argument("--username", help="log in as this user (default: $HAREG_USERNAME)")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password (or a robot account's secret) from standard input (default: $HAREG_PASSWORD)",
    )


def authorization(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None, stdin: IO[str] | None = None
) -> str | None:
    """Basic credentials from the options or the environment (None: no user given)."""
    env = os.environ if env is None else env
    user = getattr(args, "username", None) or env.get("HAREG_USERNAME")
    from_stdin = bool(getattr(args, "password_stdin", False))
    if not user:
        if from_stdin:
            raise CliError("--password-stdin needs --username (or $HAREG_USERNAME)", 2)
        return None
    if from_stdin:
        password = (stdin or sys.stdin).readline().rstrip("\r\n")
    else:
        password = env.get("HAREG_PASSWORD")
        if password is None:
            if getattr(args, "username", None):
                raise CliError("--username needs --password-stdin (or $HAREG_PASSWORD)", 2)
            return None
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def remote(args: argparse.Namespace) -> Remote:
    return Remote(base_url(args), authorization(args))


def call(
    base: Remote, method: str, path: str, body: Any = None, *, timeout: float = TIMEOUT
) -> tuple[int, Any]:
    """One JSON request; a registry error becomes a CliError with its message."""
    url = base.url + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if base.authorization is not None:
        headers["Authorization"] = base.authorization
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        raise CliError(
            error_message(exc.code, exc.read(), logged_in=base.authorization is not None)
        ) from None
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach the registry at {base}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
        raise CliError(f"cannot reach the registry at {base}: {exc}") from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        raise CliError(
            f"{method} {url}: the answer (HTTP {status}) is not JSON; is this a hareg registry?"
        ) from None


def error_message(status: int, raw: bytes, *, logged_in: bool = True) -> str:
    try:
        errors = json.loads(raw)["errors"]
        first = errors[0]
        message = f"{first['message']} ({first['code']})"
    except (ValueError, LookupError, TypeError):
        return f"the registry answered HTTP {status}" + (
            "; is this a hareg registry (an extension API under /hareg/v1/)?" if status == 404 else ""
        )
    if status == 404 and first["code"] == "UNSUPPORTED" and "authentication is off" not in message:
        message += "; does this registry run hareg?"
    if status == 401 and not logged_in:
        message += "; log in with --username and --password-stdin (or $HAREG_USERNAME and $HAREG_PASSWORD)"
    return message


def run_command(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand: a CliError it raises is printed as ``hareg <command>:
    <message>`` and becomes the exit status; Ctrl-C exits 1 without a traceback."""
    try:
        return fn(args)
    except CliError as exc:
        print(f"hareg {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 1
