"""JSON log lines on stderr: one object a line, a request id on every line of a
request, and never a secret.

``logLevel`` (OpenShift's vocabulary) maps onto Python levels:

============  ==========================================================
Normal        INFO: one access line per request, warnings, lifecycle
Debug         DEBUG: also request and response headers (redacted)
Trace         TRACE (5): also every etcd call and limiter decision
TraceAll      TRACE, and third-party loggers (aiohttp, grpc, asyncio) too
============  ==========================================================

The request id lives in a ContextVar (``REQUEST_ID``) that the HTTP layer sets
for the duration of a request; the formatter adds it to every line logged in
that context, whoever logs it.

Redaction is a filter on the handler (``RedactingFilter``), so it sees every
record from every logger, after the message is formatted and before it is
written: values of secret-named fields (password, token, Authorization, ...),
credentials in URLs, signed query parameters (a presigned redirect's
``X-Amz-Signature``, an upload URL's ``_state``), and any literal secret the
process knows (the ``httpSecret``, an S3 secret key) are replaced by
``<redacted>``.  A record may name the only fields that can carry a secret
(``REDACT_ONLY``: the access log line, one per request, names what the client
sent: method, path and query, User-Agent, headers); its other fields are values
the registry made itself (numbers, route templates, addresses) and are written
as they are, which keeps redaction off most of every request's line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import IO, Any, Final

__all__ = [
    "LOG_LEVELS",
    "REDACTED",
    "REDACT_ONLY",
    "REQUEST_ID",
    "TRACE",
    "JsonFormatter",
    "RedactingFilter",
    "add_log_secret",
    "redact_text",
    "redact_value",
    "set_log_level",
    "setup_logging",
]

TRACE: Final = 5
logging.addLevelName(TRACE, "TRACE")

# OpenShift's logLevel vocabulary mapped onto Python levels.
LOG_LEVELS: Final = {
    "Normal": logging.INFO,
    "Debug": logging.DEBUG,
    "Trace": TRACE,
    "TraceAll": TRACE,
}
_THIRD_PARTY: Final = ("aiohttp", "aiohttp.access", "grpc", "asyncio", "etcd3aio")

REDACTED: Final = "<redacted>"
# The record attribute naming the only ``fields`` that can carry a secret
# (``extra={"fields": {...}, REDACT_ONLY: ("path", ...)}``); without it, every
# field is redacted.
REDACT_ONLY: Final = "redact_only"

# The id of the request being served, if any (set by hareg.http.observe).
REQUEST_ID: ContextVar[str | None] = ContextVar("hareg_request_id", default=None)

# Field names whose values are secret whatever they hold (compared lower-cased,
# without '-' and '_').
_SECRET_NAMES: Final = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "credential",
    "signature",
    "apikey",
    "accesskey",
    "privatekey",
)
_SECRET_NAME: Final = re.compile("|".join(_SECRET_NAMES))
# Query parameters that carry a signature, a credential or a token.
_SECRET_PARAMS: Final = (
    r"_state|x-(?:amz|goog)-(?:signature|credential|security-token)|signature|sig|awsaccesskeyid"
    r"|(?:access_|refresh_|id_)?token|password|passwd|secret|client_secret|api[-_]?key"
)
_QUERY_PARAM = re.compile(rf"(?i)([?&;](?:{_SECRET_PARAMS})=)[^&;#\s\"'<>]*")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@\"']+):[^@/\s\"']*@")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|negotiate)\s+[A-Za-z0-9._~+/=-]{8,}")
_NAMED_VALUE = re.compile(
    r"(?i)\b((?:http_?secret|secret_?key|secret|password|passwd|access_?token|token|authorization|api_?key)"
    r"[\"']?\s*[:=]\s*[\"']?)(?!<redacted>|(?:bearer|basic|negotiate)\s)([^\"'\s,&;}]+)"
)

# A JWT (a bearer token: header.payload.signature, each base64url of JSON,
# so the first two begin "eyJ"), a bcrypt hash (an htpasswd entry) and a robot secret, wherever
# they appear, under whatever name.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_BCRYPT_HASH = re.compile(r"\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}")
# A robot account's secret (hareg/registry/robots.py: "hrs_" and base64url).
_ROBOT_SECRET = re.compile(r"\bhrs_[A-Za-z0-9_-]{16,}")

# Anything any pattern above could match contains one of these; text without
# any (most access-log fields: paths, digests, statuses) is returned as is,
# which keeps redaction off the hot path of every request's log line.
_MAY_HOLD_SECRET = re.compile(
    rf"(?i)[?&;](?:{_SECRET_PARAMS})=|://[^/\s]*@|bearer|basic|negotiate|eyJ|\$2[abxy]?\$|hrs_"
    r"|secret|password|passwd|token|authorization|api_?key"
)


def _secret_name(name: str) -> bool:
    lower = name.lower()
    if lower == "_state":  # an upload URL's signed state
        return True
    return _SECRET_NAME.search(lower.replace("-", "").replace("_", "")) is not None


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials, signed query values and the given literal secrets removed."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    if not _MAY_HOLD_SECRET.search(text):
        return text
    text = _QUERY_PARAM.sub(rf"\g<1>{REDACTED}", text)
    text = _URL_USERINFO.sub(rf"\g<1>:{REDACTED}@", text)
    text = _AUTH_SCHEME.sub(rf"\g<1> {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _BCRYPT_HASH.sub(REDACTED, text)
    text = _ROBOT_SECRET.sub(REDACTED, text)
    return _NAMED_VALUE.sub(rf"\g<1>{REDACTED}", text)


def redact_value(value: Any, secrets: Iterable[str] = (), name: str = "") -> Any:
    """A copy of a log field's value with secrets removed (mappings and lists recursively)."""
    if name and _secret_name(name) and value not in (None, "", 0, False):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {str(k): redact_value(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, secrets) for v in value]
    if isinstance(value, bytes):
        return redact_text(value.decode(errors="replace"), secrets)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value), secrets)


