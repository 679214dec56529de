"""``hareg fsck`` against a real ``hareg serve`` (embedded etcd, filesystem blobs)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from .hareg_process import HaregServer


def _hareg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hareg", *args], capture_output=True, text=True, timeout=120, check=False
    )


def _request(method: str, url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_for_leadership(server: HaregServer) -> None:
    deadline = time.monotonic() + 60  # a campaign: generous, the machine may be busy
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.url}/hareg/v1/pruner", timeout=30) as r:
            if json.loads(r.read())["isLeader"]:
                return
        time.sleep(0.1)
    raise AssertionError("the only replica never became the pruner leader")


def test_fsck_check_repair_and_json(hareg_server: HaregServer) -> None:
    url = hareg_server.url
    layer = b"a layer that will be damaged on disk " * 100
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    assert _request("POST", f"{url}/v2/fsck/app/blobs/uploads/?digest={digest}", layer) == 201

    clean = _hareg("fsck", "--json", "--registry", url)
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    assert report["checked"] >= 1 and report["corrupt"] == []
    plain = _hareg("fsck", "--registry", url)
    assert plain.returncode == 0 and "all match their digests" in plain.stdout

    [path] = [p for p in hareg_server.data_dir.rglob(digest.split(":")[1]) if p.is_file()]
    os.chmod(path, 0o600)
    path.write_bytes(layer[:-1] + b"?")

    found = _hareg("fsck", "--json", "--registry", url)
    assert found.returncode == 3, (found.stdout, found.stderr)
    report = json.loads(found.stdout)
    assert [c["digest"] for c in report["corrupt"]] == [digest]
    assert "bytes hash to sha256:" in report["corrupt"][0]["reason"]
    assert report["corrupt"][0]["quarantined"] is False
    plain = _hareg("fsck", "--registry", url)
    assert plain.returncode == 3 and digest in plain.stdout and "--repair" in plain.stdout

    _wait_for_leadership(hareg_server)
    repaired = _hareg("fsck", "--repair", "--registry", url)
    assert repaired.returncode == 0, (repaired.stdout, repaired.stderr)
    assert "1 damaged, 1 quarantined" in repaired.stdout
    assert _request("HEAD", f"{url}/v2/fsck/app/blobs/{digest}") == 404
    assert _request("POST", f"{url}/v2/fsck/app/blobs/uploads/?digest={digest}", layer) == 201
    with urllib.request.urlopen(f"{url}/v2/fsck/app/blobs/{digest}", timeout=30) as r:
        assert r.read() == layer
    assert _hareg("fsck", "--registry", url).returncode == 0


def test_fsck_with_no_registry_is_a_clear_error() -> None:
    result = _hareg("fsck", "--registry", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the registry" in result.stderr and "Traceback" not in result.stderr


def test_fsck_with_a_bad_timeout_is_a_usage_error() -> None:
    result = _hareg("fsck", "--timeout", "0", "--registry", "http://127.0.0.1:9")
    assert result.returncode == 2 and "--timeout: '0' is not allowed" in result.stderr
