"""hareg.config.reader: the YAML file (defaults, syntax, structure, unusable files) and the
HAREG_ environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hareg.config.model import Config, ConfigError, EtcdConfig, RequestLimits, S3Storage
from hareg.config.reader import load_config

from .support import SECRET, errors_of, load


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load(tmp_path, text) == Config()


def test_null_values_mean_default(tmp_path: Path) -> None:
    text = "logLevel:\nstorage:\n  s3:\netcd:\n  prefix: null\npruner:\n"
    assert load(tmp_path, text) == Config()


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
        ({"HAREG_ETCD_MEMBER_TIMEOUT": "300ms"}, "etcd.member_timeout", 0.3),
        ({"HAREG_ETCD_KEEPALIVE_TIME": "6s"}, "etcd.keepalive_time", 6.0),
        ({"HAREG_ETCD_KEEPALIVE_TIMEOUT": "500ms"}, "etcd.keepalive_timeout", 0.5),
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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # A problem with a field no variable set, in a section the file does
        # not have, names no line (this once looped forever looking for one).
        ({"HAREG_STORAGE_S3_REGION": "eu-west-1"},
         "storage.s3.bucket: is required with s3 storage; expected a bucket name like hareg"),
        ({"HAREG_STORAGE_S3_BUCKET": "hareg", "HAREG_STORAGE_PVC_CLAIM": "/mnt"},
         "storage: pvc (from HAREG_STORAGE_PVC_CLAIM) and s3 (from HAREG_STORAGE_S3_BUCKET) are both set; "
         "expected exactly one of filesystem, pvc, emptyDir, s3"),
        ({"HAREG_ETCD_TLS_CA_FILE": "/etc/ca.pem"},
         "etcd.tls: is set but etcd.endpoints is empty; the private etcd hareg starts speaks plain HTTP "
         "on 127.0.0.1 (list https:// endpoints, or remove tls)"),
    ],
)  # fmt: skip
def test_env_problem_outside_the_file_names_no_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    assert errors_of(tmp_path, "logLevel: Normal\n", env) == [message]
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    assert info.value.errors == [message]


def test_env_cannot_override_through_a_malformed_section(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, {"requests": 5}, {"HAREG_REQUESTS_READ_MAX_RUNNING": "3"})
    assert errors == ["requests: 5 is not allowed; expected a mapping with the fields read, write (line 1)"]


def test_env_none_means_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAREG_LOG_LEVEL", "Trace")
    assert load_config(None).log_level == "Trace"
    assert load_config(None, {}).log_level == "Normal"
