"""hareg.config.validation: each section's valid and invalid values, every message naming the
field, the value and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hareg.config.model import ConfigError, EtcdConfig, RequestLimits, Route, S3Storage

from .support import DOCS, SECRET, errors_of, load, nested


@pytest.mark.parametrize(
    ("data", "attribute", "expected"),
    [
        ({"managementState": "Unmanaged"}, "management_state", "Unmanaged"),
        ({"managementState": "Removed"}, "management_state", "Removed"),
        ({"logLevel": "TraceAll"}, "log_level", "TraceAll"),
        ({"logLevel": ""}, "log_level", "Normal"),
        ({"httpSecret": SECRET}, "http_secret", SECRET),
        ({"listen": "0.0.0.0:8080"}, "listen", "0.0.0.0:8080"),
        ({"listen": ":5000"}, "listen", ":5000"),
        ({"listen": "[::1]:5000"}, "listen", "[::1]:5000"),
        ({"readOnly": True}, "read_only", True),
        ({"disableRedirect": True}, "disable_redirect", True),
        ({"replicas": 3}, "replicas", 3),
        ({"defaultRoute": True}, "default_route", True),
        ({"proxy": {"http": "http://proxy:3128"}}, "proxy.http", "http://proxy:3128"),
        ({"proxy": {"https": "https://u:p@proxy:3128"}}, "proxy.https", "https://u:p@proxy:3128"),
        ({"proxy": {"noProxy": "localhost,.svc"}}, "proxy.no_proxy", "localhost,.svc"),
        ({"requests": {"read": {"maxRunning": 100}}}, "requests.read.max_running", 100),
        (
            {"requests": {"write": {"maxRunning": 5, "maxInQueue": 10, "maxWaitInQueue": "1m30s"}}},
            "requests.write",
            RequestLimits(5, 10, 90.0),
        ),
        ({"requests": {"read": {"maxRunning": 1, "maxWaitInQueue": 0}}}, "requests.read.max_wait_in_queue", 0),
        ({"storage": {"filesystem": {"rootDirectory": "/srv/blobs"}}}, "storage.filesystem.root_directory",
         "/srv/blobs"),
        ({"storage": {"filesystem": {}}}, "storage.kind", "filesystem"),
        ({"storage": {"pvc": {"claim": "/mnt/claim"}}}, "storage.pvc.claim", "/mnt/claim"),
        ({"storage": {"pvc": {}}}, "storage.kind", "pvc"),
        ({"storage": {"emptyDir": {}}}, "storage.kind", "emptyDir"),
        ({"storage": {"emptyDir": {}}}, "storage.empty_dir", True),
        ({"storage": {"emptyDir": True}}, "storage.kind", "emptyDir"),
        ({"storage": {"emptyDir": False}}, "storage.kind", "filesystem"),
        ({"storage": {"s3": {"bucket": "hareg"}}}, "storage.s3", S3Storage(bucket="hareg")),
        (
            {"storage": {"s3": {"bucket": "my.bucket-1", "region": "eu-west-1",
                                "regionEndpoint": "http://127.0.0.1:18333", "accessKey": "a", "secretKey": "b",
                                "virtualHostedStyle": True, "encrypt": True, "keyPrefix": "reg/"}}},
            "storage.s3",
            S3Storage("my.bucket-1", "eu-west-1", "http://127.0.0.1:18333", "a", "b", True, True, "reg/"),
        ),
        ({"etcd": {"endpoints": ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]}}, "etcd.endpoints",
         ("http://127.0.0.1:2379", "http://127.0.0.2:2379")),
        ({"etcd": {"endpoints": "http://a:1,http://b:2"}}, "etcd.endpoints", ("http://a:1", "http://b:2")),
        ({"etcd": {"endpoints": ["https://[::1]:2379"]}}, "etcd.endpoints", ("https://[::1]:2379",)),
        ({"etcd": {"prefix": "/other/prefix"}}, "etcd.prefix", "/other/prefix"),
        ({"etcd": {"prefix": "/"}}, "etcd.prefix", "/"),
        ({"etcd": {"dialTimeout": "250ms"}}, "etcd.dial_timeout", 0.25),
        ({"etcd": {"requestTimeout": "1m"}}, "etcd.request_timeout", 60.0),
        ({"etcd": {"memberTimeout": "250ms"}}, "etcd.member_timeout", 0.25),
        ({"etcd": {"keepaliveTime": "10s"}}, "etcd.keepalive_time", 10.0),
        ({"etcd": {"keepaliveTimeout": "2s"}}, "etcd.keepalive_timeout", 2.0),
        (
            {"etcd": {"endpoints": ["https://e:2379"],
                      "tls": {"caFile": "/ca.pem", "certFile": "/c.pem", "keyFile": "/k.pem"}}},
            "etcd",
            EtcdConfig(("https://e:2379",), "/hareg", 5.0, 5.0, "/ca.pem", "/c.pem", "/k.pem"),
        ),
        ({"etcd": {"endpoints": ["https://e:2379"], "tls": {"caFile": "/ca.pem"}}}, "etcd.ca_file", "/ca.pem"),
        ({"pruner": {"schedule": "*/30 2-4 * * MON-FRI"}}, "pruner.schedule", "*/30 2-4 * * MON-FRI"),
        ({"pruner": {"suspend": True}}, "pruner.suspend", True),
        ({"pruner": {"keepTagRevisions": 0}}, "pruner.keep_tag_revisions", 0),
        ({"pruner": {"keepYoungerThanDuration": "60m"}}, "pruner.keep_younger_than", 3600.0),
        ({"pruner": {"keepYoungerThanDuration": "0s"}}, "pruner.keep_younger_than", 0.0),
        ({"pruner": {"uploadGracePeriod": "2h"}}, "pruner.upload_grace", 7200.0),
        ({"pruner": {"fsck": {"schedule": "0 4 * * SUN"}}}, "pruner.fsck_schedule", "0 4 * * SUN"),
        ({"pruner": {"fsck": {"schedule": None, "repair": True}}}, "pruner.fsck_schedule", None),
        ({"pruner": {"fsck": {"repair": True}}}, "pruner.fsck_repair", True),
        ({"etcd": {"maintenance": {"defragSchedule": "30 3 * * SUN"}}}, "etcd.maintenance.defrag_schedule",
         "30 3 * * SUN"),
        ({"etcd": {"maintenance": {"suspend": True}}}, "etcd.maintenance.suspend", True),
        ({"etcd": {"maintenance": {"alarmCheckInterval": "30s"}}}, "etcd.maintenance.alarm_check_interval", 30.0),
        ({"etcd": {"maintenance": {"recoverNoSpace": False}}}, "etcd.maintenance.recover_no_space", False),
        ({"etcd": {"maintenance": {"defragTimeout": "10m"}}}, "etcd.maintenance.defrag_timeout", 600.0),
        ({"etcd": {"maintenance": {"recoveryInterval": "5m"}}}, "etcd.maintenance.recovery_interval", 300.0),
        ({"advertiseURL": "http://registry-0.example.com:5000/"}, "advertise_url",
         "http://registry-0.example.com:5000/"),
        ({"limits": {"requestHeaderTimeout": "5s"}}, "limits.request_header_timeout", 5.0),
        ({"limits": {"idleConnectionTimeout": "2m"}}, "limits.idle_connection_timeout", 120.0),
        ({"limits": {"bodyStallTimeout": "500ms"}}, "limits.body_stall_timeout", 0.5),
        ({"limits": {"maxUploadSessions": 0}}, "limits.max_upload_sessions", 0),
        ({"limits": {"maxConnections": 100}}, "limits.max_connections", 100),
        ({"limits": {"maxUploadSessionsPerRepository": 5}}, "limits.max_upload_sessions_per_repository", 5),
        ({"limits": {"maxBlobSize": 1 << 40}}, "limits.max_blob_size", 1 << 40),
        ({"limits": {"maxManifestReferences": 1000}}, "limits.max_manifest_references", 1000),
        ({"limits": {"manifestCacheBytes": 0}}, "limits.manifest_cache_bytes", 0),
        ({"limits": {"maxManifestAnnotationBytes": 0}}, "limits.max_manifest_annotation_bytes", 0),
        (
            {"routes": [{"name": "public", "hostname": "registry.example.com"}]},
            "routes",
            (Route("public", "registry.example.com"),),
        ),
        (
            {"routes": [{"name": "tls", "hostname": "r.example.com", "listen": "127.0.0.1:5443",
                         "certificateFile": "/tls.crt", "keyFile": "/tls.key"}]},
            "routes",
            (Route("tls", "r.example.com", "/tls.crt", "/tls.key", "127.0.0.1:5443"),),
        ),
    ],
)  # fmt: skip
def test_valid_values(tmp_path: Path, data: dict[str, Any], attribute: str, expected: object) -> None:
    value: Any = load(tmp_path, data)
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected


def test_yaml_scalars_as_written(tmp_path: Path) -> None:
    text = "readOnly: yes\nreplicas: 0x2\nlogLevel: 'Debug'\npruner:\n  keepYoungerThanDuration: 90s\n"
    config = load(tmp_path, text)
    assert (config.read_only, config.replicas, config.log_level) == (True, 2, "Debug")
    assert config.pruner.keep_younger_than == 90.0


# --------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"managementState": "Force"},
         'managementState: "Force" is not allowed; expected one of Managed, Unmanaged, Removed'),
        ({"managementState": 1}, "managementState: 1 is not allowed; expected one of Managed"),
        ({"logLevel": "debug"},
         "logLevel: \"debug\" is not allowed; expected one of Normal, Debug, Trace, TraceAll "
         "(did you mean 'Debug'?)"),
        ({"logLevel": "Verbose"}, 'logLevel: "Verbose" is not allowed; expected one of Normal, Debug'),
        ({"httpSecret": ""}, 'httpSecret: "" is not allowed; expected a non-empty string or null'),
        ({"httpSecret": 12345}, "httpSecret: a non-string value is not allowed"),
        ({"listen": "localhost"}, 'listen: "localhost" is not allowed; expected host:port'),
        ({"listen": "localhost"}, "the port is missing"),
        ({"listen": "1.2.3.4:70000"}, "port 70000 is out of range 1-65535"),
        ({"listen": "1.2.3.4:0"}, "port 0 is out of range 1-65535"),
        ({"listen": "no_such host:80"}, "is not a valid host name"),
        ({"listen": 5000}, "listen: 5000 is not allowed; expected host:port"),
        ({"readOnly": "yes please"}, 'readOnly: "yes please" is not allowed; expected true or false'),
        ({"readOnly": "true"}, 'readOnly: "true" is not allowed; expected true or false'),
        ({"disableRedirect": 1}, "disableRedirect: 1 is not allowed; expected true or false"),
        ({"defaultRoute": None, "replicas": 0}, "replicas: 0 is not allowed; expected an integer >= 1"),
        ({"replicas": -1}, "replicas: -1 is not allowed; expected an integer >= 1"),
        ({"replicas": "2"}, 'replicas: "2" is not allowed; expected an integer >= 1'),
        ({"replicas": 1.5}, "replicas: 1.5 is not allowed; expected an integer >= 1"),
        ({"replicas": True}, "replicas: true is not allowed; expected an integer >= 1"),
        ({"defaultRoute": "no"}, 'defaultRoute: "no" is not allowed; expected true or false'),
        ({"maxListPageSize": 0}, "maxListPageSize: 0 is not allowed; expected an integer >= 1"),
        ({"maxListPageSize": "10"}, 'maxListPageSize: "10" is not allowed; expected an integer >= 1'),
        ({"proxy": "http://proxy:3128"}, 'proxy: "http://proxy:3128" is not allowed; expected a mapping'),
        ({"proxy": {"http": "proxy:3128"}}, 'proxy.http: "proxy:3128" is not allowed; expected a URL'),
        ({"proxy": {"https": "ftp://proxy"}}, "the scheme must be http:// or https://"),
        ({"proxy": {"noProxy": ["a", "b"]}}, "proxy.noProxy: a list is not allowed"),
        ({"requests": {"read": {"maxRunning": -5}}},
         "requests.read.maxRunning: -5 is not allowed; expected an integer >= 0"),
        ({"requests": {"write": {"maxRunning": 1, "maxInQueue": -1}}},
         "requests.write.maxInQueue: -1 is not allowed; expected an integer >= 0"),
        ({"requests": {"write": {"maxRunning": 1, "maxWaitInQueue": "30"}}},
         'requests.write.maxWaitInQueue: "30" is not allowed; expected a duration with a unit'),
        ({"requests": {"write": {"maxRunning": 1, "maxWaitInQueue": 30}}},
         "requests.write.maxWaitInQueue: 30 is not allowed; expected a duration"),
        ({"requests": {"write": {"maxRunning": 1, "maxWaitInQueue": "-1s"}}},
         'requests.write.maxWaitInQueue: "-1s" is not allowed; expected a duration >= 0'),
        ({"requests": {"read": {"maxInQueue": 10}}},
         "requests.read.maxInQueue: 10 has no effect while requests.read.maxRunning is 0"),
        ({"requests": {"read": {"maxWaitInQueue": "5s"}}},
         'requests.read.maxWaitInQueue: "5s" has no effect while requests.read.maxRunning is 0'),
        ({"requests": {"reads": {}}}, "requests.reads: unknown field; did you mean 'read'?"),
        ({"storage": {"s3": {}}}, "storage.s3.bucket: is required with s3 storage"),
        ({"storage": {"s3": {"bucket": "My_Bucket"}}},
         'storage.s3.bucket: "My_Bucket" is not allowed; expected a bucket name of 3-63 lowercase'),
        ({"storage": {"s3": {"bucket": "bkt", "region": ""}}},
         'storage.s3.region: "" is not allowed; expected a region name'),
        ({"storage": {"s3": {"bucket": "hareg", "regionEndpoint": "s3.example.com"}}},
         'storage.s3.regionEndpoint: "s3.example.com" is not allowed; expected a URL like'),
        ({"storage": {"s3": {"bucket": "hareg", "accessKey": "AK"}}},
         "storage.s3.secretKey: is required when accessKey is set (set both or neither)"),
        ({"storage": {"s3": {"bucket": "hareg", "secretKey": "SK"}}},
         "storage.s3.accessKey: is required when secretKey is set"),
        ({"storage": {"s3": {"bucket": "hareg", "keyPrefix": "/x"}}},
         'storage.s3.keyPrefix: "/x" is not allowed; expected a key prefix that does not start with'),
        ({"storage": {"s3": {"bucket": "hareg", "encrypt": "yes"}}},
         'storage.s3.encrypt: "yes" is not allowed; expected true or false'),
        ({"storage": {"s3": {"bukcet": "hareg"}}}, "storage.s3.bukcet: unknown field; did you mean 'bucket'?"),
        ({"storage": {"s3": {"bucket": "hareg", "chunkSizeMiB": 10}}},
         "storage.s3.chunkSizeMiB: is an OpenShift S3 option that hareg does not support"),
        ({"storage": {"gcs": {"bucket": "b"}}},
         "storage.gcs: gcs storage is not supported by hareg; expected one of filesystem, pvc, emptyDir, s3"),
        ({"storage": {"azure": {}}}, "storage.azure: azure storage is not supported by hareg"),
        ({"storage": {"managementState": "Managed"}}, "storage.managementState: hareg never creates"),
        ({"storage": {"emptyDir": {}}, "replicas": 2},
         "storage.emptyDir: cannot be used with more than 1 replica (replicas is 2)"),
        ({"storage": {"emptyDir": "yes"}}, 'storage.emptyDir: "yes" is not allowed; expected {}'),
        ({"storage": {"emptyDir": {"medium": "Memory"}}}, "storage.emptyDir.medium: unknown field"),
        ({"storage": {"filesystem": {"rootDirectory": 5}}},
         "storage.filesystem.rootDirectory: 5 is not allowed; expected a directory path or null"),
        ({"storage": {"pvc": {"claim": ""}}}, 'storage.pvc.claim: "" is not allowed; expected a directory path'),
        ({"storage": []}, "storage: a list is not allowed; expected a mapping"),
        ({"etcd": {"endpoints": ["127.0.0.1:2379"]}},
         'etcd.endpoints[0]: "127.0.0.1:2379" is not allowed; expected a URL like http://127.0.0.1:2379'),
        ({"etcd": {"endpoints": ["http://etcd"]}}, "(the port is missing)"),
        ({"etcd": {"endpoints": ["http://etcd:2379/v3"]}}, "a path, query or fragment is not allowed"),
        ({"etcd": {"endpoints": ["http://e:1", "http://e:1"]}},
         'etcd.endpoints[1]: "http://e:1" is not allowed; expected each endpoint once'),
        ({"etcd": {"endpoints": ["http://e:1", "https://f:1"]}}, "etcd.endpoints: mixes http:// and https://"),
        ({"etcd": {"endpoints": [2379]}}, "etcd.endpoints[0]: 2379 is not allowed"),
        ({"etcd": {"endpoints": {"a": 1}}}, "etcd.endpoints: a mapping is not allowed; expected a list of URLs"),
        ({"etcd": {"prefix": "hareg"}}, 'etcd.prefix: "hareg" is not allowed; expected a key prefix starting'),
        ({"etcd": {"prefix": "/a//b"}}, 'etcd.prefix: "/a//b" is not allowed'),
        ({"etcd": {"dialTimeout": "0s"}}, 'etcd.dialTimeout: "0s" is not allowed; expected a duration > 0'),
        ({"etcd": {"requestTimeout": "5"}}, 'etcd.requestTimeout: "5" is not allowed; expected a duration'),
        ({"etcd": {"memberTimeout": "0s"}}, 'etcd.memberTimeout: "0s" is not allowed; expected a duration'),
        ({"etcd": {"memberTimeout": "5s"}},
         'etcd.memberTimeout: "5s" is not allowed; expected a duration shorter than etcd.requestTimeout (5s)'),
        ({"etcd": {"requestTimeout": "1s", "memberTimeout": "2s"}},
         'etcd.memberTimeout: "2s" is not allowed; expected a duration shorter than etcd.requestTimeout (1s)'),
        ({"etcd": {"keepaliveTime": "-1s"}}, 'etcd.keepaliveTime: "-1s" is not allowed'),
        ({"etcd": {"keepaliveTimeout": "x"}}, 'etcd.keepaliveTimeout: "x" is not allowed; expected a duration'),
        ({"etcd": {"endpoints": ["https://e:1"], "tls": {"certFile": "/c"}}},
         "etcd.tls.keyFile: is required when certFile is set"),
        ({"etcd": {"tls": {"caFile": "/ca"}}}, "etcd.tls: is set but etcd.endpoints is empty"),
        ({"etcd": {"endpoints": ["http://e:1"], "tls": {"caFile": "/ca"}}},
         "etcd.tls: is set but the etcd.endpoints use http://"),
        ({"etcd": {"endpoint": ["http://e:1"]}}, "etcd.endpoint: unknown field; did you mean 'endpoints'?"),
        ({"pruner": {"schedule": "0 0 * *"}},
         'pruner.schedule: "0 0 * *" is not allowed; expected a cron schedule of 5 fields like "0 0 * * *"'),
        ({"pruner": {"schedule": "61 * * * *"}}, "minute 61 is out of range 0-59"),
        ({"pruner": {"suspend": "false"}}, 'pruner.suspend: "false" is not allowed; expected true or false'),
        ({"pruner": {"keepTagRevisions": -1}},
         "pruner.keepTagRevisions: -1 is not allowed; expected an integer >= 0"),
        ({"pruner": {"keepYoungerThanDuration": "60"}},
         'pruner.keepYoungerThanDuration: "60" is not allowed; expected a duration with a unit'),
        ({"pruner": {"keepYoungerThanDuration": "-5m"}}, "expected a duration >= 0"),
        ({"pruner": {"uploadGracePeriod": "0s"}},
         'pruner.uploadGracePeriod: "0s" is not allowed; expected a duration > 0'),
        ({"pruner": {"keepYoungerThan": 3600000000000}}, "pruner.keepYoungerThan: is deprecated in OpenShift"),
        ({"pruner": {"successfulJobsHistoryLimit": 3}}, "pruner.successfulJobsHistoryLimit: is an OpenShift"),
        ({"pruner": {"fsck": {"schedule": "weekly"}}},
         'pruner.fsck.schedule: "weekly" is not allowed; expected a cron schedule of 5 fields like "0 3 * * SUN"'),
        ({"pruner": {"fsck": {"repair": "yes"}}}, 'pruner.fsck.repair: "yes" is not allowed; expected true or false'),
        ({"pruner": {"fsck": {"repare": True}}}, "pruner.fsck.repare: unknown field; did you mean 'repair'?"),
        ({"pruner": {"fsck": "nightly"}}, "pruner.fsck: \"nightly\" is not allowed; expected a mapping"),
        ({"etcd": {"maintenance": {"defragSchedule": "nightly"}}},
         'etcd.maintenance.defragSchedule: "nightly" is not allowed; expected a cron schedule of 5 fields like "0 2 * * *"'),
        ({"etcd": {"maintenance": {"alarmCheckInterval": "0s"}}},
         'etcd.maintenance.alarmCheckInterval: "0s" is not allowed; expected a duration > 0'),
        ({"etcd": {"maintenance": {"recoverNoSpace": "yes"}}},
         'etcd.maintenance.recoverNoSpace: "yes" is not allowed; expected true or false'),
        ({"etcd": {"maintenance": {"defragSchedual": "0 2 * * *"}}},
         "etcd.maintenance.defragSchedual: unknown field; did you mean 'defragSchedule'?"),
        ({"routes": {"name": "x"}}, "routes: a mapping is not allowed; expected a list of routes"),
        ({"routes": ["public"]}, 'routes[0]: "public" is not allowed; expected a mapping'),
        ({"routes": [{"hostname": "r.example.com"}]}, "routes[0].name: is required"),
        ({"routes": [{"name": "a"}]}, "routes[0].hostname: is required"),
        ({"routes": [{"name": "a", "hostname": "not a host"}]},
         'routes[0].hostname: "not a host" is not allowed; expected a DNS host name'),
        ({"routes": [{"name": "a", "hostname": "h.example.com", "listen": ":5443", "certificateFile": "/c"}]},
         "routes[0].keyFile: is required when certificateFile is set"),
        ({"routes": [{"name": "a", "hostname": "h.example.com", "listen": ":5443"}]},
         "routes[0].listen: a route's own listener serves TLS, so certificateFile and keyFile are required"),
        ({"routes": [{"name": "a", "hostname": "h.example.com", "certificateFile": "/c", "keyFile": "/k"}]},
         "routes[0].certificateFile: is only used by a route with its own listener"),
        ({"routes": [{"name": "a", "hostname": "h.example.com", "listen": "5443"}]},
         'routes[0].listen: "5443" is not allowed; expected host:port'),
        ({"routes": [{"name": "a", "hostname": "a.example.com"}, {"name": "a", "hostname": "b.example.com"}]},
         'routes[1].name: "a" is not allowed; expected a unique name (routes[0].name has it too)'),
        ({"routes": [{"name": "a", "hostname": "a.example.com", "listen": "0.0.0.0:5000",
                      "certificateFile": "/c", "keyFile": "/k"}]},
         'routes[0].listen: "0.0.0.0:5000" is not allowed; expected an address not already used by listen'),
        ({"routes": [{"name": "a", "hostname": "a.example.com", "secretName": "tls"}]},
         "routes[0].secretName: hareg reads certificates from files; use certificateFile and keyFile"),
        ({"advertiseURL": "registry:5000"}, 'advertiseURL: "registry:5000" is not allowed; expected a URL like'),
        ({"advertiseURL": "ftp://r.example.com"}, "the scheme must be http:// or https://"),
        ({"limits": {"requestHeaderTimeout": "0s"}}, "limits.requestHeaderTimeout: \"0s\" is not allowed; expected a duration > 0"),
        ({"limits": {"bodyStallTimeout": 60}}, "limits.bodyStallTimeout: 60 is not allowed; expected a duration"),
        ({"limits": {"maxBlobSize": -1}}, "limits.maxBlobSize: -1 is not allowed; expected an integer >= 0"),
        ({"limits": {"manifestCacheBytes": "64Mi"}},
         'limits.manifestCacheBytes: "64Mi" is not allowed; expected an integer >= 0'),
        ({"limits": {"maxConnections": -5}}, "limits.maxConnections: -5 is not allowed; expected an integer >= 0"),
        ({"limits": {"maxUploadSessions": "many"}}, "limits.maxUploadSessions: \"many\" is not allowed"),
        ({"limits": {"maxReferences": 5}}, "limits.maxReferences: unknown field; did you mean 'maxManifestReferences'?"),
        ({"logLvl": "Debug"}, "logLvl: unknown field; did you mean 'logLevel'?"),
        ({"log_level": "Debug"}, "log_level: unknown field; did you mean 'logLevel'?"),
        ({"readonly": True}, "readonly: unknown field; did you mean 'readOnly'?"),
        ({"zzzz": 1}, "zzzz: unknown field; expected one of: managementState, logLevel"),
        ({"affinity": {}}, "affinity: is an OpenShift operator field"),
        ({"spec": {"replicas": 1}}, "spec: hareg's configuration is the operator's spec itself"),
    ],
)  # fmt: skip
def test_invalid_values(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    errors = errors_of(tmp_path, data)
    assert any(message in error for error in errors), errors
    # Every message starts with the field's YAML path and says where it is.
    for error in errors:
        assert re.match(r"^[A-Za-z_<]", error), error
        assert re.search(r"\(line \d+\)$", error), error


def test_secrets_are_never_echoed_in_errors(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, {"httpSecret": "hunter2"})
    assert errors == [
        "httpSecret: a secret of 7 characters is not allowed; expected at least 32 "
        "(e.g. from `openssl rand -hex 32`), or null to generate one (line 1)"
    ]
    assert "hunter2" not in str(errors)


def test_storage_with_two_kinds_is_an_error(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, {"storage": {"filesystem": {"rootDirectory": "/a"}, "s3": {"bucket": "bkt"}}}
    )
    assert errors == [
        "storage: filesystem and s3 are both set; expected exactly one of filesystem, pvc, emptyDir, s3 (line 1)"
    ]
    errors = errors_of(tmp_path, {"storage": {"filesystem": {}, "pvc": {}, "emptyDir": {}}})
    assert errors[0].startswith("storage: filesystem and pvc and emptyDir are all set")


def test_many_mistakes_are_reported_at_once(tmp_path: Path) -> None:
    text = """\
