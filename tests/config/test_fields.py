"""hareg.config.fields: every scalar field has a variable, and docs/configuration.md lists both."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hareg.config.fields import env_var_name, environment_variables
from hareg.config.model import AuthConfig, Config
from hareg.config.render import config_to_dict

from .support import DOCS


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
        Config(auth=AuthConfig()),
    ]
    for config in every_kind:
        # Lists of mappings and the absent auth section have no variable.
        leaves = set(_leaves(config_to_dict(config))) - {"routes", "pullThrough", "auth", "auth.bindings"}
        assert leaves <= paths, leaves - paths
    assert len({name for name, _ in environment_variables()}) == len(environment_variables())


def test_docs_describe_every_field_and_variable() -> None:
    text = DOCS.read_text()
    for variable, path in environment_variables():
        assert variable in text, variable
        assert f"`{path}`" in text, path
