"""The configuration as YAML-shaped data (``hareg config`` and the cluster's
replica file) and the commented listing of every field with its default
(``hareg config defaults``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from hareg.config.context import join_path
from hareg.config.durations import format_duration
from hareg.config.fields import SCALARS, SECTION_DOCS, env_var_name
from hareg.config.model import AuthConfig, Config, RequestLimits

REDACTED: Final = "<redacted>"


def _redact_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:{REDACTED}@{netloc[2]}").geturl()


def _auth(auth: AuthConfig | None) -> dict[str, Any] | None:
    if auth is None:
        return None
    token = auth.token
    return {
        "disabled": auth.disabled,
        "htpasswd": {"path": auth.htpasswd_path},
        "token": {
            "issuer": token.issuer,
            "audience": token.audience,
            "jwks": token.jwks,
            "expiry": format_duration(token.expiry),
            "signingKeyFile": token.signing_key_file,
        },
        "bindings": [
            {"subject": b.subject, "role": b.role, "repositories": list(b.repositories)}
            for b in auth.bindings
        ],
        "trustedProxies": list(auth.trusted_proxies),
    }


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
                "uploadBufferBytes": s3.upload_buffer_bytes,
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
        "pullThrough": [
            {
                "prefix": mirror.prefix,
                "remote": mirror.remote,
                "username": mirror.username,
                "passwordFile": mirror.password_file,
                "ttl": format_duration(mirror.ttl),
                "allow": list(mirror.allow),
                "insecure": mirror.insecure,
                "caFile": mirror.ca_file,
                "expireAfter": format_duration(mirror.expire_after),
            }
            for mirror in config.pull_through
        ],
        "requests": {"read": limits(config.requests.read), "write": limits(config.requests.write)},
        "storage": storage_dict,
        "etcd": {
            "endpoints": list(etcd.endpoints),
            "prefix": etcd.prefix,
            "dialTimeout": format_duration(etcd.dial_timeout),
            "requestTimeout": format_duration(etcd.request_timeout),
            "memberTimeout": format_duration(etcd.member_timeout),
            "keepaliveTime": format_duration(etcd.keepalive_time),
            "keepaliveTimeout": format_duration(etcd.keepalive_timeout),
            "electionGrace": format_duration(etcd.election_grace),
            "tls": {"caFile": etcd.ca_file, "certFile": etcd.cert_file, "keyFile": etcd.key_file},
            "maintenance": {
                "defragSchedule": etcd.maintenance.defrag_schedule,
                "suspend": etcd.maintenance.suspend,
                "alarmCheckInterval": format_duration(etcd.maintenance.alarm_check_interval),
                "recoverNoSpace": etcd.maintenance.recover_no_space,
                "defragTimeout": format_duration(etcd.maintenance.defrag_timeout),
                "recoveryInterval": format_duration(etcd.maintenance.recovery_interval),
            },
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
            "responseStallTimeout": format_duration(caps.response_stall_timeout),
            "maxConnections": caps.max_connections,
            "maxUploadSessions": caps.max_upload_sessions,
            "maxUploadSessionsPerRepository": caps.max_upload_sessions_per_repository,
            "maxBlobSize": caps.max_blob_size,
            "maxManifestReferences": caps.max_manifest_references,
            "maxManifestAnnotationBytes": caps.max_manifest_annotation_bytes,
            "manifestCacheBytes": caps.manifest_cache_bytes,
        },
        "validation": {
            "manifests": {
                "urls": {
                    "allow": list(config.validation.manifest_urls.allow),
                    "deny": list(config.validation.manifest_urls.deny),
                }
            }
        },
        "auth": _auth(config.auth),
    }


def _yaml_scalar(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return json.dumps(value, ensure_ascii=False)


def _emit(data: Mapping[str, Any], path: str, indent: str, out: list[str]) -> None:
    scalars = {s.path: s for s in SCALARS}
    for key, value in data.items():
        sub = join_path(path, key)
        comment = scalars[sub].doc + f" [{env_var_name(sub)}]" if sub in scalars else SECTION_DOCS.get(sub)
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
