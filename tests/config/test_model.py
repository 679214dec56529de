"""hareg.config.model: the frozen model, its defaults, ConfigError."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hareg.config.model import Config, ConfigError, EtcdConfig, PrunerConfig, RequestLimits
from hareg.config.reader import load_config
from hareg.metadata.store import DEFAULT_INLINE_LIMIT

from .support import SECRET, load


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


def test_config_is_frozen_and_hides_secrets_in_repr(tmp_path: Path) -> None:
    config = load(tmp_path, {"httpSecret": SECRET, "storage": {"s3": {"bucket": "bkt", "accessKey": "AK",
                                                                       "secretKey": "very-secret"}}})  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.replicas = 2  # type: ignore[misc]
    assert SECRET not in repr(config)
    assert "very-secret" not in repr(config)


def test_config_error_lists_one_problem_a_line() -> None:
    error = ConfigError(["a: bad", "b: worse"])
    assert error.errors == ["a: bad", "b: worse"]
    assert str(error) == "a: bad\nb: worse"


def test_limits_defaults_fit_etcds_default_limits() -> None:
    """The manifest caps keep a push's transaction within etcd's defaults
    (--max-txn-ops 128, --max-request-bytes 1.5 MiB), as docs/configuration.md explains."""
    limits = Config().limits
    fixed_compares, compares_per_tag, tags = 3, 2, 8
    assert limits.max_manifest_references + fixed_compares + compares_per_tag * tags <= 128
    fixed_writes, writes_per_tag = 4, 3  # and one reverse-index entry per reference
    assert limits.max_manifest_references + fixed_writes + writes_per_tag * tags <= 128
    assert DEFAULT_INLINE_LIMIT + 2 * limits.max_manifest_annotation_bytes < 1.5 * 1024 * 1024 * 0.75
