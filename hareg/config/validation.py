"""Validation of each section of the configuration: from the raw YAML data
(with environment overrides applied) to a ``Config``, every problem recorded
in the ``ErrorContext`` with the field, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

from hareg.config.addresses import host_problem, is_wildcard, split_host_port, url_problem
from hareg.config.context import ErrorContext, Section, show
from hareg.config.cron import parse_cron
from hareg.config.durations import format_duration
from hareg.config.model import (
    AUTH_ROLES,
    DEFAULT_PULL_THROUGH_EXPIRY,
    DEFAULT_PULL_THROUGH_TTL,
    LOG_LEVELS,
    MANAGEMENT_STATES,
    MIN_HTTP_SECRET_LENGTH,
    STORAGE_KINDS,
    AuthConfig,
    BindingConfig,
    Config,
    EtcdConfig,
    EtcdMaintenanceConfig,
    FilesystemStorage,
    LimitsConfig,
    ManifestUrls,
    ProxyConfig,
    PrunerConfig,
    PullThrough,
    PvcStorage,
    RequestLimits,
    RequestsConfig,
    Route,
    S3Storage,
    StorageConfig,
    TokenConfig,
    ValidationConfig,
)

# storage.s3.uploadBufferBytes: at least one part buffer (the S3 driver's part size, 8 MiB).
UPLOAD_BUFFER_MIN: Final = 8 * 1024 * 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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


def _parses(m: Section, key: str, value: str, parse: Callable[[str], object], expected: str) -> bool:
    """True if ``parse`` accepts ``value``; else records why not (its ValueError)."""
    try:
        parse(value)
    except ValueError as exc:
        m.ctx.bad(m.at(key), value, f"{expected} ({exc})")
        return False
    return True


def _listen(m: Section, key: str, default: str | None) -> str | None:
    value = m.get(key)
    expected = 'host:port, like "127.0.0.1:5000" or "[::1]:5000"'
    if value is None:
        return default
    if not isinstance(value, str):
        m.ctx.bad(m.at(key), value, expected)
        return default
    return value if _parses(m, key, value, split_host_port, expected) else default


def _url(m: Section, key: str, schemes: tuple[str, ...], example: str, need_port: bool = False) -> str | None:
    value = m.opt_string(key, f"a URL like {example}")
    if value is None:
        return None
    problem = url_problem(value, schemes, need_port=need_port, allow_path=True)
    if problem:
        m.ctx.bad(m.at(key), value, f"a URL like {example} ({problem})")
        return None
    return value


def _both_or_neither(m: Section, first: str, second: str, a: object, b: object) -> None:
    if (a is None) != (b is None):
        missing, given = (second, first) if b is None else (first, second)
        m.ctx.error(m.at(missing), f"is required when {given} is set (set both or neither)")


def _requests(top: Section) -> RequestsConfig:
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
                        f"{show(section.get(key))} has no effect while {section.at('maxRunning')} is 0 "
                        "(unlimited, so nothing ever queues); set maxRunning too, or remove it",
                    )
        limits[kind] = RequestLimits(running, in_queue, wait)
    return RequestsConfig(read=limits["read"], write=limits["write"])


def _storage(top: Section, replicas: int) -> StorageConfig:
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
            "uploadBufferBytes",
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
        upload_buffer_bytes=s3_map.integer(
            "uploadBufferBytes", S3Storage.upload_buffer_bytes, UPLOAD_BUFFER_MIN
        ),
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


def _etcd(top: Section) -> EtcdConfig:
    ctx = top.ctx
    etcd = top.mapping(
        "etcd",
        (
            "endpoints",
            "prefix",
            "dialTimeout",
            "requestTimeout",
            "memberTimeout",
            "keepaliveTime",
            "keepaliveTimeout",
            "electionGrace",
            "tls",
            "maintenance",
        ),
    )
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
                url_problem(item, ("http", "https"), need_port=True, allow_path=False)
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

    request_timeout = etcd.duration("requestTimeout", EtcdConfig.request_timeout, positive=True)
    member_timeout = etcd.duration("memberTimeout", EtcdConfig.member_timeout, positive=True)
    if 0 < request_timeout <= member_timeout:
        ctx.bad(
            etcd.at("memberTimeout"),
            etcd.get("memberTimeout"),
            f"a duration shorter than etcd.requestTimeout ({format_duration(request_timeout)}): "
            "a call moves to another member within its request timeout",
        )
    return EtcdConfig(
        endpoints=tuple(endpoints),
        prefix=prefix,
        dial_timeout=etcd.duration("dialTimeout", EtcdConfig.dial_timeout, positive=True),
        request_timeout=request_timeout,
        member_timeout=member_timeout,
        keepalive_time=etcd.duration("keepaliveTime", EtcdConfig.keepalive_time, positive=True),
        keepalive_timeout=etcd.duration("keepaliveTimeout", EtcdConfig.keepalive_timeout, positive=True),
        election_grace=etcd.duration("electionGrace", EtcdConfig.election_grace),
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        maintenance=_etcd_maintenance(etcd),
    )


def _etcd_maintenance(etcd: Section) -> EtcdMaintenanceConfig:
    m = etcd.mapping(
        "maintenance",
        (
            "defragSchedule",
            "suspend",
            "alarmCheckInterval",
            "recoverNoSpace",
            "defragTimeout",
            "recoveryInterval",
        ),
    )
    default = EtcdMaintenanceConfig()
    schedule = m.string("defragSchedule", default.defrag_schedule)
    if not _parses(
        m,
        "defragSchedule",
        schedule,
        parse_cron,
        'a cron schedule of 5 fields like "0 2 * * *" (set suspend: true for none)',
    ):
        schedule = default.defrag_schedule
    return EtcdMaintenanceConfig(
        defrag_schedule=schedule,
        suspend=m.boolean("suspend", default.suspend),
        alarm_check_interval=m.duration("alarmCheckInterval", default.alarm_check_interval, positive=True),
        recover_no_space=m.boolean("recoverNoSpace", default.recover_no_space),
        defrag_timeout=m.duration("defragTimeout", default.defrag_timeout, positive=True),
        recovery_interval=m.duration("recoveryInterval", default.recovery_interval, positive=True),
    )


def _pruner(top: Section) -> PrunerConfig:
    pruner = top.mapping(
        "pruner",
        ("schedule", "suspend", "keepTagRevisions", "keepYoungerThanDuration", "uploadGracePeriod", "fsck"),
        _PRUNER_UNSUPPORTED,
    )
    fsck = pruner.mapping("fsck", ("schedule", "repair"))
    fsck_schedule = fsck.opt_string("schedule", 'a cron schedule of 5 fields like "0 3 * * SUN"')
    if fsck_schedule is not None and not _parses(
        fsck,
        "schedule",
        fsck_schedule,
        parse_cron,
        'a cron schedule of 5 fields like "0 3 * * SUN", or null for no scheduled check',
    ):
        fsck_schedule = None
    schedule = pruner.string("schedule", PrunerConfig.schedule)
    if not _parses(
        pruner,
        "schedule",
        schedule,
        parse_cron,
        'a cron schedule of 5 fields like "0 0 * * *" or "*/30 2-4 * * MON-FRI"',
    ):
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


def _limits(top: Section) -> LimitsConfig:
    limits = top.mapping(
        "limits",
        (
            "requestHeaderTimeout",
            "idleConnectionTimeout",
            "bodyStallTimeout",
            "responseStallTimeout",
            "maxConnections",
            "maxUploadSessions",
            "maxUploadSessionsPerRepository",
            "maxBlobSize",
            "maxManifestReferences",
            "maxManifestAnnotationBytes",
            "manifestCacheBytes",
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
        response_stall_timeout=limits.duration(
            "responseStallTimeout", d.response_stall_timeout, positive=True
        ),
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
        manifest_cache_bytes=limits.integer("manifestCacheBytes", d.manifest_cache_bytes, 0),
    )


def _list_items(m: Section, key: str, expected: str) -> list[tuple[str, object]]:
    """The items of a list field (a comma-separated string from an environment
    variable counts), each with the path an error about it names."""
    raw = m.get(key)
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [item.strip() for item in raw.split(",") if item.strip()]
    if not isinstance(raw, list):
        m.ctx.bad(m.at(key), raw, expected)
        return []
    whole = m.at(key) in m.ctx.sources  # set by a variable: name the variable's field
    return [(m.at(key) if whole else f"{m.at(key)}[{index}]", item) for index, item in enumerate(raw)]


def _patterns(m: Section, key: str) -> tuple[str, ...]:
    """A list of regular expressions, each compiled once here so that a bad one
    is a configuration error, not a refused push."""
    out: list[str] = []
    for at, item in _list_items(m, key, 'a list of regular expressions like ["^https://example\\.com/"]'):
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


def _validation(top: Section) -> ValidationConfig:
    manifests = top.mapping("validation", ("manifests",)).mapping("manifests", ("urls",))
    urls = manifests.mapping("urls", ("allow", "deny"))
    return ValidationConfig(ManifestUrls(allow=_patterns(urls, "allow"), deny=_patterns(urls, "deny")))


def _routes(top: Section, main_listen: str) -> tuple[Route, ...]:
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
        route = Section(
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
        elif hostname is not None and host_problem(hostname):
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
                if port == other_port and (
                    host == other_host or is_wildcard(host) or is_wildcard(other_host)
                ):
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


# A repository name prefix as the distribution spec spells names (hareg/registry/names.py).
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_PREFIX = re.compile(rf"^{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*$")
_PULL_THROUGH_FIELDS = (
    "prefix",
    "remote",
    "username",
    "passwordFile",
    "ttl",
    "allow",
    "insecure",
    "caFile",
    "expireAfter",
)


def _pull_through(top: Section) -> tuple[PullThrough, ...]:
    ctx = top.ctx
    raw = top.get("pullThrough")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        ctx.bad("pullThrough", raw, "a list of mirrors, each with prefix and remote")
        return ()
    out: list[PullThrough] = []
    prefixes: dict[str, str] = {}
    for index, item in enumerate(raw):
        at = f"pullThrough[{index}]"
        if not isinstance(item, dict):
            ctx.bad(
                at,
                item,
                "a mapping with prefix, remote and optionally " + ", ".join(_PULL_THROUGH_FIELDS[2:]),
            )
            continue
        m = Section(ctx, at, item, _PULL_THROUGH_FIELDS)
        prefix = m.opt_string("prefix", "a repository name prefix like dockerhub or mirror/quay")
        if prefix is None and m.get("prefix") is None:
            ctx.error(m.at("prefix"), "is required; expected a repository name prefix like dockerhub")
        elif prefix is not None and not _REPO_PREFIX.fullmatch(prefix):
            ctx.bad(
                m.at("prefix"),
                prefix,
                "a repository name prefix of lowercase path components like dockerhub or mirror/quay "
                "(no leading or trailing '/')",
            )
            prefix = None
        elif prefix is not None:
            for other, where in prefixes.items():
                if prefix == other or prefix.startswith(other + "/") or other.startswith(prefix + "/"):
                    ctx.bad(m.at("prefix"), prefix, f"a prefix that does not overlap {where} ({other!r})")
                    break
            prefixes[prefix] = m.at("prefix")
        remote = _url(m, "remote", ("http", "https"), "https://registry-1.docker.io")
        if remote is None and m.get("remote") is None:
            ctx.error(m.at("remote"), "is required; expected a URL like https://registry-1.docker.io")
        elif remote is not None:
            parts = urlsplit(remote)
            if parts.username is not None or parts.password is not None:
                # Never echo what may be a password.
                ctx.error(
                    m.at("remote"),
                    "a URL with credentials is not allowed; expected a URL like https://registry-1.docker.io "
                    "with username and passwordFile set apart",
                )
                remote = None
            elif parts.path not in ("", "/") or parts.query or parts.fragment:
                ctx.bad(
                    m.at("remote"),
                    remote,
                    "the registry's base URL like https://registry-1.docker.io (no path, query or fragment)",
                )
                remote = None
        username = m.opt_string("username", "the upstream user name")
        password_file = m.opt_string("passwordFile", "the path of a file holding the upstream password")
        _both_or_neither(m, "username", "passwordFile", username, password_file)
        ca_file = m.opt_string("caFile", "a file path of PEM CA certificates that verify the remote")
        insecure = m.boolean("insecure", False)
        if insecure and ca_file is not None:
            ctx.error(
                m.at("insecure"),
                "true is not allowed with caFile (the remote is either verified against caFile or not "
                "verified at all); remove one",
            )
        if remote is not None and urlsplit(remote).scheme == "http" and (insecure or ca_file is not None):
            ctx.error(
                m.at("remote"),
                "uses http://, so insecure and caFile have no effect; use https:// or remove them",
            )
        allow: list[str] = []
        raw_allow = m.get("allow")
        expected = 'a list of upstream path globs like ["library/*", "bitnami/*"]'
        if raw_allow is not None and not isinstance(raw_allow, list):
            ctx.bad(m.at("allow"), raw_allow, expected)
        elif raw_allow:
            for number, pattern in enumerate(raw_allow):
                if not isinstance(pattern, str) or not pattern:
                    ctx.bad(f"{m.at('allow')}[{number}]", pattern, "a non-empty glob (a string)")
                else:
                    allow.append(pattern)
        ttl = m.duration("ttl", DEFAULT_PULL_THROUGH_TTL)
        expire_after = m.duration("expireAfter", DEFAULT_PULL_THROUGH_EXPIRY)
        if prefix is not None and remote is not None:
            out.append(
                PullThrough(
                    prefix=prefix,
                    remote=remote.rstrip("/"),
                    username=username,
                    password_file=password_file,
                    ttl=ttl,
                    allow=tuple(allow),
                    insecure=insecure,
                    ca_file=ca_file,
                    expire_after=expire_after,
                )
            )
    return tuple(out)


def _bindings(auth: Section) -> tuple[BindingConfig, ...]:
    ctx = auth.ctx
    raw = auth.get("bindings")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        ctx.bad(auth.at("bindings"), raw, "a list of bindings, each with subject, role and repositories")
        return ()
    out: list[BindingConfig] = []
    for index, item in enumerate(raw):
        at = f"{auth.at('bindings')}[{index}]"
        if not isinstance(item, dict):
            ctx.bad(at, item, "a mapping with subject, role and repositories")
            continue
        binding = Section(ctx, at, item, ("subject", "role", "repositories"))
        subject = binding.opt_string("subject", "a user name, or anonymous")
        if subject is None and binding.get("subject") is None:
            ctx.error(binding.at("subject"), "is required; expected a user name, or anonymous")
        role = binding.get("role")
        if role is None:
            ctx.error(binding.at("role"), f"is required; expected one of {', '.join(AUTH_ROLES)}")
        elif role not in AUTH_ROLES:
            binding.choice("role", AUTH_ROLES[0], AUTH_ROLES)  # records the error, with a suggestion
            role = None
        patterns: list[str] = []
        repos = binding.get("repositories")
        expected = 'a list of repository globs like ["team-a/*", "library/ubuntu"]'
        if repos is None:
            if role is not None and role != "cluster-admin":
                ctx.error(binding.at("repositories"), f"is required for role {role}; expected {expected}")
        elif not isinstance(repos, list):
            ctx.bad(binding.at("repositories"), repos, expected)
        else:
            for number, pattern in enumerate(repos):
                if not isinstance(pattern, str) or not pattern:
                    ctx.bad(f"{binding.at('repositories')}[{number}]", pattern, "a non-empty glob (a string)")
                else:
                    patterns.append(pattern)
        if subject is not None and isinstance(role, str):
            out.append(BindingConfig(subject, role, tuple(patterns)))
    return tuple(out)


def _networks(m: Section, key: str) -> tuple[str, ...]:
    """A list of IP networks (CIDR) or addresses, each checked here."""
    out: list[str] = []
    expected = 'a list of addresses or CIDR networks like ["127.0.0.1/32", "10.0.0.0/8"]'
    for at, item in _list_items(m, key, expected):
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            m.ctx.bad(at, item, "an IP address or CIDR network like 10.0.0.0/8")
    return tuple(out)


def _auth(top: Section) -> AuthConfig | None:
    raw = top.get("auth")
    if raw is None:
        return None
    auth = top.mapping("auth", ("disabled", "htpasswd", "token", "bindings", "trustedProxies"))
    htpasswd = auth.mapping("htpasswd", ("path",))
    token = auth.mapping("token", ("issuer", "audience", "jwks", "expiry", "signingKeyFile"))
    issuer = token.opt_string("issuer", "the external issuer's iss claim")
    jwks = token.opt_string("jwks", "a file of the external issuer's public keys (JWKS)")
    _both_or_neither(token, "jwks", "issuer", jwks, issuer)
    return AuthConfig(
        disabled=auth.boolean("disabled", False),
        htpasswd_path=htpasswd.opt_string("path", "the path of an htpasswd file (bcrypt entries)"),
        token=TokenConfig(
            issuer=issuer,
            audience=token.string("audience", TokenConfig.audience) or TokenConfig.audience,
            jwks=jwks,
            expiry=token.duration("expiry", TokenConfig.expiry, positive=True),
            signing_key_file=token.opt_string("signingKeyFile", "the path of a PEM P-256 private key"),
        ),
        bindings=_bindings(auth),
        trusted_proxies=_networks(auth, "trustedProxies"),
    )


def build_config(raw: Mapping[str, object], ctx: ErrorContext) -> Config:
    top = Section(
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
            "pullThrough",
            "requests",
            "storage",
            "etcd",
            "pruner",
            "limits",
            "validation",
            "auth",
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
        pull_through=_pull_through(top),
        requests=_requests(top),
        storage=_storage(top, replicas),
        etcd=_etcd(top),
        pruner=_pruner(top),
        limits=_limits(top),
        validation=_validation(top),
        auth=_auth(top),
    )
