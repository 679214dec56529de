"""The table of every scalar configuration field: its YAML path, how an
environment variable sets it, and the comment ``hareg config defaults``
prints above it; and the ``HAREG_...`` variable names derived from the paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from hareg.config.model import MIN_HTTP_SECRET_LENGTH

# Every scalar field: its YAML path, how an environment value is parsed, and
# the comment ``defaults_yaml`` puts above it.  Kinds: "str" (any string
# field, parsed and checked later), "optstr" (empty unsets it), "bool", "int",
# "list" (comma-separated), "flag" (storage.emptyDir: true sets ``{}``).


@dataclass(frozen=True)
class Scalar:
    path: str
    kind: str
    doc: str


SCALARS: Final = (
    Scalar("managementState", "str", "Managed (serve), Unmanaged or Removed."),
    Scalar("logLevel", "str", "Normal, Debug, Trace or TraceAll."),
    Scalar(
        "httpSecret",
        "optstr",
        f"Signs upload state; every replica must share it ({MIN_HTTP_SECRET_LENGTH}+ characters). "
        "null: generated.",
    ),
    Scalar("listen", "str", "host:port of the registry's HTTP listener (empty host: all interfaces)."),
    Scalar(
        "advertiseURL",
        "optstr",
        "URL other replicas reach this one at; null: http://<listen>, or http://<host name>:<port> "
        "when listen is a wildcard (0.0.0.0, [::] or an empty host).",
    ),
    Scalar("readOnly", "bool", "Reject pushes and deletes (405); pulls are unaffected. SIGHUP reloads it."),
    Scalar("disableRedirect", "bool", "Stream blob bytes through the registry instead of redirecting."),
    Scalar(
        "maxListPageSize",
        "int",
        "Most entries in one page of a tag list or the catalog; a larger or absent n gets this many "
        "and a Link to the next page.",
    ),
    Scalar("replicas", "int", "Number of registry replicas (the local cluster starts this many)."),
    Scalar("defaultRoute", "bool", "Accepted for OpenShift compatibility; hareg creates no routes."),
    Scalar("proxy.http", "optstr", "Proxy URL for outgoing HTTP requests."),
    Scalar("proxy.https", "optstr", "Proxy URL for outgoing HTTPS requests."),
    Scalar("proxy.noProxy", "optstr", "Comma-separated hosts that bypass the proxy."),
    Scalar("requests.read.maxRunning", "int", "Pulls served at once (0: unlimited)."),
    Scalar("requests.read.maxInQueue", "int", "Pulls waiting for a slot (0: no queue, 429 at once)."),
    Scalar("requests.read.maxWaitInQueue", "str", "How long a pull may wait (0s: forever)."),
    Scalar("requests.write.maxRunning", "int", "Pushes/deletes served at once (0: unlimited)."),
    Scalar(
        "requests.write.maxInQueue", "int", "Pushes/deletes waiting for a slot (0: no queue, 429 at once)."
    ),
    Scalar("requests.write.maxWaitInQueue", "str", "How long a push may wait (0s: forever)."),
    Scalar("storage.filesystem.rootDirectory", "optstr", "Blob directory; null: <data-dir>/blobs."),
    Scalar("storage.pvc.claim", "optstr", "The claim's mount point (a directory); null: <data-dir>/blobs."),
    Scalar(
        "storage.emptyDir",
        "flag",
        "Scratch blob storage for trials and tests, not for keeps; one replica only.",
    ),
    Scalar("storage.s3.bucket", "str", "Bucket name (required)."),
    Scalar("storage.s3.region", "str", "Bucket region."),
    Scalar("storage.s3.regionEndpoint", "optstr", "Endpoint URL of an S3-compatible store."),
    Scalar("storage.s3.accessKey", "optstr", "null: AWS_ACCESS_KEY_ID and the usual AWS chain."),
    Scalar("storage.s3.secretKey", "optstr", "null: AWS_SECRET_ACCESS_KEY and the usual AWS chain."),
    Scalar("storage.s3.virtualHostedStyle", "bool", "bucket.host/key URLs instead of host/bucket/key."),
    Scalar("storage.s3.encrypt", "bool", "Server-side encryption of stored objects."),
    Scalar("storage.s3.keyPrefix", "str", "Prefix of every object key (no leading '/')."),
    Scalar(
        "storage.s3.uploadBufferBytes", "int", "Bytes of upload buffers a replica holds at most (all pushes)."
    ),
    Scalar("etcd.endpoints", "list", "http(s)://host:port of each member; []: start a private etcd."),
    Scalar("etcd.prefix", "str", "Every hareg key starts with this."),
    Scalar("etcd.dialTimeout", "str", "Connection timeout."),
    Scalar("etcd.requestTimeout", "str", "Timeout of one etcd request, failover included."),
    Scalar(
        "etcd.memberTimeout",
        "str",
        "How long one member may leave a call unanswered before another is asked.",
    ),
    Scalar(
        "etcd.keepaliveTime", "str", "gRPC keepalive ping interval on a busy connection (etcd's minimum: 5s)."
    ),
    Scalar("etcd.keepaliveTimeout", "str", "An unanswered keepalive ping closes the connection after this."),
    Scalar(
        "etcd.electionGrace",
        "str",
        "How long writes wait for etcd to answer again (an election) before answering 503; 0s: at once.",
    ),
    Scalar("etcd.tls.caFile", "optstr", "CA bundle that verifies the members (null: system CAs)."),
    Scalar("etcd.tls.certFile", "optstr", "Client certificate (with keyFile)."),
    Scalar("etcd.tls.keyFile", "optstr", "Client key (with certFile)."),
    Scalar(
        "etcd.maintenance.defragSchedule",
        "str",
        "When every etcd member is defragmented, one at a time: cron, 5 fields, UTC.",
    ),
    Scalar("etcd.maintenance.suspend", "bool", "No scheduled defragmentation and no NOSPACE recovery."),
    Scalar("etcd.maintenance.alarmCheckInterval", "str", "How often each replica asks etcd for its alarms."),
    Scalar(
        "etcd.maintenance.recoverNoSpace",
        "bool",
        "After a NOSPACE alarm: compact, defragment and disarm it once that freed space.",
    ),
    Scalar("etcd.maintenance.defragTimeout", "str", "How long one member's defragmentation may take."),
    Scalar(
        "etcd.maintenance.recoveryInterval",
        "str",
        "While the NOSPACE alarm stays, recovery is retried this often.",
    ),
    Scalar("pruner.schedule", "str", "When garbage collection runs: cron, 5 fields, UTC."),
    Scalar("pruner.suspend", "bool", "Skip scheduled runs."),
    Scalar("pruner.keepTagRevisions", "int", "Tag history entries kept per tag."),
    Scalar("pruner.keepYoungerThanDuration", "str", "Never prune what is younger than this."),
    Scalar("pruner.uploadGracePeriod", "str", "Never delete a blob or upload younger than this."),
    Scalar(
        "pruner.fsck.schedule", "optstr", "When the integrity check runs: cron, 5 fields, UTC; null: never."
    ),
    Scalar("pruner.fsck.repair", "bool", "Quarantine the damaged objects a scheduled check finds."),
    Scalar(
        "limits.requestHeaderTimeout",
        "str",
        "A request's line and headers must arrive within this.",
    ),
    Scalar(
        "limits.idleConnectionTimeout",
        "str",
        "A keep-alive connection idle this long is closed.",
    ),
    Scalar(
        "limits.bodyStallTimeout",
        "str",
        "A request body that sends nothing for this long is dropped (408), its bytes never committed.",
    ),
    Scalar(
        "limits.responseStallTimeout",
        "str",
        "A client that reads none of its answer for this long is disconnected.",
    ),
    Scalar(
        "limits.maxConnections",
        "int",
        "Connections open at once on one replica; more are closed when accepted (0: unlimited).",
    ),
    Scalar(
        "limits.maxUploadSessions", "int", "Upload sessions in progress in the whole registry (0: unlimited)."
    ),
    Scalar(
        "limits.maxUploadSessionsPerRepository",
        "int",
        "Upload sessions in progress per repository (0: unlimited).",
    ),
    Scalar("limits.maxBlobSize", "int", "Largest blob a push may upload, in bytes (0: unlimited)."),
    Scalar(
        "limits.maxManifestReferences",
        "int",
        "Layers, config and index children one manifest may reference (0: unlimited; see docs).",
    ),
    Scalar(
        "limits.maxManifestAnnotationBytes",
        "int",
        "Total bytes of a manifest's annotations, keys and values (0: unlimited; see docs).",
    ),
    Scalar(
        "limits.manifestCacheBytes",
        "int",
        "Bytes of manifest records and inline bodies a replica keeps in memory (0: none; see docs).",
    ),
    Scalar(
        "validation.manifests.urls.allow",
        "list",
        "Regular expressions; a descriptor URL must match one ([]: manifests with urls are refused).",
    ),
    Scalar("validation.manifests.urls.deny", "list", "Regular expressions; a URL matching one is refused."),
    Scalar(
        "auth.disabled",
        "bool",
        "No authentication at all: anyone who reaches the registry may do everything.",
    ),
    Scalar(
        "auth.htpasswd.path",
        "optstr",
        "Users: an htpasswd file of bcrypt entries (htpasswd -B); SIGHUP re-reads it.",
    ),
    Scalar("auth.token.issuer", "optstr", "The external token issuer's iss (with jwks)."),
    Scalar("auth.token.audience", "str", "The service tokens are for (aud, and service in the challenge)."),
    Scalar(
        "auth.token.jwks",
        "optstr",
        "A JWKS file of the external issuer's public keys; null: hareg's tokens only.",
    ),
    Scalar("auth.token.expiry", "str", "How long a token hareg issues is valid."),
    Scalar(
        "auth.token.signingKeyFile",
        "optstr",
        "PEM P-256 key that signs hareg's tokens, the same on every replica; null: generated, kept in etcd.",
    ),
    Scalar(
        "auth.trustedProxies",
        "list",
        "Load balancers (addresses or CIDRs) whose X-Forwarded-For names the client; []: none.",
    ),
)

SECTION_DOCS: Final = MappingProxyType(
    {
        "routes": "Extra names, each optionally served on its own TLS listener:\n"
        "  - name: public\n"
        "    hostname: registry.example.com\n"
        "    listen: 0.0.0.0:5443\n"
        "    certificateFile: /etc/hareg/tls.crt\n"
        "    keyFile: /etc/hareg/tls.key",
        "proxy": "Proxy for the registry's outgoing requests to upstream registries.",
        "pullThrough": "Upstream registries mirrored read-only under a repository prefix\n"
        "(docs/pull-through.md), for example:\n"
        "  - prefix: dockerhub\n"
        "    remote: https://registry-1.docker.io\n"
        "    ttl: 5m\n"
        "    allow: [library/*]",
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
        "    keyPrefix: ''\n"
        "    uploadBufferBytes: 41943040",
        "etcd": "Where metadata lives (OpenShift keeps this outside the registry's spec).",
        "etcd.tls": "TLS to the etcd members (https:// endpoints only).",
        "etcd.maintenance": "etcd's space: defragmentation on a schedule and recovery from its NOSPACE\n"
        "alarm, run by one replica at a time (the pruner's leader).",
        "pruner": "Online garbage collection, run by one replica at a time (the ImagePruner's spec).",
        "pruner.fsck": "The integrity check (hareg fsck) on a schedule, on the pruner leader; off by default.",
        "limits": "Bounds on what any one client can hold: connection timeouts and push caps.",
        "validation": "What a pushed manifest may contain (distribution's validation section).",
        "auth": "Who may do what (docs/security.md). null: no authentication, allowed only when\n"
        "every listener is on a loopback address.  Roles are bound to repository globs:\n"
        "  bindings:\n"
        "    - subject: alice\n"
        "      role: editor\n"
        "      repositories: [team-a/*]\n"
        "    - subject: anonymous\n"
        "      role: viewer\n"
        "      repositories: [public/*]",
    }
)


ENV_PREFIX: Final = "HAREG_"


def env_var_name(path: str) -> str:
    """``requests.write.maxInQueue`` -> ``HAREG_REQUESTS_WRITE_MAX_IN_QUEUE``."""
    words = [re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", part) for part in path.split(".")]
    return ENV_PREFIX + "_".join(words).upper()


def environment_variables() -> tuple[tuple[str, str], ...]:
    """Every ``(variable, YAML path)`` pair that ``load_config`` reads."""
    return tuple((env_var_name(s.path), s.path) for s in SCALARS)
