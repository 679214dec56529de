"""The pullThrough section: its model, its errors (each naming the field, the
value and what is allowed), and its rendering back to YAML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hareg.config.model import PullThrough
from hareg.config.render import config_to_dict

from .support import errors_of, load

HUB = "https://registry-1.docker.io"


def test_a_full_entry_is_read_and_rendered_back(tmp_path: Path) -> None:
    entry = {
        "prefix": "mirror/hub",
        "remote": HUB,
        "username": "bot",
        "passwordFile": "/etc/hareg/hub-password",
        "ttl": "10m",
        "allow": ["library/*"],
        "caFile": "/etc/hareg/ca.pem",
        "expireAfter": "720h",
    }
    config = load(tmp_path, {"pullThrough": [entry]})
    assert config.pull_through == (
        PullThrough(
            prefix="mirror/hub",
            remote=HUB,
            username="bot",
            password_file="/etc/hareg/hub-password",
            ttl=600.0,
            allow=("library/*",),
            ca_file="/etc/hareg/ca.pem",
            expire_after=720 * 3600.0,
        ),
    )
    rendered = config_to_dict(config)["pullThrough"]
    assert rendered == [{**entry, "insecure": False}]
    assert load(tmp_path, yaml.safe_dump({"pullThrough": rendered})).pull_through == config.pull_through


def test_defaults(tmp_path: Path) -> None:
    (mirror,) = load(tmp_path, {"pullThrough": [{"prefix": "hub", "remote": HUB + "/"}]}).pull_through
    assert mirror == PullThrough(prefix="hub", remote=HUB, ttl=300.0, expire_after=7 * 24 * 3600.0)
    assert (
        config_to_dict(load(tmp_path, {"pullThrough": [{"prefix": "hub", "remote": HUB}]}))["pullThrough"][0][
            "expireAfter"
        ]
        == "168h"
    )
    (never,) = load(
        tmp_path, {"pullThrough": [{"prefix": "hub", "remote": HUB, "expireAfter": "0s"}]}
    ).pull_through
    assert never.expire_after == 0.0  # never expired
    assert load(tmp_path, {}).pull_through == ()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"prefix": "hub"}, "pullThrough: a mapping is not allowed; expected a list of mirrors"),
        (["hub"], 'pullThrough[0]: "hub" is not allowed; expected a mapping with prefix, remote'),
        ([{"remote": HUB}], "pullThrough[0].prefix: is required"),
        ([{"prefix": "hub"}], "pullThrough[0].remote: is required; expected a URL like https://registry-1.docker.io"),
        ([{"prefix": "/hub/", "remote": HUB}], 'pullThrough[0].prefix: "/hub/" is not allowed; expected a repository name prefix'),
        ([{"prefix": "Hub", "remote": HUB}], 'pullThrough[0].prefix: "Hub" is not allowed'),
        ([{"prefix": "hub", "remote": HUB}, {"prefix": "hub/x", "remote": HUB}],
         "pullThrough[1].prefix: \"hub/x\" is not allowed; expected a prefix that does not overlap pullThrough[0].prefix"),
        ([{"prefix": "hub", "remote": "registry-1.docker.io"}], 'pullThrough[0].remote: "registry-1.docker.io" is not allowed; expected a URL like'),
        ([{"prefix": "hub", "remote": HUB + "/v2/"}], "expected the registry's base URL"),
        ([{"prefix": "hub", "remote": "https://bot:hunter2@registry.example.com"}],
         "pullThrough[0].remote: a URL with credentials is not allowed"),
        ([{"prefix": "hub", "remote": HUB, "username": "bot"}], "pullThrough[0].passwordFile: is required when username is set"),
        ([{"prefix": "hub", "remote": HUB, "ttl": "5"}], 'pullThrough[0].ttl: "5" is not allowed; expected a duration with a unit'),
        ([{"prefix": "hub", "remote": HUB, "expireAfter": "7d"}], 'pullThrough[0].expireAfter: "7d" is not allowed; expected a duration with a unit'),
        ([{"prefix": "hub", "remote": HUB, "expireAfter": "-1h"}], 'pullThrough[0].expireAfter: "-1h" is not allowed; expected a duration >= 0'),
        ([{"prefix": "hub", "remote": HUB, "allow": "library/*"}], 'pullThrough[0].allow: "library/*" is not allowed; expected a list of upstream path globs'),
        ([{"prefix": "hub", "remote": HUB, "allow": [""]}], 'pullThrough[0].allow[0]: "" is not allowed; expected a non-empty glob'),
        ([{"prefix": "hub", "remote": HUB, "insecure": True, "caFile": "/ca"}], "pullThrough[0].insecure: true is not allowed with caFile"),
        ([{"prefix": "hub", "remote": "http://r.example.com:5000", "insecure": True}],
         "pullThrough[0].remote: uses http://, so insecure and caFile have no effect"),
        ([{"prefix": "hub", "remote": HUB, "tls": True}], "pullThrough[0].tls: unknown field"),
    ],
)  # fmt: skip
def test_invalid_entries(tmp_path: Path, entries: Any, message: str) -> None:
    errors = errors_of(tmp_path, {"pullThrough": entries})
    assert any(message in error for error in errors), errors
    for error in errors:
        assert re.search(r"\(line \d+\)$", error), error
        assert "hunter2" not in error
