"""The ``--auth`` users: an htpasswd file of bcrypt entries only this user can
read, with the config sections each registry reads it through."""

from __future__ import annotations

import stat
from pathlib import Path

import bcrypt
import pytest
import yaml

from bench.users import BENCH_REPOSITORIES, write_users
from hareg.registry.htpasswd import parse_htpasswd


def test_the_htpasswd_file_holds_bcrypt_entries_of_the_cost_asked(tmp_path: Path) -> None:
    users = write_users(tmp_path, bcrypt_cost=4, token_expiry=42)
    assert stat.S_IMODE(users.htpasswd.stat().st_mode) == 0o600
    entries = parse_htpasswd(users.htpasswd.read_text(), "test")  # hareg's own reader accepts it
    assert set(entries) == {"bench", "bench-viewer"}
    assert entries["bench"].startswith(b"$2b$04$")
    assert bcrypt.checkpw(users.password.encode(), entries["bench"])
    assert users.password not in repr(users)
    assert write_users(tmp_path / ".." / tmp_path.name, bcrypt_cost=4).password != users.password


def test_each_registry_gets_its_auth_section(tmp_path: Path) -> None:
    users = write_users(tmp_path, bcrypt_cost=4, token_expiry=42)
    hareg = users.hareg_auth()
    assert hareg["htpasswd"]["path"] == str(users.htpasswd)
    assert hareg["token"]["expiry"] == "42s"
    assert {"subject": "bench", "role": "admin", "repositories": list(BENCH_REPOSITORIES)} in hareg[
        "bindings"
    ]
    distribution = yaml.safe_load(users.distribution_auth())
    assert distribution["auth"]["htpasswd"]["path"] == str(users.htpasswd)


def test_a_cost_bcrypt_does_not_allow_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4 to 31"):
        write_users(tmp_path, bcrypt_cost=3)
