"""hareg.config and hareg.config.durations: parsing, validation, environment overrides, output."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hareg.config.addresses import advertised_url, split_host_port
from hareg.config.cron import parse_cron
from hareg.config.durations import format_duration, parse_duration
from hareg.config.fields import env_var_name, environment_variables
from hareg.config.model import Config, ConfigError, EtcdConfig, PrunerConfig, RequestLimits, Route, S3Storage
from hareg.config.reader import load_config
from hareg.config.render import config_to_dict, defaults_yaml

SECRET = "0123456789abcdef0123456789abcdef"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hareg.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> Config:
    text = data if isinstance(data, str) else yaml.safe_dump(data)
    return load_config(str(write(tmp_path, text)), env or {})


def errors_of(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    return info.value.errors


def nested(path: str, value: object) -> dict[str, Any]:
    """``nested("a.b", 1)`` -> ``{"a": {"b": 1}}``."""
    *parents, leaf = path.split(".")
    data: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        data = {part: data}
    return data


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("-0", 0.0),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1h0m0s", 3600.0),
        ("2h45m", 9900.0),
        ("-1.5s", -1.5),
        ("+5s", 5.0),
        ("300us", 0.0003),
        ("300\u00b5s", 0.0003),
        ("300\u03bcs", 0.0003),
        ("1ns", 1e-9),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("60m", 3600.0),
    ],
)
def test_parse_duration_accepts_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "30", "s", "1x", "1h 30m", "--1s", ".s", "1h30", "one second", "1e3s", "9999999999h"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (90, "1m30s"),
        (1.5, "1.5s"),
        (0.25, "250ms"),
        (0.0000015, "1.5us"),
        (1e-9, "1ns"),
        (3600.5, "1h0.5s"),
        (-30, "-30s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_format_duration_round_trips(nanoseconds: int) -> None:
    text = format_duration(nanoseconds / 1e9)
    assert parse_duration(text) == pytest.approx(nanoseconds / 1e9, rel=1e-12, abs=1e-9)


# --------------------------------------------------------------------------- cron and host:port


@pytest.mark.parametrize(
    "schedule",
    [
        "0 0 * * *",
        "*/15 * * * *",
        "0 9-17 * * MON-FRI",
        "0 0 1,15 * *",
        "30 2 * JAN,jul *",
        "5/10 * * * *",
        "0 0 * * 7",
        "0-30/10 0,12 1-7 */2 sun",
        "@daily",
        "@HOURLY",
        "0 0 29 2 *",
    ],
)
def test_cron_valid(schedule: str) -> None:
    parse_cron(schedule)


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ("0 0 * *", "expected 5 fields"),
        ("0 0 * * * *", "expected 5 fields"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("a * * * *", "not a number"),
        ("1,,2 * * * *", "empty list item"),
        ("* * * FOO *", "not a number"),
        ("0 0 31 2 *", "never fires"),
        ("@every 5m", "unknown macro"),
    ],
)
def test_cron_invalid(schedule: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_cron(schedule)


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("0 0 * * *", datetime(2024, 3, 5, 13, 0), datetime(2024, 3, 6, 0, 0)),
        ("*/15 * * * *", datetime(2024, 3, 5, 10, 7, 30), datetime(2024, 3, 5, 10, 15)),
        ("*/15 * * * *", datetime(2024, 3, 5, 10, 15), datetime(2024, 3, 5, 10, 30)),
        ("0 0 29 2 *", datetime(2023, 3, 1), datetime(2024, 2, 29)),
        ("0 12 * * MON", datetime(2024, 3, 5), datetime(2024, 3, 11, 12, 0)),
        ("0 0 1 1 *", datetime(2024, 12, 31, 23, 59), datetime(2025, 1, 1)),
        # Both day fields restricted: either may match (the 13th, or any Friday).
        ("0 0 13 * FRI", datetime(2024, 3, 1, 1, 0), datetime(2024, 3, 8)),
        ("0 0 13 * FRI", datetime(2024, 3, 12, 1, 0), datetime(2024, 3, 13)),
        # Day-of-week given with '*': both must match.
        ("0 0 */2 * MON", datetime(2024, 3, 1), datetime(2024, 3, 11)),
    ],
)
def test_cron_next_after(schedule: str, after: datetime, expected: datetime) -> None:
    cron = parse_cron(schedule)
    assert cron.next_after(after) == expected
    assert cron.matches(expected)


def test_cron_next_after_keeps_time_zone() -> None:
    after = datetime(2024, 3, 5, 13, 0, tzinfo=UTC)
    assert parse_cron("@hourly").next_after(after) == datetime(2024, 3, 5, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        (":5000", ("", 5000)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("localhost:80", ("localhost", 80)),
        ("registry.example.com:443", ("registry.example.com", 443)),
    ],
)
def test_split_host_port_valid(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["5000", "host:0", "host:65536", "::1:5000", "[::1]5000", "[nope]:80", "bad_host:80",
             "300.1.1.1:80", "host:abc", "host:", "-host:80"],
)  # fmt: skip
def test_split_host_port_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


# --------------------------------------------------------------------------- defaults


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.management_state == "Managed"
    assert config.log_level == "Normal"
    assert config.http_secret is None
    assert config.listen == "127.0.0.1:5000"
    assert (config.read_only, config.disable_redirect, config.default_route) == (False, False, False)
    assert config.replicas == 1
    assert config.routes == ()
    assert config.proxy.http is config.proxy.https is config.proxy.no_proxy is None
    assert config.requests.read == config.requests.write == RequestLimits(0, 0, 0.0)
    assert config.storage.kind == "filesystem"
    assert config.storage.filesystem.root_directory is None
    assert config.storage.empty_dir is False
    assert config.etcd == EtcdConfig((), "/hareg", 5.0, 5.0, None, None, None)
    assert config.pruner == PrunerConfig("0 0 * * *", False, 3, 3600.0, 3600.0)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text) == Config()


def test_null_values_mean_default(tmp_path: Path) -> None:
    text = "logLevel:\nstorage:\n  s3:\netcd:\n  prefix: null\npruner:\n"
    assert load(tmp_path, text) == Config()


def test_config_is_frozen_and_hides_secrets_in_repr(tmp_path: Path) -> None:
    config = load(tmp_path, {"httpSecret": SECRET, "storage": {"s3": {"bucket": "bkt", "accessKey": "AK",
                                                                       "secretKey": "very-secret"}}})  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.replicas = 2  # type: ignore[misc]
    assert SECRET not in repr(config)
    assert "very-secret" not in repr(config)


# --------------------------------------------------------------------------- valid values


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


# --------------------------------------------------------------------------- YAML-level problems


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("logLevel: [Normal\n", "hareg.yaml:2:1: YAML syntax error"),
        ("a: b\n  c: d\n", "hareg.yaml:2:4: YAML syntax error: mapping values are not allowed here"),
        ("proxy:\n\thttp: x\n", "hareg.yaml:2:1: YAML syntax error"),
        (
            "logLevel: Normal\n---\nlogLevel: Debug\n",
            "hareg.yaml:2: YAML syntax error: a second document starts here; expected exactly one YAML document",
        ),
        ("a: *missing\n", "YAML syntax error"),
        ("x: !!python/object:os.system ls\n", "YAML syntax error"),
    ],
)
def test_yaml_syntax_errors_name_line_and_column(tmp_path: Path, text: str, fragment: str) -> None:
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1
    assert fragment in errors[0], errors
    assert "Traceback" not in errors[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "is not allowed at the top level; expected a mapping of fields"),
        ("just a string\n", '"just a string" is not allowed at the top level'),
        ("logLevel: Normal\nlogLevel: Debug\n", "logLevel: duplicate key (lines 1 and 2)"),
        ("base: &b {maxRunning: 1}\nrequests:\n  read:\n    <<: *b\n", "merge keys (<<) are not supported"),
        ("1: one\n", "<top level>: key 1 is not a string (line 1)"),
        ("on: true\n", "<top level>: key true is not a string (line 1)"),
    ],
)
def test_yaml_structure_errors(tmp_path: Path, text: str, message: str) -> None:
    errors = errors_of(tmp_path, text)
    assert any(message in e for e in errors), errors


def test_recursive_alias_is_an_error(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "routes: &r [*r]\n")
    assert any("recursive YAML alias" in e for e in errors), errors


def test_alias_bomb_is_an_error_not_a_hang(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    errors = errors_of(tmp_path, "\n".join(lines) + "\n")
    assert errors == [
        f"{tmp_path / 'hareg.yaml'}: the YAML expands to more than 100000 values (too many aliases?)"
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"), {})
    assert info.value.errors == [f"{tmp_path / 'nope.yaml'}: configuration file not found"]


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path), {})
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"logLevel: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, {})


def test_unusable_file_reports_env_errors_but_no_validation_noise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            str(tmp_path / "nope.yaml"),
            {"HAREG_READ_ONLY": "maybe", "HAREG_STORAGE_S3_REGION": "eu-west-1"},
        )
    assert len(info.value.errors) == 2
    assert info.value.errors[1].startswith("HAREG_READ_ONLY:")


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("path", "variable"),
    [
        ("logLevel", "HAREG_LOG_LEVEL"),
        ("readOnly", "HAREG_READ_ONLY"),
        ("httpSecret", "HAREG_HTTP_SECRET"),
        ("requests.write.maxInQueue", "HAREG_REQUESTS_WRITE_MAX_IN_QUEUE"),
        ("storage.s3.bucket", "HAREG_STORAGE_S3_BUCKET"),
        ("storage.s3.regionEndpoint", "HAREG_STORAGE_S3_REGION_ENDPOINT"),
        ("etcd.endpoints", "HAREG_ETCD_ENDPOINTS"),
        ("etcd.tls.caFile", "HAREG_ETCD_TLS_CA_FILE"),
        ("pruner.keepYoungerThanDuration", "HAREG_PRUNER_KEEP_YOUNGER_THAN_DURATION"),
        ("proxy.noProxy", "HAREG_PROXY_NO_PROXY"),
    ],
)
def test_env_var_name(path: str, variable: str) -> None:
    assert env_var_name(path) == variable
    assert (variable, path) in environment_variables()


def _leaves(data: dict[str, Any], path: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if isinstance(value, dict) and value:
            out += _leaves(value, sub)
        else:
            out.append(sub)
    return out


def test_every_scalar_field_has_an_environment_variable() -> None:
    paths = {path for _, path in environment_variables()}
    every_kind = [
        Config(),
        Config(storage=dataclasses.replace(Config().storage, kind="s3")),
        Config(storage=dataclasses.replace(Config().storage, kind="pvc")),
        Config(storage=dataclasses.replace(Config().storage, kind="emptyDir")),
    ]
    for config in every_kind:
        leaves = set(_leaves(config_to_dict(config))) - {"routes"}
        assert leaves <= paths, leaves - paths
    assert len({name for name, _ in environment_variables()}) == len(environment_variables())


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({"HAREG_LOG_LEVEL": "Debug"}, "log_level", "Debug"),
        ({"HAREG_MANAGEMENT_STATE": "Removed"}, "management_state", "Removed"),
        ({"HAREG_HTTP_SECRET": SECRET}, "http_secret", SECRET),
        ({"HAREG_LISTEN": "0.0.0.0:80"}, "listen", "0.0.0.0:80"),
        ({"HAREG_READ_ONLY": "yes"}, "read_only", True),
        ({"HAREG_READ_ONLY": "TRUE"}, "read_only", True),
        ({"HAREG_READ_ONLY": "1"}, "read_only", True),
        ({"HAREG_DISABLE_REDIRECT": "0"}, "disable_redirect", False),
        ({"HAREG_DEFAULT_ROUTE": "no"}, "default_route", False),
        ({"HAREG_REPLICAS": " 4 "}, "replicas", 4),
        ({"HAREG_MAX_LIST_PAGE_SIZE": "50"}, "max_list_page_size", 50),
        ({"HAREG_PROXY_HTTPS": "http://p:3128"}, "proxy.https", "http://p:3128"),
        ({"HAREG_PROXY_NO_PROXY": ".local"}, "proxy.no_proxy", ".local"),
        ({"HAREG_REQUESTS_WRITE_MAX_RUNNING": "4", "HAREG_REQUESTS_WRITE_MAX_IN_QUEUE": "10",
          "HAREG_REQUESTS_WRITE_MAX_WAIT_IN_QUEUE": "1m"}, "requests.write", RequestLimits(4, 10, 60.0)),
        ({"HAREG_STORAGE_S3_BUCKET": "hareg", "HAREG_STORAGE_S3_REGION_ENDPOINT": "http://127.0.0.1:18333",
          "HAREG_STORAGE_S3_ACCESS_KEY": "a", "HAREG_STORAGE_S3_SECRET_KEY": "b",
          "HAREG_STORAGE_S3_VIRTUAL_HOSTED_STYLE": "false", "HAREG_STORAGE_S3_ENCRYPT": "yes",
          "HAREG_STORAGE_S3_KEY_PREFIX": "p/", "HAREG_STORAGE_S3_REGION": "x"},
         "storage.s3", S3Storage("hareg", "x", "http://127.0.0.1:18333", "a", "b", False, True, "p/")),
        ({"HAREG_STORAGE_S3_BUCKET": "hareg"}, "storage.kind", "s3"),
        ({"HAREG_STORAGE_FILESYSTEM_ROOT_DIRECTORY": "/srv"}, "storage.filesystem.root_directory", "/srv"),
        ({"HAREG_STORAGE_PVC_CLAIM": "/mnt"}, "storage.kind", "pvc"),
        ({"HAREG_STORAGE_EMPTY_DIR": "true"}, "storage.kind", "emptyDir"),
        ({"HAREG_STORAGE_EMPTY_DIR": "false"}, "storage.kind", "filesystem"),
        ({"HAREG_ETCD_ENDPOINTS": "http://a:1, http://b:2,"}, "etcd.endpoints", ("http://a:1", "http://b:2")),
        ({"HAREG_ETCD_ENDPOINTS": ""}, "etcd.endpoints", ()),
        ({"HAREG_ETCD_PREFIX": "/x"}, "etcd.prefix", "/x"),
        ({"HAREG_ETCD_DIAL_TIMEOUT": "2s"}, "etcd.dial_timeout", 2.0),
        ({"HAREG_ETCD_REQUEST_TIMEOUT": "1500ms"}, "etcd.request_timeout", 1.5),
        ({"HAREG_ETCD_ENDPOINTS": "https://a:1", "HAREG_ETCD_TLS_CA_FILE": "/ca",
          "HAREG_ETCD_TLS_CERT_FILE": "/c", "HAREG_ETCD_TLS_KEY_FILE": "/k"},
         "etcd", EtcdConfig(("https://a:1",), "/hareg", 5.0, 5.0, "/ca", "/c", "/k")),
        ({"HAREG_PRUNER_SCHEDULE": "@hourly"}, "pruner.schedule", "@hourly"),
        ({"HAREG_PRUNER_SUSPEND": "true"}, "pruner.suspend", True),
        ({"HAREG_PRUNER_KEEP_TAG_REVISIONS": "10"}, "pruner.keep_tag_revisions", 10),
        ({"HAREG_PRUNER_KEEP_YOUNGER_THAN_DURATION": "2h"}, "pruner.keep_younger_than", 7200.0),
        ({"HAREG_PRUNER_UPLOAD_GRACE_PERIOD": "30m"}, "pruner.upload_grace", 1800.0),
        ({"HAREG_NOT_A_FIELD": "whatever", "HAREG_": "", "HAREGX": "1"}, "log_level", "Normal"),
    ],
)  # fmt: skip
def test_env_overrides(env: dict[str, str], attribute: str, expected: object) -> None:
    value: Any = load_config(None, env)
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    data = {"logLevel": "Trace", "readOnly": False, "etcd": {"endpoints": ["http://file:1"]},
            "storage": {"s3": {"bucket": "file-bucket", "region": "eu-west-1"}}}  # fmt: skip
    env = {"HAREG_LOG_LEVEL": "Debug", "HAREG_READ_ONLY": "true", "HAREG_ETCD_ENDPOINTS": "http://env:2",
           "HAREG_STORAGE_S3_BUCKET": "env-bucket"}  # fmt: skip
    config = load(tmp_path, data, env)
    assert (config.log_level, config.read_only) == ("Debug", True)
    assert config.etcd.endpoints == ("http://env:2",)
    assert (config.storage.s3.bucket, config.storage.s3.region) == ("env-bucket", "eu-west-1")


def test_empty_env_value_unsets_an_optional_field(tmp_path: Path) -> None:
    config = load(tmp_path, {"httpSecret": SECRET, "proxy": {"http": "http://p:1"}},
                  {"HAREG_HTTP_SECRET": "", "HAREG_PROXY_HTTP": "", "HAREG_STORAGE_S3_ACCESS_KEY": ""})  # fmt: skip
    assert config.http_secret is None
    assert config.proxy.http is None
    assert config.storage.kind == "filesystem"  # unsetting an s3 field does not choose s3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HAREG_READ_ONLY": "maybe"},
         'HAREG_READ_ONLY: "maybe" is not allowed; expected one of true, false, 1, 0, yes, no (sets readOnly)'),
        ({"HAREG_REPLICAS": "three"}, 'HAREG_REPLICAS: "three" is not allowed; expected an integer (sets replicas)'),
        ({"HAREG_STORAGE_EMPTY_DIR": "{}"}, "HAREG_STORAGE_EMPTY_DIR:"),
        ({"HAREG_REQUESTS_WRITE_MAX_RUNNING": "1", "HAREG_REQUESTS_WRITE_MAX_IN_QUEUE": "-1"},
         "requests.write.maxInQueue: -1 is not allowed; expected an integer >= 0 "
         "(from HAREG_REQUESTS_WRITE_MAX_IN_QUEUE)"),
        ({"HAREG_LOG_LEVEL": "loud"}, 'logLevel: "loud" is not allowed; expected one of Normal, Debug, Trace, '
                                     "TraceAll (from HAREG_LOG_LEVEL)"),
        ({"HAREG_ETCD_ENDPOINTS": "http://a:1,b:2"},
         'etcd.endpoints: "b:2" is not allowed; expected a URL like http://127.0.0.1:2379 (the scheme must be '
         "http:// or https://) (from HAREG_ETCD_ENDPOINTS)"),
        ({"HAREG_PRUNER_KEEP_YOUNGER_THAN_DURATION": "an hour"},
         "pruner.keepYoungerThanDuration: \"an hour\" is not allowed; expected a duration with a unit"),
        ({"HAREG_LISTEN": ""}, 'listen: "" is not allowed; expected host:port'),
    ],
)  # fmt: skip
def test_bad_env_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    assert any(message in e for e in info.value.errors), info.value.errors
    variable = next(iter(env.keys() - {"HAREG_REQUESTS_WRITE_MAX_RUNNING"}))
    assert all(variable in e for e in info.value.errors), info.value.errors


def test_env_storage_kind_conflicting_with_the_file_is_an_error(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, {"storage": {"filesystem": {"rootDirectory": "/srv"}}},
                       {"HAREG_STORAGE_S3_BUCKET": "hareg"})  # fmt: skip
    assert errors == [
        "storage: filesystem and s3 (from HAREG_STORAGE_S3_BUCKET) are both set; "
        "expected exactly one of filesystem, pvc, emptyDir, s3 (line 1)"
    ]


def test_env_cannot_override_through_a_malformed_section(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, {"requests": 5}, {"HAREG_REQUESTS_READ_MAX_RUNNING": "3"})
    assert errors == ["requests: 5 is not allowed; expected a mapping with the fields read, write (line 1)"]


def test_env_none_means_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAREG_LOG_LEVEL", "Trace")
    assert load_config(None).log_level == "Trace"
    assert load_config(None, {}).log_level == "Normal"


# --------------------------------------------------------------------------- output


def test_defaults_yaml_loads_back_to_the_defaults(tmp_path: Path) -> None:
    text = defaults_yaml()
    assert load(tmp_path, text) == Config()
    assert yaml.safe_load(text) == config_to_dict(Config())
    for line in text.splitlines():
        assert line.startswith("#") or not line.strip().startswith("#") or line.lstrip().startswith("# ")
    # Every field that is in the file is commented with its variable.
    for variable, path in environment_variables():
        if not path.startswith("storage.") or path.startswith("storage.filesystem."):
            assert f"[{variable}]" in text, variable


def test_config_to_dict_redacts_secrets(tmp_path: Path) -> None:
    data = {
        "httpSecret": SECRET,
        "proxy": {"https": "http://user:pa55@proxy:3128"},
        "storage": {"s3": {"bucket": "hareg", "accessKey": "AK", "secretKey": "SK"}},
    }
    dumped = config_to_dict(load(tmp_path, data))
    assert dumped["httpSecret"] == "<redacted>"
    assert dumped["storage"] == {
        "s3": {"bucket": "hareg", "region": "us-east-1", "regionEndpoint": None, "accessKey": "AK",
               "secretKey": "<redacted>", "virtualHostedStyle": False, "encrypt": False, "keyPrefix": ""}
    }  # fmt: skip
    assert dumped["proxy"]["https"] == "http://user:<redacted>@proxy:3128"
    assert SECRET not in str(dumped) and "SK" not in str(dumped).replace("'SK'", "")
    assert config_to_dict(Config())["httpSecret"] is None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"managementState": "Unmanaged", "logLevel": "Debug", "listen": ":8080", "readOnly": True,
         "disableRedirect": True, "replicas": 3, "defaultRoute": True,
         "routes": [{"name": "a", "hostname": "a.example.com"},
                    {"name": "b", "hostname": "b.example.com", "listen": "127.0.0.1:5443",
                     "certificateFile": "/c", "keyFile": "/k"}],
         "proxy": {"http": "http://p:1", "noProxy": "x"},
         "requests": {"read": {"maxRunning": 10, "maxInQueue": 100, "maxWaitInQueue": "1m30s"},
                      "write": {"maxRunning": 2, "maxWaitInQueue": "250ms"}},
         "storage": {"s3": {"bucket": "hareg", "regionEndpoint": "http://127.0.0.1:18333", "encrypt": True,
                            "keyPrefix": "x/"}},
         "etcd": {"endpoints": ["https://a:1", "https://b:2"], "prefix": "/p", "dialTimeout": "1.5s",
                  "tls": {"caFile": "/ca"}},
         "pruner": {"schedule": "@weekly", "suspend": True, "keepTagRevisions": 0,
                    "keepYoungerThanDuration": "90m", "uploadGracePeriod": "36h"}},
        {"storage": {"pvc": {"claim": "/mnt/c"}}},
        {"storage": {"emptyDir": {}}},
    ],
)  # fmt: skip
def test_config_to_dict_round_trips(tmp_path: Path, data: dict[str, Any]) -> None:
    config = load(tmp_path, data)
    again = load(tmp_path, yaml.safe_dump(config_to_dict(config)))
    assert again == config


def test_config_error_lists_one_problem_a_line() -> None:
    error = ConfigError(["a: bad", "b: worse"])
    assert error.errors == ["a: bad", "b: worse"]
    assert str(error) == "a: bad\nb: worse"


# --------------------------------------------------------------------------- documentation


@pytest.mark.parametrize(
    ("configured", "host", "port", "expected"),
    [
        (None, "127.0.0.1", 5000, "http://127.0.0.1:5000"),
        (None, "registry.example.com", 5000, "http://registry.example.com:5000"),
        (None, "::1", 5000, "http://[::1]:5000"),
        # A wildcard address reaches nothing from another machine: the host name instead.
        (None, "0.0.0.0", 5000, "http://node-7:5000"),
        (None, "::", 5001, "http://node-7:5001"),
        (None, "", 5000, "http://node-7:5000"),
        ("https://r0.example.com:5443/", "0.0.0.0", 5000, "https://r0.example.com:5443"),
    ],
)
def test_advertised_url(configured: str | None, host: str, port: int, expected: str) -> None:
    assert advertised_url(configured, host, port, "node-7") == expected


def test_limits_defaults_fit_etcds_default_limits() -> None:
    """The manifest caps keep a push's transaction within etcd's defaults
    (--max-txn-ops 128, --max-request-bytes 1.5 MiB), as docs/configuration.md explains."""
    limits = Config().limits
    fixed_compares, compares_per_tag, tags = 3, 2, 12
    assert limits.max_manifest_references + fixed_compares + compares_per_tag * tags <= 128
    inline_body = 256 * 1024
    assert inline_body + 2 * limits.max_manifest_annotation_bytes < 1.5 * 1024 * 1024 * 0.75


def test_docs_describe_every_field_and_variable() -> None:
    text = DOCS.read_text()
    for variable, path in environment_variables():
        assert variable in text, variable
        assert f"`{path}`" in text, path


def test_docs_full_example_is_valid(tmp_path: Path) -> None:
    text = DOCS.read_text()
    example = re.search(r"## Full example\n.*?```yaml\n(.*?)```", text, re.S)
    assert example is not None
    config = load(tmp_path, example.group(1))
    assert config.storage.kind == "s3"


# --------------------------------------------------------------------------- validation


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
