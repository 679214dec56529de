"""hareg's configuration: one YAML document shaped like the ``spec`` of the
OpenShift Image Registry Operator's ``configs.imageregistry.operator.openshift.io``
resource (camelCase keys as in OpenShift), plus hareg's own ``listen``,
``etcd`` and ``pruner`` sections.  ``docs/configuration.md`` describes every
field.

``load_config(path, env)`` reads the file, applies ``HAREG_...`` environment
overrides, validates everything and either returns a frozen ``Config`` or
raises ``ConfigError`` listing every problem at once, each naming the field by
its YAML path, the bad value and what is allowed, with the line it is on (or
the environment variable it came from)::

    requests.write.maxInQueue: -1 is not allowed; expected an integer >= 0 (line 7)

Rules worth knowing:

* A key whose value is ``null`` is treated as absent (Kubernetes semantics),
  so a commented-out block leaves the default in place.
* Unknown keys are errors, with a "did you mean" suggestion; OpenShift fields
  that make no sense for hareg (``affinity``, ``storage.gcs``,
  ``routes[].secretName``, ...) get an error that says so.
* Environment variables win over the file.  ``HAREG_<PATH>`` is the YAML path
  with camelCase split into words, upper-cased, '.' -> '_'
  (``requests.write.maxInQueue`` -> ``HAREG_REQUESTS_WRITE_MAX_IN_QUEUE``).
  Only scalar fields have one (``routes`` has none); ``HAREG_ETCD_ENDPOINTS``
  is a comma-separated list; an empty value for an optional string field
  unsets it.  A storage variable for a kind other than the file's is a
  conflict, reported as such, never a silent switch of storage.

``parse_cron`` (the pruner's schedule) and ``split_host_port`` (``listen``)
are public so the code that uses those fields parses them the same way.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor

from hareg.config.durations import format_duration, parse_duration

__all__ = [
    "ENV_PREFIX",
    "LOG_LEVELS",
    "MANAGEMENT_STATES",
    "STORAGE_KINDS",
    "Config",
    "ConfigError",
    "CronSchedule",
    "EtcdConfig",
    "FilesystemStorage",
    "LimitsConfig",
    "ProxyConfig",
    "PrunerConfig",
    "PvcStorage",
    "RequestLimits",
    "RequestsConfig",
    "Route",
    "S3Storage",
    "StorageConfig",
    "advertised_url",
    "config_to_dict",
    "defaults_yaml",
    "env_var_name",
    "environment_variables",
    "format_duration",
    "load_config",
    "parse_cron",
    "parse_duration",
    "split_host_port",
]

ENV_PREFIX: Final = "HAREG_"
MANAGEMENT_STATES: Final = ("Managed", "Unmanaged", "Removed")
LOG_LEVELS: Final = ("Normal", "Debug", "Trace", "TraceAll")
STORAGE_KINDS: Final = ("filesystem", "pvc", "emptyDir", "s3")
REDACTED: Final = "<redacted>"
MIN_HTTP_SECRET_LENGTH: Final = 32


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Route:
    """An extra name for the registry, optionally served on its own TLS listener."""

    name: str
    hostname: str
    certificate_file: str | None = None
    key_file: str | None = None
    listen: str | None = None


@dataclass(frozen=True)
class ProxyConfig:
    http: str | None = None
    https: str | None = None
    no_proxy: str | None = None


@dataclass(frozen=True)
class RequestLimits:
    """As OpenShift's limiter: ``max_running`` 0 is no limit; with a limit,
    ``max_in_queue`` 0 is no queue (429 at once) and ``max_wait_in_queue`` 0
    waits without limit (in seconds)."""

    max_running: int = 0
    max_in_queue: int = 0
    max_wait_in_queue: float = 0.0


@dataclass(frozen=True)
class RequestsConfig:
    read: RequestLimits = field(default_factory=RequestLimits)
    write: RequestLimits = field(default_factory=RequestLimits)


@dataclass(frozen=True)
class FilesystemStorage:
    root_directory: str | None = None  # None: <data-dir>/blobs


@dataclass(frozen=True)
class PvcStorage:
    claim: str | None = None  # a directory path here; None: <data-dir>/blobs


@dataclass(frozen=True)
class S3Storage:
    bucket: str = ""
    region: str = "us-east-1"
    region_endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    virtual_hosted_style: bool = False
    encrypt: bool = False
    key_prefix: str = ""


@dataclass(frozen=True)
class StorageConfig:
    kind: str = "filesystem"  # one of STORAGE_KINDS
    filesystem: FilesystemStorage = field(default_factory=FilesystemStorage)
    pvc: PvcStorage = field(default_factory=PvcStorage)
    s3: S3Storage = field(default_factory=S3Storage)
    empty_dir: bool = False  # True exactly when kind == "emptyDir"


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ()  # empty: start a private etcd child process
    prefix: str = "/hareg"
    dial_timeout: float = 5.0
    request_timeout: float = 5.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class PrunerConfig:
    schedule: str = "0 0 * * *"
    suspend: bool = False
    keep_tag_revisions: int = 3
    keep_younger_than: float = 3600.0
    upload_grace: float = 3600.0
    fsck_schedule: str | None = None  # the scheduled integrity check; None: off
    fsck_repair: bool = False


# The manifest PUT's etcd transaction holds one compare per reference (each
# layer, config and index child must exist), plus up to 3 more (the blob-record
# guard, the repository, the immutability rule) and 2 per tag.  etcd refuses a
# transaction with more than --max-txn-ops compares (128 by default since etcd
# 3.3); 100 references leave room for 12 tags in one push.
DEFAULT_MAX_MANIFEST_REFERENCES: Final = 100
# A manifest's annotations are stored twice in its transaction (the manifest
# record and, with a subject, the referrer entry), beside an inline body of at
# most 256 KiB; 256 KiB keeps the whole under etcd's --max-request-bytes
# (1.5 MiB by default) with room for the references.
DEFAULT_MAX_MANIFEST_ANNOTATION_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class LimitsConfig:
    """What one client can hold: timeouts (seconds, > 0) and caps (0: no cap)."""

    request_header_timeout: float = 60.0
    idle_connection_timeout: float = 75.0
    body_stall_timeout: float = 60.0
    max_connections: int = 4096
    max_upload_sessions: int = 10_000
    max_upload_sessions_per_repository: int = 1_000
    max_blob_size: int = 0
    max_manifest_references: int = DEFAULT_MAX_MANIFEST_REFERENCES
    max_manifest_annotation_bytes: int = DEFAULT_MAX_MANIFEST_ANNOTATION_BYTES


@dataclass(frozen=True)
class ManifestUrls:
    """Which ``urls`` a pushed manifest's descriptors may carry: regular
    expressions searched in each URL (as distribution does); a URL must match
    one of ``allow`` and none of ``deny``.  No ``allow``: no URL is accepted."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationConfig:
    manifest_urls: ManifestUrls = field(default_factory=ManifestUrls)


@dataclass(frozen=True)
class Config:
    management_state: str = "Managed"
    log_level: str = "Normal"
    http_secret: str | None = field(default=None, repr=False)
    listen: str = "127.0.0.1:5000"
    advertise_url: str | None = None  # None: derived from listen (see advertised_url)
    read_only: bool = False
    disable_redirect: bool = False
    max_list_page_size: int = 1000
    replicas: int = 1
    default_route: bool = False
    routes: tuple[Route, ...] = ()
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


