"""The auth section's files copied into the cluster directory: checked as a
replica checks them, copied 0600, named by the replicas' configuration, and
a change of one seen (the supervisor rolls the replicas onto it)."""

from __future__ import annotations

import json
from pathlib import Path

import bcrypt
import pytest
import yaml
from joserfc.jwk import ECKey, OKPKey

from hareg.cluster.auth_files import MAX_AUTH_FILE_BYTES, read_auth_files, stage_auth_files
from hareg.cluster.desired import write_replica_config
from hareg.cluster.spec import load_or_create_layout
from hareg.config.model import AuthConfig, ConfigError, TokenConfig
from hareg.config.reader import load_config
from hareg.registry.tokens import generate_key_pem


def htpasswd_line(name: str) -> str:
    return f"{name}:{bcrypt.hashpw(f'{name}-pw'.encode(), bcrypt.gensalt(4)).decode()}\n"


def jwks_text() -> str:
    key = ECKey.generate_key("P-256")
    return json.dumps({"keys": [key.as_dict(private=False)]})


@pytest.fixture
def files(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "users").write_text(htpasswd_line("ed"))
    (src / "issuer.jwks").write_text(jwks_text())
    (src / "key.pem").write_bytes(generate_key_pem())
    return src


def full_auth(htpasswd: str = "users") -> AuthConfig:
    return AuthConfig(
        htpasswd_path=htpasswd,
        token=TokenConfig(issuer="https://issuer.example", jwks="issuer.jwks", signing_key_file="key.pem"),
    )


def test_files_are_copied_0600_from_relative_paths(files: Path, tmp_path: Path) -> None:
    target = tmp_path / "cluster" / "auth"
    target.parent.mkdir()
    staged = stage_auth_files(full_auth(), target, files)
    assert staged.changed
    assert staged.auth is not None
    assert staged.auth.htpasswd_path == str(target / "htpasswd")
    assert staged.auth.token.jwks == str(target / "jwks.json")
    assert staged.auth.token.signing_key_file == str(target / "token-key.pem")
    assert staged.auth.token.issuer == "https://issuer.example", "everything else is kept"
    for copy, original in (("htpasswd", "users"), ("jwks.json", "issuer.jwks"), ("token-key.pem", "key.pem")):
        assert (target / copy).read_bytes() == (files / original).read_bytes()
        assert (target / copy).stat().st_mode & 0o777 == 0o600
    assert target.stat().st_mode & 0o777 == 0o700

    assert not stage_auth_files(full_auth(), target, files).changed, "same content: no change"
    (files / "users").write_text(htpasswd_line("ed") + htpasswd_line("new"))
    assert stage_auth_files(full_auth(), target, files).changed
    assert "new:" in (target / "htpasswd").read_text()

    # A file the section no longer names is removed (a key must not linger).
    only_users = stage_auth_files(AuthConfig(htpasswd_path=str(files / "users")), target, tmp_path)
    assert only_users.changed
    assert sorted(p.name for p in target.iterdir()) == ["htpasswd"]
    assert only_users.auth is not None and only_users.auth.token.signing_key_file is None


def test_no_section_or_disabled_reads_nothing(tmp_path: Path) -> None:
    assert read_auth_files(None, tmp_path) == {}
    disabled = AuthConfig(disabled=True, htpasswd_path="missing")
    assert read_auth_files(disabled, tmp_path) == {}
    assert stage_auth_files(disabled, tmp_path / "auth", tmp_path).auth == disabled
    assert not (tmp_path / "auth").exists()


def test_every_bad_file_is_refused_naming_its_field(files: Path, tmp_path: Path) -> None:
    (files / "md5").write_text("ed:$apr1$abcdefgh$0123456789abcdefghijkl\n")
    (files / "p384.pem").write_bytes(ECKey.generate_key("P-384").as_pem(private=True))
    (files / "bad.jwks").write_text('{"keys": "no"}')
    auth = AuthConfig(
        htpasswd_path="md5",
        token=TokenConfig(issuer="https://issuer.example", jwks="bad.jwks", signing_key_file="p384.pem"),
    )
    target = tmp_path / "auth"
    with pytest.raises(ConfigError) as caught:
        stage_auth_files(auth, target, files)
    errors = caught.value.errors
    assert len(errors) == 3, errors
    htpasswd, jwks, key = errors
    assert htpasswd.startswith("auth.htpasswd.path 'md5' line 1") and "bcrypt" in htpasswd
    assert "$apr1$" not in htpasswd, "a password hash is never echoed"
    assert jwks.startswith("auth.token.jwks: 'bad.jwks'") and "expected a JWKS document" in jwks
    assert key.startswith(
        "auth.token.signingKeyFile: 'p384.pem' is not a PEM P-256 (prime256v1) EC private key"
    )
    assert not target.exists(), "nothing is written when a file is refused"

    with pytest.raises(
        ConfigError, match=r"auth\.htpasswd\.path: 'nope' cannot be read .*expected a readable file"
    ):
        read_auth_files(AuthConfig(htpasswd_path="nope"), files)
    (files / "garbage.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"auth\.token\.signingKeyFile: 'garbage.pem' is not a PEM P-256"):
        read_auth_files(AuthConfig(token=TokenConfig(signing_key_file="garbage.pem")), files)
    (files / "ed25519.pem").write_bytes(OKPKey.generate_key("Ed25519").as_pem(private=True))
    with pytest.raises(ConfigError, match=r"auth\.token\.signingKeyFile: 'ed25519.pem' is not a PEM P-256"):
        read_auth_files(AuthConfig(token=TokenConfig(signing_key_file="ed25519.pem")), files)
    (files / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"auth\.htpasswd\.path: 'binary' is not UTF-8 text"):
        read_auth_files(AuthConfig(htpasswd_path="binary"), files)


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(MAX_AUTH_FILE_BYTES + 1)  # sparse: no disk space used
    with pytest.raises(
        ConfigError, match=rf"auth\.htpasswd\.path: .* is larger than {MAX_AUTH_FILE_BYTES} bytes"
    ):
        read_auth_files(AuthConfig(htpasswd_path=str(huge)), tmp_path)


def test_replica_config_names_the_copies_and_a_changed_file_is_a_change(files: Path, tmp_path: Path) -> None:
    layout = load_or_create_layout(tmp_path / "c", etcd_members=1, storage="filesystem")
    user_file = tmp_path / "config.yaml"
    user_file.write_text(
        yaml.safe_dump(
            {
                "auth": {
                    "htpasswd": {"path": "users"},
                    "token": {"signingKeyFile": str(files / "key.pem")},
                    "bindings": [{"subject": "ed", "role": "editor", "repositories": ["team/*"]}],
                }
            }
        )
    )
    config = load_config(user_file, {})
    assert write_replica_config(config, layout, files) is True
    assert write_replica_config(config, layout, files) is False
    loaded = load_config(layout.paths.replica_config, {})
    assert loaded.auth is not None
    assert loaded.auth.htpasswd_path == str(layout.paths.auth_dir / "htpasswd")
    assert loaded.auth.token.signing_key_file == str(layout.paths.auth_dir / "token-key.pem")
    assert config.auth is not None and loaded.auth.bindings == config.auth.bindings

    # Only the users changed, not the configuration's text: still a change (a rolling restart).
    text = layout.paths.replica_config.read_text()
    (files / "users").write_text(htpasswd_line("ed") + htpasswd_line("new"))
    assert write_replica_config(config, layout, files) is True
    assert layout.paths.replica_config.read_text() == text
    assert "new:" in (layout.paths.auth_dir / "htpasswd").read_text()
