"""JSON logs: a request id on every line of a request, an access line per
request, and no secret in any line whatever the level (log capture of a real
registry on the session etcd)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from registries import serving

from hareg.kv.etcd import EtcdKV
from hareg.kv.instrumented import InstrumentedKV
from hareg.observability.logs import (
    REDACTED,
    RedactingFilter,
    add_log_secret,
    redact_text,
    redact_value,
    set_log_level,
    setup_logging,
)
from hareg.observability.metrics import Metrics
from hareg.storage.filesystem import FilesystemBlobStore

Client = TestClient[web.Request, web.Application]

HTTP_SECRET = "hs-" + "Q7v9ZpL2xW4mN8kR3tY6uB1cD5fG0hJ" + "-secret"
BEARER = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJlLXNlY3JldA"
BASIC_PASSWORD = "hunter2-basic-pw"
SIGNATURE = "3f1c8e9d0a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d"
SESSION_TOKEN = "FwoGZXIvYXdzEJr-session-token"
ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
PRESIGNED = (
    "https://bucket.s3.example.com/blobs/sha256/ab?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    f"&X-Amz-Credential={ACCESS_KEY_ID}%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20240101T000000Z&X-Amz-Expires=1200&X-Amz-Security-Token={SESSION_TOKEN}"
    f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
)


class PresigningStore(FilesystemBlobStore):
    """Filesystem blobs, but pulls are redirected to a (fake) presigned URL."""

    async def presign(self, digest: str, expires_seconds: int) -> str | None:
        return PRESIGNED


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    """The process's real log setup (JSON, redaction) writing into a buffer, at TraceAll."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    setup_logging("TraceAll", stream=buf, secrets=[HTTP_SECRET])
    try:
        yield buf
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        set_log_level("Normal")


@pytest.fixture
async def client(kv: EtcdKV, tmp_path: Path, capture: io.StringIO) -> AsyncIterator[Client]:
    metrics = Metrics()
    store = PresigningStore(tmp_path / "blobs")
    async with serving(
        InstrumentedKV(kv, metrics.observe_etcd), store, metrics=metrics, http_secret=HTTP_SECRET
    ) as (_, c):
        yield c