class ConfigError(Exception):
    """Everything wrong with a configuration; ``str()`` gives one problem a line."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


# --------------------------------------------------------------------------- field table

# Every scalar field: its YAML path, how an environment value is parsed, and
# the comment ``defaults_yaml`` puts above it.  Kinds: "str" (any string
# field, parsed and checked later), "optstr" (empty unsets it), "bool", "int",
# "list" (comma-separated), "flag" (storage.emptyDir: true sets ``{}``).


@dataclass(frozen=True)
class _Scalar:
    path: str
    kind: str
    doc: str


_SCALARS: Final = (
    _Scalar("managementState", "str", "Managed (serve), Unmanaged or Removed."),
    _Scalar("logLevel", "str", "Normal, Debug, Trace or TraceAll."),
    _Scalar(
        "httpSecret",
        "optstr",
        f"Signs upload state; every replica must share it ({MIN_HTTP_SECRET_LENGTH}+ characters). "
        "null: generated.",
    ),
    _Scalar("listen", "str", "host:port of the registry's HTTP listener (empty host: all interfaces)."),
    _Scalar(
        "advertiseURL",
        "optstr",
        "URL other replicas reach this one at; null: http://<listen>, or http://<host name>:<port> "
        "when listen is a wildcard (0.0.0.0, [::] or an empty host).",
    ),
    _Scalar("readOnly", "bool", "Reject pushes and deletes (405); pulls are unaffected. SIGHUP reloads it."),
    _Scalar("disableRedirect", "bool", "Stream blob bytes through the registry instead of redirecting."),
    _Scalar(
        "maxListPageSize",
        "int",
        "Most entries in one page of a tag list or the catalog; a larger or absent n gets this many "
        "and a Link to the next page.",
    ),
    _Scalar("replicas", "int", "Number of registry replicas (the local cluster starts this many)."),
    _Scalar("defaultRoute", "bool", "Accepted for OpenShift compatibility; hareg creates no routes."),
    _Scalar("proxy.http", "optstr", "Proxy URL for outgoing HTTP requests."),
    _Scalar("proxy.https", "optstr", "Proxy URL for outgoing HTTPS requests."),
    _Scalar("proxy.noProxy", "optstr", "Comma-separated hosts that bypass the proxy."),
    _Scalar("requests.read.maxRunning", "int", "Pulls served at once (0: unlimited)."),
    _Scalar("requests.read.maxInQueue", "int", "Pulls waiting for a slot (0: no queue, 429 at once)."),
    _Scalar("requests.read.maxWaitInQueue", "str", "How long a pull may wait (0s: forever)."),
    _Scalar("requests.write.maxRunning", "int", "Pushes/deletes served at once (0: unlimited)."),
    _Scalar(
        "requests.write.maxInQueue", "int", "Pushes/deletes waiting for a slot (0: no queue, 429 at once)."
    ),
    _Scalar("requests.write.maxWaitInQueue", "str", "How long a push may wait (0s: forever)."),
    _Scalar("storage.filesystem.rootDirectory", "optstr", "Blob directory; null: <data-dir>/blobs."),
    _Scalar("storage.pvc.claim", "optstr", "The claim's mount point (a directory); null: <data-dir>/blobs."),
    _Scalar(
        "storage.emptyDir",
        "flag",
        "Scratch blob storage for trials and tests, not for keeps; one replica only.",
    ),
    _Scalar("storage.s3.bucket", "str", "Bucket name (required)."),
    _Scalar("storage.s3.region", "str", "Bucket region."),
    _Scalar("storage.s3.regionEndpoint", "optstr", "Endpoint URL of an S3-compatible store."),
    _Scalar("storage.s3.accessKey", "optstr", "null: AWS_ACCESS_KEY_ID and the usual AWS chain."),
    _Scalar("storage.s3.secretKey", "optstr", "null: AWS_SECRET_ACCESS_KEY and the usual AWS chain."),
    _Scalar("storage.s3.virtualHostedStyle", "bool", "bucket.host/key URLs instead of host/bucket/key."),
    _Scalar("storage.s3.encrypt", "bool", "Server-side encryption of stored objects."),
    _Scalar("storage.s3.keyPrefix", "str", "Prefix of every object key (no leading '/')."),
    _Scalar("etcd.endpoints", "list", "http(s)://host:port of each member; []: start a private etcd."),
    _Scalar("etcd.prefix", "str", "Every hareg key starts with this."),
    _Scalar("etcd.dialTimeout", "str", "Connection timeout."),
    _Scalar("etcd.requestTimeout", "str", "Timeout of one etcd request."),
    _Scalar("etcd.tls.caFile", "optstr", "CA bundle that verifies the members (null: system CAs)."),
    _Scalar("etcd.tls.certFile", "optstr", "Client certificate (with keyFile)."),
    _Scalar("etcd.tls.keyFile", "optstr", "Client key (with certFile)."),
    _Scalar("pruner.schedule", "str", "When garbage collection runs: cron, 5 fields, UTC."),
    _Scalar("pruner.suspend", "bool", "Skip scheduled runs."),
    _Scalar("pruner.keepTagRevisions", "int", "Tag history entries kept per tag."),
    _Scalar("pruner.keepYoungerThanDuration", "str", "Never prune what is younger than this."),
    _Scalar("pruner.uploadGracePeriod", "str", "Never delete a blob or upload younger than this."),
    _Scalar(
        "pruner.fsck.schedule", "optstr", "When the integrity check runs: cron, 5 fields, UTC; null: never."
    ),
    _Scalar("pruner.fsck.repair", "bool", "Quarantine the damaged objects a scheduled check finds."),
    _Scalar(
        "limits.requestHeaderTimeout",
        "str",
        "A request's line and headers must arrive within this.",
    ),
    _Scalar(
        "limits.idleConnectionTimeout",
        "str",
        "A keep-alive connection idle this long is closed.",
    ),
    _Scalar(
        "limits.bodyStallTimeout",
        "str",
        "A request body that sends nothing for this long is dropped (408), its bytes never committed.",
    ),
    _Scalar(
        "limits.maxConnections",
        "int",
        "Connections open at once on one replica; more are closed when accepted (0: unlimited).",
    ),
    _Scalar(
        "limits.maxUploadSessions", "int", "Upload sessions in progress in the whole registry (0: unlimited)."
    ),
    _Scalar(
        "limits.maxUploadSessionsPerRepository",
        "int",
        "Upload sessions in progress per repository (0: unlimited).",
    ),
    _Scalar("limits.maxBlobSize", "int", "Largest blob a push may upload, in bytes (0: unlimited)."),
    _Scalar(
        "limits.maxManifestReferences",
        "int",
        "Layers, config and index children one manifest may reference (0: unlimited; see docs).",
    ),
    _Scalar(
        "limits.maxManifestAnnotationBytes",
        "int",
        "Total bytes of a manifest's annotations, keys and values (0: unlimited; see docs).",
    ),
    _Scalar(
        "validation.manifests.urls.allow",
        "list",
        "Regular expressions; a descriptor URL must match one ([]: manifests with urls are refused).",
    ),
    _Scalar("validation.manifests.urls.deny", "list", "Regular expressions; a URL matching one is refused."),
)

_SECTION_DOCS: Final = MappingProxyType(
    {
        "routes": "Extra names, each optionally served on its own TLS listener:\n"
        "  - name: public\n"
        "    hostname: registry.example.com\n"
        "    listen: 0.0.0.0:5443\n"
        "    certificateFile: /etc/hareg/tls.crt\n"
        "    keyFile: /etc/hareg/tls.key",
        "proxy": "Proxy for the registry's outgoing requests to upstream registries.",
        "requests": "Per-replica limits; a request over the limits gets 429 with Retry-After.\n"
        "SIGHUP reloads them (and logLevel and readOnly).",
        "storage": "Where blob bytes live: exactly one of filesystem, pvc, emptyDir, s3.\n"
        "Instead of filesystem, for example:\n"
        "  s3:\n"
        "    bucket: hareg\n"
        "    region: us-east-1\n"
        "    regionEndpoint: http://127.0.0.1:18333\n"
        "    virtualHostedStyle: false\n"
        "    encrypt: false\n"
        "    keyPrefix: ''",
        "etcd": "Where metadata lives (OpenShift keeps this outside the registry's spec).",
        "etcd.tls": "TLS to the etcd members (https:// endpoints only).",
        "pruner": "Online garbage collection, run by one replica at a time (the ImagePruner's spec).",
        "pruner.fsck": "The integrity check (hareg fsck) on a schedule, on the pruner leader; off by default.",
        "limits": "Bounds on what any one client can hold: connection timeouts and push caps.",
        "validation": "What a pushed manifest may contain (distribution's validation section).",
    }
)


def env_var_name(path: str) -> str:
    """``requests.write.maxInQueue`` -> ``HAREG_REQUESTS_WRITE_MAX_IN_QUEUE``."""
    words = [re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", part) for part in path.split(".")]
    return ENV_PREFIX + "_".join(words).upper()


def environment_variables() -> tuple[tuple[str, str], ...]:
    """Every ``(variable, YAML path)`` pair that ``load_config`` reads."""
    return tuple((env_var_name(s.path), s.path) for s in _SCALARS)


# OpenShift fields with no counterpart in hareg: a clear error instead of "unknown".
_K8S_ONLY = "is an OpenShift operator field (pod placement or operator behaviour) that hareg does not use"
_TOP_UNSUPPORTED: Final = MappingProxyType(
    {
        **{
            key: f"{_K8S_ONLY}; remove it"
            for key in (
                "affinity",
                "logging",
                "nodeSelector",
                "observedConfig",
                "operatorLogLevel",
                "resources",
                "rolloutStrategy",
                "tolerations",
                "topologySpreadConstraints",
                "unsupportedConfigOverrides",
            )
        },
        **{
            key: "hareg's configuration is the operator's spec itself; "
            "move the fields under spec to the top level and drop apiVersion, kind, metadata and status"
            for key in ("apiVersion", "kind", "metadata", "spec", "status")
        },
    }
)
_STORAGE_UNSUPPORTED: Final = MappingProxyType(
    {
        **{
            key: f"{key} storage is not supported by hareg; expected one of {', '.join(STORAGE_KINDS)}"
            for key in ("azure", "gcs", "ibmcos", "oss", "swift")
        },
        "managementState": "hareg never creates or removes storage, so there is nothing to manage; remove it",
    }
)
_S3_UNSUPPORTED: Final = MappingProxyType(
    {
        key: "is an OpenShift S3 option that hareg does not support; remove it"
        for key in ("chunkSizeMiB", "cloudFront", "keyID", "trustedCA")
    }
)
_ROUTE_UNSUPPORTED: Final = MappingProxyType(
    {"secretName": "hareg reads certificates from files; use certificateFile and keyFile instead"}
)
_PRUNER_UNSUPPORTED: Final = MappingProxyType(
    {
        "keepYoungerThan": "is deprecated in OpenShift; use keepYoungerThanDuration (a duration like 60m)",
        **{
            key: "is an OpenShift ImagePruner field that hareg does not use; remove it"
            for key in (
                "affinity",
                "failedJobsHistoryLimit",
                "ignoreInvalidImageReferences",
                "logLevel",
                "nodeSelector",
                "resources",
                "successfulJobsHistoryLimit",
                "tolerations",
            )
        },
    }
)
_NO_UNSUPPORTED: Final[Mapping[str, str]] = MappingProxyType({})


# --------------------------------------------------------------------------- small parsers

_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _is_hostname(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    return all(_HOST_LABEL.match(label) for label in host.removesuffix(".").split("."))


def _host_problem(host: str) -> str | None:
    """None if ``host`` (without brackets) is an IP address or a DNS name."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        return f"{host!r} is not a valid IPv4 address"
    if not _is_hostname(host):
        return f"{host!r} is not a valid host name or IP address"
    return None


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``; empty host = all interfaces).

    Returns the host without brackets and the port; raises ValueError with a
    reason if either part is invalid.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError("an IPv6 address must be written [address]:port")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("the port is missing")
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets, like [::1]:5000")
        if host:
            problem = _host_problem(host)
            if problem:
                raise ValueError(problem)
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


