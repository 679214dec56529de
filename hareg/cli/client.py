"""A small client for a running registry's JSON API (``/hareg/v1/``), shared by
the CLI commands.

The registry is ``--registry URL``, else ``$HAREG_REGISTRY``, else
http://127.0.0.1:5000.  A registry with authentication (docs/security.md) is
sent ``$HAREG_USERNAME`` and ``$HAREG_PASSWORD`` as Basic credentials when
both are set.  Failures become ``CliError`` with a one-line message
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
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_REGISTRY", "CliError", "authorization", "base_url", "call", "error_message"]

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


def authorization(env: dict[str, str] | None = None) -> str | None:
    """Basic credentials from HAREG_USERNAME and HAREG_PASSWORD (None: not both set)."""
    env = dict(os.environ) if env is None else env
    user, password = env.get("HAREG_USERNAME"), env.get("HAREG_PASSWORD")
    if not user or password is None:
        return None
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def call(base: str, method: str, path: str, body: Any = None, *, timeout: float = TIMEOUT) -> tuple[int, Any]:
    """One JSON request; a registry error becomes a CliError with its message."""
    url = base + path
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    credentials = authorization()
    if credentials is not None:
        headers["Authorization"] = credentials
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        raise CliError(error_message(exc.code, exc.read())) from None
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


def error_message(status: int, raw: bytes) -> str:
    try:
        errors = json.loads(raw)["errors"]
        first = errors[0]
        message = f"{first['message']} ({first['code']})"
    except (ValueError, LookupError, TypeError):
        return f"the registry answered HTTP {status}" + (
            "; is this a hareg registry (an extension API under /hareg/v1/)?" if status == 404 else ""
        )
    if status == 404 and first["code"] == "UNSUPPORTED":
        message += "; does this registry run hareg?"
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