managementState: Managed
logLevel: Loud
listen: 127.0.0.1:99999
replicas: 0
requests:
  write:
    maxRunning: 4
    maxInQueue: -1
    maxWaitInQue: 10s
storage:
  s3:
    region: us-east-1
etcd:
  endpoints: [etcd:2379]
pruner:
  schedule: every night
  keepTagRevisions: three
"""
    errors = errors_of(tmp_path, text)
    expected = [
        ("logLevel:", 2),
        ("listen:", 3),
        ("replicas:", 4),
        ("requests.write.maxInQueue: -1 is not allowed; expected an integer >= 0", 8),
        ("requests.write.maxWaitInQue: unknown field; did you mean 'maxWaitInQueue'?", 9),
        ("storage.s3.bucket: is required", 11),
        ("etcd.endpoints[0]:", 14),
        ("pruner.schedule:", 16),
        ("pruner.keepTagRevisions:", 17),
    ]
    assert len(errors) == len(expected), errors
    for start, line in expected:
        matching = [e for e in errors if e.startswith(start)]
        assert matching, (start, errors)
        assert matching[0].endswith(f"(line {line})"), matching[0]
    assert str(ConfigError(errors)) == "\n".join(errors)


def test_docs_full_example_is_valid(tmp_path: Path) -> None:
    text = DOCS.read_text()
    example = re.search(r"## Full example\n.*?```yaml\n(.*?)```", text, re.S)
    assert example is not None
    config = load(tmp_path, example.group(1))
    assert config.storage.kind == "s3"


def test_manifest_urls_default_to_none_allowed(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    assert config.validation.manifest_urls.allow == ()
    assert config.validation.manifest_urls.deny == ()


def test_manifest_urls_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = load(tmp_path, nested("validation.manifests.urls", {"allow": ["^https://a/"], "deny": ["b"]}))
    assert config.validation.manifest_urls.allow == ("^https://a/",)
    assert config.validation.manifest_urls.deny == ("b",)
    config = load(tmp_path, {}, {"HAREG_VALIDATION_MANIFESTS_URLS_ALLOW": "^https://a/, ^https://c/"})
    assert config.validation.manifest_urls.allow == ("^https://a/", "^https://c/")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            ["ok", "(unclosed"],
            'validation.manifests.urls.deny[1]: "(unclosed" is not allowed; expected a valid',
        ),
        ({"a": 1}, "validation.manifests.urls.deny: "),
        ([""], "validation.manifests.urls.deny[0]: "),
    ],
)
def test_a_bad_url_expression_names_the_field(tmp_path: Path, value: object, message: str) -> None:
    found = errors_of(tmp_path, nested("validation.manifests.urls.deny", value))
    assert any(e.startswith(message) for e in found), found