class RedactingFilter(logging.Filter):
    """Rewrites every record that passes the handler so that no secret reaches a log line.

    The message is formatted here (``msg % args``) and replaced by its redacted
    text; structured ``fields`` are redacted by name and by content; an
    exception's traceback is rendered and redacted into ``exc_text``.
    ``add_secret`` registers literal values (an httpSecret, a storage key) to
    scrub wherever they appear.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        # Longest first (a secret containing another is replaced whole); sorted
        # when one is added, not per record.
        self._ordered: tuple[str, ...] = ()
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, secret: str | bytes | None) -> None:
        if isinstance(secret, bytes):
            secret = secret.decode(errors="replace")
        # Very short values would blank out ordinary words; the patterns cover those.
        if secret and len(secret) >= 6:
            self._secrets.add(secret)
            self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._ordered
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact_text(message, secrets)
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            only = getattr(record, REDACT_ONLY, None)
            if isinstance(only, tuple):
                # The others are the registry's own values: passed as they are.
                redacted = dict(fields)
                for name in only:
                    value = redacted.get(name)
                    if value is not None:
                        redacted[name] = redact_value(value, secrets, name)
                record.fields = redacted
            else:
                record.fields = redact_value(fields, secrets)
        if record.exc_info:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info), secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, secrets)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # One encoder for every line (json.dumps with an option builds one per call).
        self._encoder = json.JSONEncoder(default=str)
        # The last second formatted: most lines share it with the line before.
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return self._encoder.encode(entry)


def set_log_level(level: str) -> None:
    """Apply a ``logLevel`` to the running process (at start-up and on SIGHUP)."""
    logging.getLogger().setLevel(LOG_LEVELS.get(level, logging.INFO))
    # Third-party chatter stays at WARNING unless asked for everything.
    for name in _THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "TraceAll" else logging.WARNING)


def setup_logging(
    level: str = "Normal", stream: IO[str] | None = None, secrets: Iterable[str] = ()
) -> RedactingFilter:
    """JSON lines on ``stream`` (stderr) through a redacting filter; returns the filter
    so that secrets learnt later (a generated httpSecret) can be added to it."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # No line shows a record's thread or process (JsonFormatter): the logging
    # module need not look them up for every record (its documented
    # optimization switches; a getpid system call per line, among others).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    set_log_level(level)
    return redactor


def add_log_secret(secret: str | bytes | None) -> None:
    """Scrub ``secret`` from every line the root logger's handlers write from now on."""
    for handler in logging.getLogger().handlers:
        for flt in handler.filters:
            if isinstance(flt, RedactingFilter):
                flt.add_secret(secret)
