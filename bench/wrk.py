"""Manifest GETs by tag driven by ``wrk`` (when it is installed): a C load
generator that does not share the Python client's limits, so request rates
measure the server rather than the benchmark.

A generated Lua script sets the ``Accept`` header (and any other, such as
``Authorization`` for an authenticated run: in the script, which only this
user can read, rather than on wrk's command line, which every user can), cycles through the tags
``t00000``.. of one repository, and prints a JSON summary (requests, errors,
latency percentiles) on a ``BENCH_JSON`` line when wrk is done.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import MANIFEST_ACCEPT

MARKER = "BENCH_JSON "

LUA = """\
wrk.method = "GET"
wrk.headers["Accept"] = "{accept}"
{extra_headers}local ntags = {ntags}
local counter = 0
request = function()
  local path = string.format("/v2/{repo}/manifests/{tag_prefix}%05d", counter % ntags)
  counter = counter + 1
  return wrk.format(nil, path)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors_status":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_s: float
    raw: dict[str, Any]

    @property
    def ops_s(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "ops": self.requests - self.errors,
            "errors": self.errors,
            "bytes": self.raw.get("bytes", 0),
            "seconds": round(self.seconds, 3),
            "ops_s": round(self.ops_s, 1),
            "mb_s": 0.0,
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "client_cpu_s": round(self.cpu_s, 3),
            "load_generator": "wrk",
        }


def _lua_string(text: str) -> str:
    """``text`` as a Lua string literal (header values are printable ASCII)."""
    if any(not (32 <= ord(c) < 127) for c in text):
        raise ValueError("a wrk header must be printable ASCII")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lua_script(
    repo: str,
    ntags: int,
    tag_prefix: str = "t",
    accept: str = MANIFEST_ACCEPT,
    headers: dict[str, str] | None = None,
) -> str:
    extra = "".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}\n" for k, v in (headers or {}).items())
    return LUA.format(
        accept=accept,
        ntags=max(ntags, 1),
        repo=repo,
        tag_prefix=tag_prefix,
        marker=MARKER,
        extra_headers=extra,
    )


def run_wrk(
    url: str,
    repo: str,
    ntags: int,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    binary: str | None = None,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """Run wrk against ``url`` for ``duration`` seconds (bounded by a timeout)."""
    exe = binary or wrk_binary()
    if exe is None:
        raise FileNotFoundError("wrk is not installed")
    seconds = max(round(duration), 1)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "manifests.lua"
        script.touch(mode=0o600)  # it may hold credentials
        script.write_text(lua_script(repo, ntags, headers=headers))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [
                exe,
                f"-t{threads}",
                f"-c{max(connections, threads)}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-1000:]} {out.stderr[-1000:]}")
    raw: dict[str, Any] = json.loads(line[len(MARKER) :])
    errors = sum(int(raw[k]) for k in raw if k.startswith("errors_"))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return WrkResult(
        requests=int(raw["requests"]),
        seconds=int(raw["duration_us"]) / 1e6,
        errors=errors,
        p50_ms=int(raw["p50_us"]) / 1000,
        p99_ms=int(raw["p99_us"]) / 1000,
        cpu_s=cpu,
        raw=raw,
    )
