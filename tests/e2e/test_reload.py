"""SIGHUP: ``hareg serve`` re-reads logLevel, readOnly and requests from its
configuration file and applies them without dropping a connection."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .hareg_process import HaregServer, Launcher


def write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


class KeepAlive:
    """One HTTP/1.1 connection that must never be re-opened."""

    def __init__(self, server: HaregServer) -> None:
        host, port = server.host_port.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.conn.connect()
        self.sock = self.conn.sock

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        self.conn.request(method, path, body=body, headers={"Content-Length": str(len(body or b""))})
        resp = self.conn.getresponse()
        raw = resp.read()
        assert self.conn.sock is self.sock, "the keep-alive connection was closed"
        data = (
            json.loads(raw)
            if raw and resp.getheader("Content-Type", "").startswith("application/json")
            else raw
        )
        return resp.status, dict(resp.getheaders()), data

    def wait_for(self, path: str, check: Callable[[Any], bool], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            status, _, doc = self.call("GET", path)
            if status == 200 and check(doc):
                return doc
            assert time.monotonic() < deadline, f"{path} never satisfied the check; last: {doc}"
            time.sleep(0.05)


def hold_write_slot(server: HaregServer, location: str) -> socket.socket:
    """A PATCH whose body is still arriving: it holds a write slot until finished."""
    host, port = server.host_port.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"PATCH {location} HTTP/1.1\r\nHost: {server.host_port}\r\nContent-Length: 20\r\n"
        "Content-Range: 0-19\r\n\r\n0123456789".encode()
    )
    return sock


def test_sighup_reloads_limits_log_level_and_read_only(hareg_launcher: Launcher, tmp_path: Path) -> None:
    config = tmp_path / "hareg.yaml"
    write(config, {"logLevel": "Normal"})
    server = hareg_launcher(tmp_path / "data", extra_args=["--config", str(config)])
    conn = KeepAlive(server)
    status, headers, _ = conn.call("GET", "/v2/")
    assert status == 200 and headers["X-Request-Id"]
    stderr_before = server.stderr()
    assert '"request received"' not in stderr_before  # Normal: no debug lines

    # 1. Tighter write limits, a higher log level, and a field that needs a restart.
    write(
        config,
        {
            "logLevel": "Debug",
            "disableRedirect": True,
            "requests": {"write": {"maxRunning": 1, "maxInQueue": 0}},
        },
    )
    server.proc.send_signal(signal.SIGHUP)
    conn.wait_for("/hareg/v1/status", lambda d: d["requests"]["write"]["maxRunning"] == 1)

    status, headers, _ = conn.call("POST", "/v2/reload/app/blobs/uploads/")
    assert status == 202
    holder = hold_write_slot(server, headers["Location"])
    try:
        conn.wait_for("/hareg/v1/status", lambda d: d["requests"]["write"]["running"] == 1)
        status, headers, doc = conn.call("POST", "/v2/reload/app/blobs/uploads/")
        assert status == 429 and headers["Retry-After"] == "1"
        assert doc["errors"][0]["code"] == "TOOMANYREQUESTS"
        status, _, _ = conn.call("GET", "/v2/")  # reads are not limited
        assert status == 200
        holder.sendall(b"0123456789")
        assert holder.recv(4096).startswith(b"HTTP/1.1 202")
    finally:
        holder.close()
    conn.wait_for("/hareg/v1/status", lambda d: d["requests"]["write"]["running"] == 0)
    status, _, _ = conn.call("POST", "/v2/reload/app/blobs/uploads/")
    assert status == 202

    stderr = server.stderr()
    assert '"configuration reloaded"' in stderr
    assert '"request received"' in stderr  # Debug now
    reloaded = [json.loads(line) for line in stderr.splitlines() if '"configuration reloaded"' in line][-1]
    assert reloaded["changed"] == ["logLevel", "requests"]
    restart = [json.loads(line) for line in stderr.splitlines() if "need a restart" in line][-1]
    assert restart["needs_restart"] == ["disableRedirect"]

    # 2. Read-only from the file.
    write(config, {"logLevel": "Normal", "readOnly": True})
    server.proc.send_signal(signal.SIGHUP)
    conn.wait_for("/hareg/v1/read-only", lambda d: d["config"] is True)
    status, _, doc = conn.call("POST", "/v2/reload/app/blobs/uploads/")
    assert status == 405 and "read-only" in doc["errors"][0]["message"]
    status, _, _ = conn.call("GET", "/v2/_catalog")
    assert status == 200
    status, _, doc = conn.call("GET", "/hareg/v1/status")
    assert {c["type"]: c["reason"] for c in doc["conditions"]}["Available"] == "ReadOnly"
    assert doc["requests"]["write"]["maxRunning"] == 0  # the limits went back to unlimited

    # 3. A broken file changes nothing and is reported.
    config.write_text("readOnly: maybe\nrequests: {write: {maxInQueue: -1}}\n")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while '"configuration reload failed' not in server.stderr():
        assert time.monotonic() < deadline, server.stderr()[-2000:]
        time.sleep(0.05)
    failed = [json.loads(line) for line in server.stderr().splitlines() if "reload failed" in line][-1]
    assert any(p.startswith("readOnly:") for p in failed["problems"])
    assert any(p.startswith("requests.write.maxInQueue:") for p in failed["problems"])
    status, _, doc = conn.call("GET", "/hareg/v1/read-only")
    assert status == 200 and doc["config"] is True
    assert server.proc.poll() is None
    conn.conn.close()