def _url_problem(text: str, schemes: tuple[str, ...], need_port: bool, allow_path: bool) -> str | None:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in schemes:
        return f"the scheme must be {' or '.join(s + '://' for s in schemes)}"
    host = parts.hostname
    if not host:
        return "the host is missing"
    problem = _host_problem(host)
    if problem:
        return problem
    if need_port and port is None:
        return "the port is missing"
    if port == 0:
        return "port 0 is out of range 1-65535"
    if not allow_path and (parts.path not in ("", "/") or parts.query or parts.fragment):
        return "a path, query or fragment is not allowed"
    return None


# --------------------------------------------------------------------------- cron

_CRON_FIELDS: Final = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day-of-week", 0, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_MACROS: Final = MappingProxyType(
    {
        "@yearly": "0 0 1 1 *",
        "@annually": "0 0 1 1 *",
        "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *",
        "@midnight": "0 0 * * *",
        "@hourly": "0 * * * *",
    }
)
_DAYS_IN_MONTH: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February at its longest


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron schedule.  Weekdays are 0-6 with 0 = Sunday.

    As in Vixie cron and Kubernetes CronJobs, when both the day-of-month and
    the day-of-week fields are restricted (neither starts with '*'), a day
    matches if it matches either; otherwise it must match both.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_or_weekday: bool

    def matches_day(self, when: datetime) -> bool:
        day = when.day in self.days
        weekday = (when.weekday() + 1) % 7 in self.weekdays
        return (day or weekday) if self.day_or_weekday else (day and weekday)

    def matches(self, when: datetime) -> bool:
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
            and self.matches_day(when)
        )

    def next_after(self, after: datetime) -> datetime:
        """The first matching minute strictly after ``after``, in its own (wall-clock) time zone."""
        when = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(1_000_000):
            if when.month not in self.months:
                year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
                when = when.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self.matches_day(when):
                when = when.replace(hour=0, minute=0) + timedelta(days=1)
            elif when.hour not in self.hours:
                when = when.replace(minute=0) + timedelta(hours=1)
            elif when.minute not in self.minutes:
                when += timedelta(minutes=1)
            else:
                return when
        raise RuntimeError("cron schedule never fires")  # parse_cron rejects such schedules


