"""The configuration's typed model: frozen dataclasses, one per YAML section,
with the defaults ``docs/configuration.md`` documents.  Nothing here reads
YAML or the environment (``reader.py`` does), so any layer may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

MANAGEMENT_STATES: Final = ("Managed", "Unmanaged", "Removed")
LOG_LEVELS: Final = ("Normal", "Debug", "Trace", "TraceAll")
STORAGE_KINDS: Final = ("filesystem", "pvc", "emptyDir", "s3")
MIN_HTTP_SECRET_LENGTH: Final = 32


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


DEFAULT_PULL_THROUGH_TTL: Final = 300.0
# Mirrored tags not pulled for this long are expired by the pruner (0: never).
DEFAULT_PULL_THROUGH_EXPIRY: Final = 7 * 24 * 3600.0


@dataclass(frozen=True)
class PullThrough:
    """One mirrored upstream: pulls of ``<prefix>/<path>:<ref>`` are served
    from ``<remote>/<path>:<ref>`` (docs/pull-through.md).  ``allow``: globs of
    the upstream paths that may be pulled (empty: every path)."""

    prefix: str
    remote: str
    username: str | None = None
    password_file: str | None = None
    ttl: float = DEFAULT_PULL_THROUGH_TTL
    allow: tuple[str, ...] = ()
    insecure: bool = False
    ca_file: str | None = None
    expire_after: float = DEFAULT_PULL_THROUGH_EXPIRY


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
    # The bytes every upload's part buffers share on a replica (back-pressure past it).
    upload_buffer_bytes: int = 40 * 1024 * 1024


@dataclass(frozen=True)
class StorageConfig:
    kind: str = "filesystem"  # one of STORAGE_KINDS
    filesystem: FilesystemStorage = field(default_factory=FilesystemStorage)
    pvc: PvcStorage = field(default_factory=PvcStorage)
    s3: S3Storage = field(default_factory=S3Storage)
    empty_dir: bool = False  # True exactly when kind == "emptyDir"


@dataclass(frozen=True)
class EtcdMaintenanceConfig:
    """hareg's upkeep of etcd's space (hareg/registry/etcd_maintenance.py)."""

    # Daily at 02:00 UTC: two hours after the pruner's default run (00:00), so
    # the space its deletions freed is given back.
    defrag_schedule: str = "0 2 * * *"
    suspend: bool = False  # no scheduled defragmentation and no NOSPACE recovery (etcdctl instead)
    alarm_check_interval: float = 10.0  # how often every replica asks etcd for its alarms
    recover_no_space: bool = True  # compact, defragment and disarm after a NOSPACE alarm
    # One member's defragmentation (etcd rewrites its whole file, about 10 s
    # per GiB on an SSD); past this the pass stops.
    defrag_timeout: float = 300.0
    recovery_interval: float = 60.0  # while the alarm stays raised, recovery is tried this often


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ()  # empty: start a private etcd child process
    prefix: str = "/hareg"
    dial_timeout: float = 5.0
    request_timeout: float = 5.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # How long one member may leave a call unanswered before the client turns
    # to another (hareg/kv/etcd.py): what a frozen member costs a call.
    member_timeout: float = 0.5
    keepalive_time: float = 5.0  # etcd refuses pings more often than its --grpc-keepalive-min-time (5s)
    keepalive_timeout: float = 1.0
    # How long writes wait for etcd to answer again (an election) before they
    # answer 503: longer is a quorum loss, and writes then fail at once.
    election_grace: float = 2.0
    maintenance: EtcdMaintenanceConfig = field(default_factory=EtcdMaintenanceConfig)


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
# guard, the repository, the immutability rule) and 2 per tag; it writes one
# reverse-index entry per reference, up to 4 more keys (the manifest, its blob
# record, the repository, the referrers entry) and 3 per tag.  etcd refuses a
# transaction with more than --max-txn-ops compares or writes (128 by default
# since etcd 3.3); 100 references leave room for 8 tags in one push.
DEFAULT_MAX_MANIFEST_REFERENCES: Final = 100
# A manifest's annotations are stored in its body (inline up to 4 KiB, else in
# the blob store) and, with a subject, in its referrers entry; 256 KiB keeps the
# transaction under etcd's --max-request-bytes (1.5 MiB by default) with room
# for the references.
DEFAULT_MAX_MANIFEST_ANNOTATION_BYTES: Final = 256 * 1024
# About 8,000 small (~1 KB) manifests' records, or 64 of the largest inline ones.
DEFAULT_MANIFEST_CACHE_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class LimitsConfig:
    """What one client can hold: timeouts (seconds, > 0) and caps (0: no cap)."""

    request_header_timeout: float = 60.0
    idle_connection_timeout: float = 75.0
    body_stall_timeout: float = 60.0
    response_stall_timeout: float = 60.0
    max_connections: int = 4096
    max_upload_sessions: int = 10_000
    max_upload_sessions_per_repository: int = 1_000
    max_blob_size: int = 0
    max_manifest_references: int = DEFAULT_MAX_MANIFEST_REFERENCES
    max_manifest_annotation_bytes: int = DEFAULT_MAX_MANIFEST_ANNOTATION_BYTES
    # The bytes of manifest records (with their inline bodies) each replica
    # keeps in memory, least recently used first out (hareg/metadata/cache.py).
    manifest_cache_bytes: int = DEFAULT_MANIFEST_CACHE_BYTES


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


AUTH_ROLES: Final = ("viewer", "editor", "admin", "cluster-admin")
DEFAULT_TOKEN_EXPIRY: Final = 300.0


@dataclass(frozen=True)
class TokenConfig:
    """Bearer tokens: hareg's own (``audience``, ``expiry``, the signing key)
    and, with ``jwks`` and ``issuer``, an external issuer's."""

    issuer: str | None = None  # the external issuer's iss; required with jwks
    audience: str = "hareg"  # the service tokens are for: aud of hareg's own and of external tokens
    jwks: str | None = None  # a file of the external issuer's public keys (JWKS)
    expiry: float = DEFAULT_TOKEN_EXPIRY
    signing_key_file: str | None = None  # PEM P-256 key; None: generated once, kept in etcd


@dataclass(frozen=True)
class BindingConfig:
    subject: str
    role: str  # one of AUTH_ROLES
    repositories: tuple[str, ...] = ()  # glob patterns (cluster-admin: every repository)


@dataclass(frozen=True)
class AuthConfig:
    disabled: bool = False
    htpasswd_path: str | None = None
    token: TokenConfig = field(default_factory=TokenConfig)
    bindings: tuple[BindingConfig, ...] = ()
    # Load balancers whose X-Forwarded-For is believed (CIDRs): the client
    # address the failed-login limit and the audit log use.
    trusted_proxies: tuple[str, ...] = ()


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
    pull_through: tuple[PullThrough, ...] = ()
    requests: RequestsConfig = field(default_factory=RequestsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    # None: no auth section (allowed on loopback listeners only, see hareg serve).
    auth: AuthConfig | None = None


class ConfigError(Exception):
    """Everything wrong with a configuration; ``str()`` gives one problem a line."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)
