"""Helpers shared by the configuration tests: write a file, load it, collect its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hareg.config.model import Config, ConfigError
from hareg.config.reader import load_config

SECRET = "0123456789abcdef0123456789abcdef"
DOCS = Path(__file__).resolve().parent.parent.parent / "docs" / "configuration.md"


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