def _cron_value(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if text.upper() in names:
        return names.index(text.upper()) + low
    if not text.isascii() or not text.isdigit():
        hint = f" or a name like {names[0]}" if names else ""
        raise ValueError(f"{name} {text!r} is not a number{hint}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is out of range {low}-{high}")
    return value


def _cron_field(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"{name} field {text!r} has an empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isascii() or not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{name} step {step_text!r} is not a number >= 1")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _cron_value(first, name, low, high, names)
            end = _cron_value(last, name, low, high, names)
            if start > end:
                raise ValueError(f"{name} range {base!r} runs backwards")
        else:
            start = _cron_value(base, name, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_cron(text: str) -> CronSchedule:
    """Parse a 5-field cron schedule (or @daily, @hourly, ...); ValueError says why not."""
    spec = text
    if text.strip().startswith("@"):
        macro = _CRON_MACROS.get(text.strip().lower())
        if macro is None:
            raise ValueError(f"unknown macro {text.strip()!r}; expected one of {', '.join(_CRON_MACROS)}")
        spec = macro
    fields = spec.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    parsed = [
        _cron_field(text_field, name, low, high, names)
        for text_field, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True)
    ]
    minutes, hours, days, months, weekdays = parsed
    weekdays = frozenset(d % 7 for d in weekdays)
    either = not fields[2].startswith("*") and not fields[4].startswith("*")
    if not either and not any(d <= _DAYS_IN_MONTH[m - 1] for m in months for d in days):
        raise ValueError("it never fires (no month in it has such a day)")
    return CronSchedule(minutes, hours, days, months, weekdays, either)


# --------------------------------------------------------------------------- YAML reading


def _show(value: object) -> str:
    """A value as the user would recognise it in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class _Ctx:
    """Collects problems; knows where each YAML path came from."""

    entries: list[tuple[int, int, str]] = field(default_factory=list)  # (line, order, message)
    lines: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # YAML path -> env variable
    nodes: int = 0  # YAML nodes expanded so far (aliases can multiply them)

    @property
    def errors(self) -> list[str]:
        """File-level and environment problems first, then the file's in line order."""
        return [message for _, _, message in sorted(self.entries)]

    def add(self, message: str, line: int = 0) -> None:
        self.entries.append((line, len(self.entries), message))

    def line_of(self, path: str) -> int:
        """The line of ``path`` or, for a missing field, of its nearest enclosing section; 0 if none."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
        return 0

    def error(self, path: str, message: str) -> None:
        """Record a problem with ``path``, saying where it came from (its variable or line)."""
        text = f"{path or '<top level>'}: {message}"
        if path in self.sources:
            self.add(f"{text} (from {self.sources[path]})")
            return
        line = self.line_of(path)
        self.add(f"{text} (line {line})" if line else text, line)

    def bad(self, path: str, value: object, expected: str) -> None:
        self.error(path, f"{_show(value)} is not allowed; expected {expected}")


_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000


class _TooLarge(Exception):
    """The document expands to more than _MAX_NODES nodes (an alias bomb, or not a config file)."""


def _node_to_python(
    node: yaml.Node, path: str, ctx: _Ctx, constructor: SafeConstructor, active: set[int]
) -> object:
    if id(node) in active:
        ctx.error(path, "a recursive YAML alias is not allowed")
        return None
    ctx.nodes += 1
    if ctx.nodes > _MAX_NODES:
        raise _TooLarge
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                ctx.add(
                    f"{path or '<top level>'}: YAML merge keys (<<) are not supported (line {line})", line
                )
                continue
            key = constructor.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = _show(key) if isinstance(key_node, yaml.ScalarNode) else "a collection"
                ctx.add(f"{path or '<top level>'}: key {shown} is not a string (line {line})", line)
                continue
            sub = _join(path, key)
            if key in result:
                ctx.add(f"{sub}: duplicate key (lines {ctx.lines[sub]} and {line})", line)
                continue
            ctx.lines[sub] = line
            result[key] = _node_to_python(value_node, sub, ctx, constructor, active)
        active.discard(id(node))
        return result
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        items: list[object] = []
        for index, item_node in enumerate(node.value):
            sub = f"{path}[{index}]"
            ctx.lines[sub] = item_node.start_mark.line + 1
            items.append(_node_to_python(item_node, sub, ctx, constructor, active))
        active.discard(id(node))
        return items
    value: object = constructor.construct_object(node)
    return value


def _yaml_error(name: str, exc: yaml.YAMLError) -> str:
    """``file:line:column: YAML syntax error: problem (context)``, never a traceback."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{name}: YAML syntax error: {exc}"
    mark = exc.problem_mark or exc.context_mark
    if exc.problem == "but found another document":
        return (
            f"{name}:{mark.line + 1 if mark else '?'}: YAML syntax error: a second document starts here; "
            "expected exactly one YAML document"
        )
    message = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        context = exc.context
        if exc.context_mark is not None and exc.context_mark is not mark:
            context += (
                f" that starts at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            )
        message += f" ({context})"
    if mark is None:
        return f"{name}: YAML syntax error: {message}"
    return f"{name}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {message}"


def _read_yaml(path: str, ctx: _Ctx) -> dict[str, object] | None:
    """The file's top-level mapping; None (with an error recorded) if unusable."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        ctx.add(f"{path}: configuration file not found")
        return None
    except IsADirectoryError:
        ctx.add(f"{path}: is a directory, expected a YAML configuration file")
        return None
    except UnicodeDecodeError as exc:
        ctx.add(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return None
    except OSError as exc:
        ctx.add(f"{path}: cannot read the configuration file: {exc.strerror or exc}")
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return {}
        data = _node_to_python(node, "", ctx, SafeConstructor(), set())
    except yaml.YAMLError as exc:
        ctx.add(_yaml_error(path, exc))
        return None
    except RecursionError:
        ctx.add(f"{path}: the YAML is nested too deeply")
        return None
    except _TooLarge:
        ctx.add(f"{path}: the YAML expands to more than {_MAX_NODES} values (too many aliases?)")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        ctx.add(
            f"{path}: {_show(data)} is not allowed at the top level; "
            "expected a mapping of fields like 'logLevel: Normal'"
        )
        return None
    return data


# --------------------------------------------------------------------------- environment

_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
_DELETE: Final = object()


def _parse_env(scalar: _Scalar, text: str) -> object:
    """The value an environment variable puts at the field's path; ValueError if unparseable."""
    if scalar.kind in ("bool", "flag"):
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError("one of true, false, 1, 0, yes, no")
        flag = word in _TRUE
        if scalar.kind == "flag":
            return {} if flag else _DELETE
        return flag
    if scalar.kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("an integer") from None
    if scalar.kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    if scalar.kind == "optstr" and text == "":
        return _DELETE
    return text


def _apply_env(raw: dict[str, object], env: Mapping[str, str], ctx: _Ctx) -> None:
    for scalar in _SCALARS:
        var = env_var_name(scalar.path)
        if var not in env:
            continue
        try:
            value = _parse_env(scalar, env[var])
        except ValueError as exc:
            ctx.add(f"{var}: {_show(env[var])} is not allowed; expected {exc} (sets {scalar.path})")
            continue
        *parents, leaf = scalar.path.split(".")
        node: dict[str, object] = raw
        for part in parents:
            child = node.get(part)
            if child is None:
                if value is _DELETE:
                    break
                child = node[part] = {}
            if not isinstance(child, dict):
                break  # the file's own structural error will be reported
            node = child
        else:
            if value is _DELETE:
                node.pop(leaf, None)
            else:
                node[leaf] = value
            ctx.sources[scalar.path] = var


# --------------------------------------------------------------------------- validation


def _suggest(key: str, known: Iterable[str]) -> str | None:
    def norm(text: str) -> str:
        return text.replace("_", "").replace("-", "").lower()

    candidates = {norm(k): k for k in known}
    if norm(key) in candidates:
        return candidates[norm(key)]
    close = difflib.get_close_matches(norm(key), list(candidates), n=1, cutoff=0.6)
    return candidates[close[0]] if close else None


class _Map:
    """Typed access to one YAML mapping; reports unknown keys on creation."""

    def __init__(
        self,
        ctx: _Ctx,
        path: str,
        data: Mapping[str, object],
        known: tuple[str, ...],
        unsupported: Mapping[str, str] = _NO_UNSUPPORTED,
    ) -> None:
        self.ctx, self.path, self.data = ctx, path, data
        for key in data:
            if key in known:
                continue
            sub = _join(path, key)
            if key in unsupported:
                ctx.error(sub, unsupported[key])
                continue
            suggestion = _suggest(key, known)
            if suggestion:
                ctx.error(sub, f"unknown field; did you mean {suggestion!r}?")
            else:
                ctx.error(sub, f"unknown field; expected one of: {', '.join(known)}")

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def get(self, key: str) -> object:
        return self.data.get(key)

    def mapping(
        self, key: str, known: tuple[str, ...], unsupported: Mapping[str, str] = _NO_UNSUPPORTED
    ) -> _Map:
        value = self.get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.ctx.bad(self.at(key), value, f"a mapping with the fields {', '.join(known)}")
            value = {}
        return _Map(self.ctx, self.at(key), value, known, unsupported)

    def string(self, key: str, default: str) -> str:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            hint = f" (quote it: '{_show(value)}')" if isinstance(value, (bool, int, float)) else ""
            self.ctx.bad(self.at(key), value, f"a string{hint}")
            return default
        return value

    def opt_string(self, key: str, what: str = "a non-empty string", secret: bool = False) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            if secret and value != "":
                self.ctx.error(self.at(key), f"a non-string value is not allowed; expected {what} or null")
            else:
                self.ctx.bad(self.at(key), value, f"{what} or null")
            return None
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key)
        if value is None or value == "":
            return default
        if value in choices:
            assert isinstance(value, str)
            return value
        expected = f"one of {', '.join(choices)}"
        if isinstance(value, str):
            near = _suggest(value, choices)
            if near:
                expected += f" (did you mean {near!r}?)"
        self.ctx.bad(self.at(key), value, expected)
        return default

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.ctx.bad(self.at(key), value, "true or false")
            return default
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.ctx.bad(self.at(key), value, f"an integer >= {minimum}")
            return default
        return value

    def duration(self, key: str, default: float, positive: bool = False) -> float:
        value = self.get(key)
        if value is None:
            return default
        expected = 'a duration with a unit (ns, us, ms, s, m, h) like "30s", "1m30s", "500ms" or "2h"' + (
            " greater than 0" if positive else ""
        )
        if value == 0 and not isinstance(value, bool):
            seconds = 0.0
        elif isinstance(value, str):
            try:
                seconds = parse_duration(value.strip())
            except ValueError:
                self.ctx.bad(self.at(key), value, expected)
                return default
        else:
            self.ctx.bad(self.at(key), value, expected)
            return default
        if seconds < 0 or (positive and seconds == 0):
            self.ctx.bad(self.at(key), value, "a duration " + ("> 0" if positive else ">= 0"))
            return default
        return seconds


def _listen(m: _Map, key: str, default: str | None) -> str | None:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        m.ctx.bad(m.at(key), value, 'host:port, like "127.0.0.1:5000" or "[::1]:5000"')
        return default
    try:
        split_host_port(value)
    except ValueError as exc:
        m.ctx.bad(m.at(key), value, f'host:port, like "127.0.0.1:5000" or "[::1]:5000" ({exc})')
        return default
    return value


def _url(m: _Map, key: str, schemes: tuple[str, ...], example: str, need_port: bool = False) -> str | None:
    value = m.opt_string(key, f"a URL like {example}")
    if value is None:
        return None
    problem = _url_problem(value, schemes, need_port=need_port, allow_path=True)
    if problem:
        m.ctx.bad(m.at(key), value, f"a URL like {example} ({problem})")
        return None
    return value


def _both_or_neither(m: _Map, first: str, second: str, a: object, b: object) -> None:
    if (a is None) != (b is None):
        missing, given = (second, first) if b is None else (first, second)
        m.ctx.error(m.at(missing), f"is required when {given} is set (set both or neither)")


def _requests(top: _Map) -> RequestsConfig:
    requests = top.mapping("requests", ("read", "write"))
    limits = {}
    for kind in ("read", "write"):
        section = requests.mapping(kind, ("maxRunning", "maxInQueue", "maxWaitInQueue"))
        running = section.integer("maxRunning", 0, 0)
        in_queue = section.integer("maxInQueue", 0, 0)
        wait = section.duration("maxWaitInQueue", 0.0)
        if running == 0:
            for key, value in (("maxInQueue", in_queue), ("maxWaitInQueue", wait)):
                if value:
                    section.ctx.error(
                        section.at(key),
                        f"{_show(section.get(key))} has no effect while {section.at('maxRunning')} is 0 "
                        "(unlimited, so nothing ever queues); set maxRunning too, or remove it",
                    )
        limits[kind] = RequestLimits(running, in_queue, wait)
    return RequestsConfig(read=limits["read"], write=limits["write"])


def _storage(top: _Map, replicas: int) -> StorageConfig:
    ctx = top.ctx
    storage = top.mapping("storage", STORAGE_KINDS, _STORAGE_UNSUPPORTED)
    chosen = [
        kind
        for kind in STORAGE_KINDS
        if storage.get(kind) is not None and storage.get(kind) is not False  # emptyDir: false = unset
    ]

    fs = storage.mapping("filesystem", ("rootDirectory",))
    filesystem = FilesystemStorage(fs.opt_string("rootDirectory", "a directory path"))
    pvc_map = storage.mapping("pvc", ("claim",))
    pvc = PvcStorage(pvc_map.opt_string("claim", "a directory path (the claim's mount point)"))

    empty = storage.get("emptyDir")
    if isinstance(empty, dict):
        storage.mapping("emptyDir", ())
    elif empty is not None and not isinstance(empty, bool):
        ctx.bad(storage.at("emptyDir"), empty, "{} (an empty mapping, as in OpenShift) or true")
    if "emptyDir" in chosen and replicas > 1:
        ctx.error(
            storage.at("emptyDir"),
            f"cannot be used with more than 1 replica (replicas is {replicas}): each replica would "
            "have its own blobs; use filesystem, pvc or s3",
        )

    s3_map = storage.mapping(
        "s3",
        (
            "bucket",
            "region",
            "regionEndpoint",
            "accessKey",
            "secretKey",
            "virtualHostedStyle",
            "encrypt",
            "keyPrefix",
        ),
        _S3_UNSUPPORTED,
    )
    bucket = s3_map.string("bucket", "")
    if "s3" in chosen:
        if s3_map.get("bucket") is None:
            ctx.error(s3_map.at("bucket"), "is required with s3 storage; expected a bucket name like hareg")
        elif bucket and (not _BUCKET.match(bucket) or ".." in bucket):
            ctx.bad(
                s3_map.at("bucket"),
                bucket,
                "a bucket name of 3-63 lowercase letters, digits, '.' and '-', "
                "starting and ending with a letter or digit",
            )
        elif not bucket:
            ctx.bad(s3_map.at("bucket"), bucket, "a bucket name like hareg")
    region = s3_map.string("region", S3Storage.region)
    if not region or any(c.isspace() for c in region):
        ctx.bad(s3_map.at("region"), region, "a region name like us-east-1")
    access_key = s3_map.opt_string("accessKey")
    secret_key = s3_map.opt_string("secretKey", secret=True)
    _both_or_neither(s3_map, "accessKey", "secretKey", access_key, secret_key)
    key_prefix = s3_map.string("keyPrefix", "")
    if key_prefix.startswith("/"):
        ctx.bad(s3_map.at("keyPrefix"), key_prefix, "a key prefix that does not start with '/'")
    s3 = S3Storage(
        bucket=bucket,
        region=region,
        region_endpoint=_url(
            s3_map, "regionEndpoint", ("http", "https"), "https://s3.example.com or http://127.0.0.1:18333"
        ),
        access_key=access_key,
        secret_key=secret_key,
        virtual_hosted_style=s3_map.boolean("virtualHostedStyle", False),
        encrypt=s3_map.boolean("encrypt", False),
        key_prefix=key_prefix,
    )

    if len(chosen) > 1:
        described = []
        for kind in chosen:
            var = next((v for p, v in ctx.sources.items() if p.startswith(f"storage.{kind}")), None)
            described.append(f"{kind} (from {var})" if var else kind)
        ctx.error(
            "storage",
            f"{' and '.join(described)} are {'both' if len(chosen) == 2 else 'all'} set; "
            f"expected exactly one of {', '.join(STORAGE_KINDS)}",
        )
    kind = chosen[0] if chosen else "filesystem"
    return StorageConfig(kind=kind, filesystem=filesystem, pvc=pvc, s3=s3, empty_dir=kind == "emptyDir")


def _etcd(top: _Map) -> EtcdConfig:
    ctx = top.ctx
    etcd = top.mapping("etcd", ("endpoints", "prefix", "dialTimeout", "requestTimeout", "tls"))
    raw_endpoints = etcd.get("endpoints")
    if isinstance(raw_endpoints, str):
        raw_endpoints = [item.strip() for item in raw_endpoints.split(",") if item.strip()]
    endpoints: list[str] = []
    example = "http://127.0.0.1:2379"
    if raw_endpoints is not None and not isinstance(raw_endpoints, list):
        ctx.bad(etcd.at("endpoints"), raw_endpoints, f"a list of URLs like {example}")
    elif raw_endpoints:
        for index, item in enumerate(raw_endpoints):
            at = f"{etcd.at('endpoints')}[{index}]"
            if etcd.at("endpoints") in ctx.sources:
                at = etcd.at("endpoints")
            problem = (
                _url_problem(item, ("http", "https"), need_port=True, allow_path=False)
                if isinstance(item, str)
                else "not a string"
            )
            if problem:
                ctx.bad(at, item, f"a URL like {example} ({problem})")
            elif item in endpoints:
                ctx.bad(at, item, "each endpoint once (it is listed twice)")
            else:
                endpoints.append(item)
    schemes = {urlsplit(e).scheme for e in endpoints}
    if len(schemes) > 1:
        ctx.error(etcd.at("endpoints"), "mixes http:// and https://; expected one scheme for all members")

    prefix = etcd.string("prefix", EtcdConfig.prefix)
    if not prefix.startswith("/") or "//" in prefix or not prefix.isprintable() or " " in prefix:
        ctx.bad(etcd.at("prefix"), prefix, 'a key prefix starting with "/", like "/hareg"')

    tls = etcd.mapping("tls", ("caFile", "certFile", "keyFile"))
    ca_file = tls.opt_string("caFile", "a file path")
    cert_file = tls.opt_string("certFile", "a file path")
    key_file = tls.opt_string("keyFile", "a file path")
    _both_or_neither(tls, "certFile", "keyFile", cert_file, key_file)
    if any((ca_file, cert_file, key_file)):
        if not endpoints and not raw_endpoints:
            ctx.error(
                tls.path,
                "is set but etcd.endpoints is empty; the private etcd hareg starts speaks plain HTTP "
                "on 127.0.0.1 (list https:// endpoints, or remove tls)",
            )
        elif schemes == {"http"}:
            ctx.error(tls.path, "is set but the etcd.endpoints use http://; expected https:// endpoints")

    return EtcdConfig(
        endpoints=tuple(endpoints),
        prefix=prefix,
        dial_timeout=etcd.duration("dialTimeout", EtcdConfig.dial_timeout, positive=True),
        request_timeout=etcd.duration("requestTimeout", EtcdConfig.request_timeout, positive=True),
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def _pruner(top: _Map) -> PrunerConfig:
    pruner = top.mapping(
        "pruner",
        ("schedule", "suspend", "keepTagRevisions", "keepYoungerThanDuration", "uploadGracePeriod", "fsck"),
        _PRUNER_UNSUPPORTED,
    )
    fsck = pruner.mapping("fsck", ("schedule", "repair"))
    fsck_schedule = fsck.opt_string("schedule", 'a cron schedule of 5 fields like "0 3 * * SUN"')
    if fsck_schedule is not None:
        try:
            parse_cron(fsck_schedule)
        except ValueError as exc:
            fsck.ctx.bad(
                fsck.at("schedule"),
                fsck_schedule,
                f'a cron schedule of 5 fields like "0 3 * * SUN", or null for no scheduled check ({exc})',
            )
            fsck_schedule = None
    schedule = pruner.string("schedule", PrunerConfig.schedule)
    try:
        parse_cron(schedule)
    except ValueError as exc:
        pruner.ctx.bad(
            pruner.at("schedule"),
            schedule,
            f'a cron schedule of 5 fields like "0 0 * * *" or "*/30 2-4 * * MON-FRI" ({exc})',
        )
        schedule = PrunerConfig.schedule
    return PrunerConfig(
        schedule=schedule,
        suspend=pruner.boolean("suspend", False),
        keep_tag_revisions=pruner.integer("keepTagRevisions", PrunerConfig.keep_tag_revisions, 0),
        keep_younger_than=pruner.duration("keepYoungerThanDuration", PrunerConfig.keep_younger_than),
        upload_grace=pruner.duration("uploadGracePeriod", PrunerConfig.upload_grace, positive=True),
        fsck_schedule=fsck_schedule,
        fsck_repair=fsck.boolean("repair", False),
    )


def _limits(top: _Map) -> LimitsConfig:
    limits = top.mapping(
        "limits",
        (
            "requestHeaderTimeout",
            "idleConnectionTimeout",
            "bodyStallTimeout",
            "maxConnections",
            "maxUploadSessions",
            "maxUploadSessionsPerRepository",
            "maxBlobSize",
            "maxManifestReferences",
            "maxManifestAnnotationBytes",
        ),
    )
    d = LimitsConfig()
    return LimitsConfig(
        request_header_timeout=limits.duration(
            "requestHeaderTimeout", d.request_header_timeout, positive=True
        ),
        idle_connection_timeout=limits.duration(
            "idleConnectionTimeout", d.idle_connection_timeout, positive=True
        ),
        body_stall_timeout=limits.duration("bodyStallTimeout", d.body_stall_timeout, positive=True),
        max_connections=limits.integer("maxConnections", d.max_connections, 0),
        max_upload_sessions=limits.integer("maxUploadSessions", d.max_upload_sessions, 0),
        max_upload_sessions_per_repository=limits.integer(
            "maxUploadSessionsPerRepository", d.max_upload_sessions_per_repository, 0
        ),
        max_blob_size=limits.integer("maxBlobSize", d.max_blob_size, 0),
        max_manifest_references=limits.integer("maxManifestReferences", d.max_manifest_references, 0),
        max_manifest_annotation_bytes=limits.integer(
            "maxManifestAnnotationBytes", d.max_manifest_annotation_bytes, 0
        ),
    )


def advertised_url(configured: str | None, host: str, port: int, host_name: str) -> str:
    """The URL other replicas reach this one at: ``advertiseURL`` if set, else
    ``http://host:port`` of the listener, with ``host_name`` in place of a
    wildcard host (0.0.0.0, ::, empty), which no other machine can reach."""
    if configured:
        return configured.rstrip("/")
    if _wildcard(host):
        host = host_name
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _patterns(m: _Map, key: str) -> tuple[str, ...]:
    """A list of regular expressions, each compiled once here so that a bad one
    is a configuration error, not a refused push."""
    raw = m.get(key)
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [item.strip() for item in raw.split(",") if item.strip()]
    if not isinstance(raw, list):
        m.ctx.bad(m.at(key), raw, 'a list of regular expressions like ["^https://example\\.com/"]')
        return ()
    out: list[str] = []
    for index, item in enumerate(raw):
        at = m.at(key) if m.at(key) in m.ctx.sources else f"{m.at(key)}[{index}]"
        if not isinstance(item, str) or not item:
            m.ctx.bad(at, item, "a non-empty regular expression (a string)")
            continue
        try:
            re.compile(item)
        except re.error as exc:
            m.ctx.bad(at, item, f"a valid regular expression ({exc})")
            continue
        out.append(item)
    return tuple(out)


def _validation(top: _Map) -> ValidationConfig:
    manifests = top.mapping("validation", ("manifests",)).mapping("manifests", ("urls",))
    urls = manifests.mapping("urls", ("allow", "deny"))
    return ValidationConfig(ManifestUrls(allow=_patterns(urls, "allow"), deny=_patterns(urls, "deny")))


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _routes(top: _Map, main_listen: str) -> tuple[Route, ...]:
    ctx = top.ctx
    raw = top.get("routes")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        ctx.bad("routes", raw, "a list of routes, each with name and hostname")
        return ()
    routes: list[Route] = []
    names: dict[str, str] = {}
    listeners: dict[tuple[str, int], str] = {}
    with contextlib.suppress(ValueError):
        listeners[split_host_port(main_listen)] = "listen"
    for index, item in enumerate(raw):
        at = f"routes[{index}]"
        if not isinstance(item, dict):
            ctx.bad(at, item, "a mapping with name, hostname and optionally listen, certificateFile, keyFile")
            continue
        route = _Map(
            ctx, at, item, ("name", "hostname", "certificateFile", "keyFile", "listen"), _ROUTE_UNSUPPORTED
        )
        name = route.opt_string("name", "a route name")
        if name is None and route.get("name") is None:
            ctx.error(route.at("name"), "is required; expected a route name like public")
        elif name is not None and name in names:
            ctx.bad(route.at("name"), name, f"a unique name ({names[name]} has it too)")
        elif name is not None:
            names[name] = route.at("name")
        hostname = route.opt_string("hostname", "a DNS host name")
        if hostname is None and route.get("hostname") is None:
            ctx.error(route.at("hostname"), "is required; expected a DNS host name like registry.example.com")
        elif hostname is not None and _host_problem(hostname):
            ctx.bad(route.at("hostname"), hostname, "a DNS host name like registry.example.com")
        cert = route.opt_string("certificateFile", "a file path")
        key = route.opt_string("keyFile", "a file path")
        _both_or_neither(route, "certificateFile", "keyFile", cert, key)
        listen = _listen(route, "listen", None)
        if listen is not None:
            if route.get("certificateFile") is None and route.get("keyFile") is None:
                ctx.error(
                    route.at("listen"),
                    "a route's own listener serves TLS, so certificateFile and keyFile are required",
                )
            host, port = split_host_port(listen)
            for (other_host, other_port), owner in listeners.items():
                if port == other_port and (host == other_host or _wildcard(host) or _wildcard(other_host)):
                    ctx.bad(route.at("listen"), listen, f"an address not already used by {owner}")
                    break
            else:
                listeners[(host, port)] = route.at("listen")
        elif cert is not None:
            ctx.error(
                route.at("certificateFile"),
                "is only used by a route with its own listener; set listen too, or remove it",
            )
        routes.append(Route(name or "", hostname or "", cert, key, listen))
    return tuple(routes)


def _build(raw: Mapping[str, object], ctx: _Ctx) -> Config:
    top = _Map(
        ctx,
        "",
        raw,
        (
            "managementState",
            "logLevel",
            "httpSecret",
            "listen",
            "advertiseURL",
            "readOnly",
            "disableRedirect",
            "maxListPageSize",
            "replicas",
            "defaultRoute",
            "routes",
            "proxy",
            "requests",
            "storage",
            "etcd",
            "pruner",
            "limits",
            "validation",
        ),
        _TOP_UNSUPPORTED,
    )
    http_secret = top.opt_string("httpSecret", secret=True)
    if http_secret is not None and len(http_secret) < MIN_HTTP_SECRET_LENGTH:
        # Never echo a secret, not even a bad one.
        ctx.error(
            "httpSecret",
            f"a secret of {len(http_secret)} characters is not allowed; expected at least "
            f"{MIN_HTTP_SECRET_LENGTH} (e.g. from `openssl rand -hex 32`), or null to generate one",
        )
    listen = _listen(top, "listen", Config.listen) or Config.listen
    replicas = top.integer("replicas", 1, 1)

    proxy_map = top.mapping("proxy", ("http", "https", "noProxy"))
    proxy = ProxyConfig(
        http=_url(proxy_map, "http", ("http", "https"), "http://proxy.example.com:3128"),
        https=_url(proxy_map, "https", ("http", "https"), "http://proxy.example.com:3128"),
        no_proxy=proxy_map.opt_string("noProxy", "a comma-separated list of host names"),
    )
    return Config(
        management_state=top.choice("managementState", "Managed", MANAGEMENT_STATES),
        log_level=top.choice("logLevel", "Normal", LOG_LEVELS),
        http_secret=http_secret,
        listen=listen,
        advertise_url=_url(top, "advertiseURL", ("http", "https"), "http://registry-0.example.com:5000"),
        read_only=top.boolean("readOnly", False),
        disable_redirect=top.boolean("disableRedirect", False),
        max_list_page_size=top.integer("maxListPageSize", Config.max_list_page_size, 1),
        replicas=replicas,
        default_route=top.boolean("defaultRoute", False),
        routes=_routes(top, listen),
        proxy=proxy,
        requests=_requests(top),
        storage=_storage(top, replicas),
        etcd=_etcd(top),
        pruner=_pruner(top),
        limits=_limits(top),
        validation=_validation(top),
    )


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment (``os.environ`` if ``env`` is None), validate.

    Raises ConfigError listing every problem found.
    """
    ctx = _Ctx()
    raw: dict[str, object] | None = {}
    if path is not None:
        raw = _read_yaml(os.fspath(path), ctx)
    _apply_env(raw if raw is not None else {}, os.environ if env is None else env, ctx)
    if raw is None:
        # The file is unusable: report that and any unparseable variables,
        # but not what validating the defaults plus the environment would say.
        raise ConfigError(ctx.errors)
    config = _build(raw, ctx)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return config


# --------------------------------------------------------------------------- output


def _redact_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:{REDACTED}@{netloc[2]}").geturl()


def config_to_dict(config: Config) -> dict[str, Any]:
    """The configuration as YAML-shaped data (camelCase, durations as strings).

    Secrets (httpSecret, storage.s3.secretKey, a proxy URL's password) are
    shown as "<redacted>" when set.  Without secrets, dumping the result as
    YAML and loading it gives back an equal Config.
    """
    storage = config.storage
    storage_dict: dict[str, Any]
    if storage.kind == "s3":
        s3 = storage.s3
        storage_dict = {
            "s3": {
                "bucket": s3.bucket,
                "region": s3.region,
                "regionEndpoint": s3.region_endpoint,
                "accessKey": s3.access_key,
                "secretKey": REDACTED if s3.secret_key is not None else None,
                "virtualHostedStyle": s3.virtual_hosted_style,
                "encrypt": s3.encrypt,
                "keyPrefix": s3.key_prefix,
            }
        }
    elif storage.kind == "pvc":
        storage_dict = {"pvc": {"claim": storage.pvc.claim}}
    elif storage.kind == "emptyDir":
        storage_dict = {"emptyDir": {}}
    else:
        storage_dict = {"filesystem": {"rootDirectory": storage.filesystem.root_directory}}

    def limits(limit: RequestLimits) -> dict[str, Any]:
        return {
            "maxRunning": limit.max_running,
            "maxInQueue": limit.max_in_queue,
            "maxWaitInQueue": format_duration(limit.max_wait_in_queue),
        }

    etcd, pruner, caps = config.etcd, config.pruner, config.limits
    return {
        "managementState": config.management_state,
        "logLevel": config.log_level,
        "httpSecret": REDACTED if config.http_secret is not None else None,
        "listen": config.listen,
        "advertiseURL": config.advertise_url,
        "readOnly": config.read_only,
        "disableRedirect": config.disable_redirect,
        "maxListPageSize": config.max_list_page_size,
        "replicas": config.replicas,
        "defaultRoute": config.default_route,
        "routes": [
            {
                "name": route.name,
                "hostname": route.hostname,
                "listen": route.listen,
                "certificateFile": route.certificate_file,
                "keyFile": route.key_file,
            }
            for route in config.routes
        ],
        "proxy": {
            "http": _redact_url(config.proxy.http),
            "https": _redact_url(config.proxy.https),
            "noProxy": config.proxy.no_proxy,
        },
        "requests": {"read": limits(config.requests.read), "write": limits(config.requests.write)},
        "storage": storage_dict,
        "etcd": {
            "endpoints": list(etcd.endpoints),
            "prefix": etcd.prefix,
            "dialTimeout": format_duration(etcd.dial_timeout),
            "requestTimeout": format_duration(etcd.request_timeout),
            "tls": {"caFile": etcd.ca_file, "certFile": etcd.cert_file, "keyFile": etcd.key_file},
        },
        "pruner": {
            "schedule": pruner.schedule,
            "suspend": pruner.suspend,
            "keepTagRevisions": pruner.keep_tag_revisions,
            "keepYoungerThanDuration": format_duration(pruner.keep_younger_than),
            "uploadGracePeriod": format_duration(pruner.upload_grace),
            "fsck": {"schedule": pruner.fsck_schedule, "repair": pruner.fsck_repair},
        },
        "limits": {
            "requestHeaderTimeout": format_duration(caps.request_header_timeout),
            "idleConnectionTimeout": format_duration(caps.idle_connection_timeout),
            "bodyStallTimeout": format_duration(caps.body_stall_timeout),
            "maxConnections": caps.max_connections,
            "maxUploadSessions": caps.max_upload_sessions,
            "maxUploadSessionsPerRepository": caps.max_upload_sessions_per_repository,
            "maxBlobSize": caps.max_blob_size,
            "maxManifestReferences": caps.max_manifest_references,
            "maxManifestAnnotationBytes": caps.max_manifest_annotation_bytes,
        },
        "validation": {
            "manifests": {
                "urls": {
                    "allow": list(config.validation.manifest_urls.allow),
                    "deny": list(config.validation.manifest_urls.deny),
                }
            }
        },
    }


def _yaml_scalar(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return json.dumps(value, ensure_ascii=False)


def _emit(data: Mapping[str, Any], path: str, indent: str, out: list[str]) -> None:
    scalars = {s.path: s for s in _SCALARS}
    for key, value in data.items():
        sub = _join(path, key)
        comment = scalars[sub].doc + f" [{env_var_name(sub)}]" if sub in scalars else _SECTION_DOCS.get(sub)
        if comment:
            out.extend(f"{indent}# {line}".rstrip() for line in comment.splitlines())
        if isinstance(value, dict) and value:
            out.append(f"{indent}{key}:")
            _emit(value, sub, indent + "  ", out)
        else:
            out.append(f"{indent}{key}: {_yaml_scalar(value)}")


def defaults_yaml() -> str:
    """The default configuration as commented YAML; it loads back to ``Config()``."""
    out = [
        "# hareg configuration: the OpenShift image registry operator's spec, plus listen,",
        "# etcd and pruner.  Every value below is the default.  null means unset.",
        "# Environment variables override fields: the name is in [brackets] after each field.",
        "# See docs/configuration.md.",
    ]
    _emit(config_to_dict(Config()), "", "", out)
    return "\n".join(out) + "\n"