def basic_credentials(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


async def test_no_secret_in_any_log_line(client: Client, capture: io.StringIO) -> None:
    auth = {"Authorization": f"Bearer {BEARER}"}
    r = await client.get("/v2/", headers=auth)
    assert r.status == 200
    r = await client.get(
        "/v2/", headers={"Authorization": f"Basic {basic_credentials('ci', BASIC_PASSWORD)}"}
    )
    assert r.status == 200

    # A chunked push: every upload URL carries a signed _state.
    blob = b"secret-free layer" * 100
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    r = await client.post("/v2/logs/app/blobs/uploads/", headers=auth)
    assert r.status == 202
    states = [r.headers["Location"].split("_state=")[1]]
    r = await client.patch(r.headers["Location"], data=blob, headers={"Content-Range": f"0-{len(blob) - 1}"})
    assert r.status == 202
    states.append(r.headers["Location"].split("_state=")[1])
    r = await client.put(r.headers["Location"] + f"&digest={digest}", headers=auth)
    assert r.status == 201, await r.text()

    # A pull redirected to a presigned URL.
    r = await client.get(f"/v2/logs/app/blobs/{digest}", allow_redirects=False, headers=auth)
    assert r.status == 307 and r.headers["Location"] == PRESIGNED

    # A bad upload state and a query with a password in it.
    r = await client.get(
        "/v2/logs/app/blobs/uploads/nope", params={"_state": "forged.state", "password": "pw1"}
    )
    assert r.status == 404

    # Application code logging carelessly.
    log = logging.getLogger("hareg.test")
    log.info("proxy is https://user:pr0xy-pa55@proxy.example.com:3128")
    log.warning(
        "config dump",
        extra={
            "fields": {
                "httpSecret": HTTP_SECRET,
                "storage": {"secretKey": "s3-secret-key-value", "accessKey": ACCESS_KEY_ID},
                "headers": {"Authorization": f"Basic {basic_credentials('u', BASIC_PASSWORD)}"},
                "url": PRESIGNED,
            }
        },
    )
    try:
        raise RuntimeError(f"failed with token={BEARER} and secret {HTTP_SECRET}")
    except RuntimeError:
        log.exception("oops %s", "password=hunter2")

    text = capture.getvalue()
    basic = basic_credentials("ci", BASIC_PASSWORD)
    secrets = [
        HTTP_SECRET,
        BEARER,
        BASIC_PASSWORD,
        basic,
        SIGNATURE,
        SESSION_TOKEN,
        ACCESS_KEY_ID,
        "pr0xy-pa55",
        "s3-secret-key-value",
        "hunter2",
        "forged.state",
        "pw1",
        *states,
    ]
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into the logs"
    assert REDACTED in text
    # What was redacted is still recognisable.
    assert "X-Amz-Signature=<redacted>" in text and "_state=<redacted>" in text
    assert "https://user:<redacted>@proxy.example.com:3128" in text

    records = lines(capture)
    # Debug and Trace really were on: headers and etcd calls are in the capture.
    assert any("request_headers" in rec for rec in records)
    assert any(rec.get("etcd_op") == "txn" for rec in records)


async def test_a_request_id_on_every_line_of_a_request(client: Client, capture: io.StringIO) -> None:
    r = await client.put(
        "/v2/rid/app/manifests/v1",
        data=b"{not json",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json", "X-Request-Id": "rid-42"},
    )
    assert r.status == 400 and r.headers["X-Request-Id"] == "rid-42"
    records = [rec for rec in lines(capture) if rec.get("request_id") == "rid-42"]
    messages = [rec["msg"] for rec in records]
    assert "request received" in messages and "request" in messages
    assert any(rec.get("etcd_op") for rec in records) or len(records) >= 2
    access = next(rec for rec in records if rec["msg"] == "request")
    assert access["status"] == 400 and access["method"] == "PUT"
    assert access["route"] == "/v2/{name}/manifests/{reference}"
    assert access["path"] == "/v2/rid/app/manifests/v1"
    assert access["level"] == "info" and access["bytes_in"] == len(b"{not json")
    # Lines outside a request carry no id.
    logging.getLogger("hareg.test").warning("between requests")
    assert "request_id" not in lines(capture)[-1]


async def test_normal_level_logs_one_access_line_and_no_headers(client: Client, capture: io.StringIO) -> None:
    set_log_level("Normal")
    start = len(lines(capture))
    r = await client.get("/v2/", headers={"X-Request-Id": "normal-1"})
    assert r.status == 200
    r = await client.get("/healthz")  # probes are logged at Debug only
    assert r.status == 200
    # Request-scoped lines only: background tasks (leadership, cache) log on their own.
    new = [rec for rec in lines(capture)[start:] if "request_id" in rec]
    assert [rec["msg"] for rec in new] == ["request"]
    assert new[0]["request_id"] == "normal-1" and "response_headers" not in new[0]


def test_redact_text_patterns() -> None:
    cases = {
        "Authorization: Bearer abcdefghijkl": "Bearer <redacted>",
        "GET /v2/a/blobs/uploads/x?_state=abc.def&digest=sha256:1": "_state=<redacted>&digest=sha256:1",
        "http://u:p4ss@h:1/x": "http://u:<redacted>@h:1/x",
        '{"password": "hunter2"}': '"password": "<redacted>"',
        "secretKey=abc123": "secretKey=<redacted>",
        "https://x/y?sig=azure-sas-sig&sv=2020": "sig=<redacted>&sv=2020",
        # A bare JWT and an htpasswd bcrypt entry, under no telling name.
        "got eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJlZCJ9.c2lnbmF0dXJl from x": "got <redacted> from x",
        "ed:$2y$05$" + "A" * 53 + " line 3": "ed:<redacted> line 3",
        "robot+ci logged in with hrs_Q2x9-kd_Zp3aLr0TqWv8bXc5 now": "with <redacted> now",
    }
    for raw, expected in cases.items():
        out = redact_text(raw)
        assert expected in out, (raw, out)
    # Ordinary registry vocabulary survives.
    plain = "pushed sha256:abc digest to repo team/app tag v1 key /hareg/t/app@v1"
    assert redact_text(plain) == plain
    assert redact_text("a long-literal-secret here", ["long-literal-secret"]) == "a <redacted> here"


def test_redact_value_by_field_name() -> None:
    doc = {
        "Authorization": "Basic xyz",
        "X-Registry-Token": "t",
        "password": "p",
        "nested": [{"client_secret": "c", "name": "ok"}],
        "_state": "s",
        "managementState": "Managed",
        "count": 3,
    }
    assert redact_value(doc) == {
        "Authorization": REDACTED,
        "X-Registry-Token": REDACTED,
        "password": REDACTED,
        "nested": [{"client_secret": REDACTED, "name": "ok"}],
        "_state": REDACTED,
        "managementState": "Managed",
        "count": 3,
    }


def test_filter_rewrites_the_record_and_add_log_secret() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    try:
        setup_logging("Normal", stream=buf)
        assert any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters)
        add_log_secret("generated-cluster-secret-value")
        logging.getLogger("x").info("value %s", "generated-cluster-secret-value")
        logging.getLogger("x").debug("not at Normal")
        out = lines(buf)
        assert len(out) == 1 and out[0]["msg"] == f"value {REDACTED}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out[0]["time"])
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
