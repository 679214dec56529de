"""hareg.config.render: config_to_dict (secrets redacted, round trips) and defaults_yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hareg.config.fields import environment_variables
from hareg.config.model import Config
from hareg.config.render import config_to_dict, defaults_yaml

from .support import SECRET, load


def test_defaults_yaml_loads_back_to_the_defaults(tmp_path: Path) -> None:
    text = defaults_yaml()
    assert load(tmp_path, text) == Config()
    assert yaml.safe_load(text) == config_to_dict(Config())
    for line in text.splitlines():
        assert line.startswith("#") or not line.strip().startswith("#") or line.lstrip().startswith("# ")
    # Every field that is in the file is commented with its variable.
    for variable, path in environment_variables():
        # The auth section is absent by default (auth: null), so its fields are not listed.
        if path.startswith("auth."):
            continue
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
               "secretKey": "<redacted>", "virtualHostedStyle": False, "encrypt": False, "keyPrefix": "",
                   "uploadBufferBytes": 41943040}
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


def test_an_auth_section_round_trips(tmp_path: Path) -> None:
    data = {
        "auth": {
            "htpasswd": {"path": "/etc/hareg/htpasswd"},
            "token": {"expiry": "10m", "audience": "registry.example.com"},
            "bindings": [
                {"subject": "alice", "role": "editor", "repositories": ["team-a/*"]},
                {"subject": "root", "role": "cluster-admin"},
            ],
        }
    }
    config = load(tmp_path, data)
    assert config.auth is not None and config.auth.token.expiry == 600
    dumped = config_to_dict(config)
    assert load(tmp_path, dumped) == config
    assert dumped["auth"]["bindings"][1] == {"subject": "root", "role": "cluster-admin", "repositories": []}
