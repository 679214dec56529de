"""The pullThrough entries' files copied into the cluster directory
(hareg/cluster/mirror_files.py): checked as a replica checks them, copied
0600, named by the replicas' configuration, a change seen, a copy no entry
names removed, and the password never in a message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from e2e.certs import self_signed

from hareg.clock import SystemClock
from hareg.cluster.desired import write_replica_config
from hareg.cluster.mirror_files import read_mirror_files, stage_mirror_files
from hareg.cluster.spec import load_or_create_layout
from hareg.config.model import ConfigError, PullThrough
from hareg.config.reader import load_config
from hareg.upstream.mirrors import build_mirrors

SECRET = "s3cret-upstream-password"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hub-password").write_text(SECRET + "\n")
    cert, _, _ = self_signed(src, "upstream.example", "upstream")
    (src / "ca.pem").write_bytes(cert.read_bytes())
    return src


def entries() -> tuple[PullThrough, ...]:
    return (
        PullThrough("hub", "https://registry-1.docker.io", username="bot", password_file="hub-password"),
        PullThrough("quay", "https://quay.example", ca_file="ca.pem"),
        PullThrough("plain", "http://127.0.0.1:5000"),
    )


def test_files_are_copied_0600_and_the_entries_name_the_copies(files: Path, tmp_path: Path) -> None:
    target = tmp_path / "cluster" / "pull-through"
    target.parent.mkdir()
    staged = stage_mirror_files(entries(), target, files)
    assert staged.changed
    hub, quay, plain = staged.pull_through
    assert hub.password_file == str(target / "0-password") and hub.username == "bot"
    assert quay.ca_file == str(target / "1-ca.pem")
    assert plain == entries()[2], "an entry without files is kept as it is"
    assert (target / "0-password").read_text() == SECRET + "\n"
    assert (target / "1-ca.pem").read_bytes() == (files / "ca.pem").read_bytes()
    assert {p.stat().st_mode & 0o777 for p in target.iterdir()} == {0o600}
    assert target.stat().st_mode & 0o777 == 0o700
    assert not stage_mirror_files(entries(), target, files).changed, "same content: no change"
    (files / "hub-password").write_text("rotated\n")
    assert stage_mirror_files(entries(), target, files).changed
    # A copy no entry names any more is removed (a password must not linger).
    only_quay = stage_mirror_files(entries()[1:], target, files)
    assert only_quay.changed and sorted(p.name for p in target.iterdir()) == ["0-ca.pem"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, r"pullThrough\[0\]\.passwordFile: '.*missing' cannot be read"),
        ("empty", b"\n", r"pullThrough\[0\]\.passwordFile: '.*empty' is empty"),
        ("binary", b"\xff\xfe" + SECRET.encode(), r"pullThrough\[0\]\.passwordFile: .* is not UTF-8"),
    ],
)
def test_a_password_file_a_replica_would_refuse_is_refused(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    entry = PullThrough("hub", "https://r.example", username="bot", password_file=name)
    with pytest.raises(ConfigError, match=message) as refused:
        stage_mirror_files((entry,), tmp_path / "copies", tmp_path)
    assert SECRET not in str(refused.value)
    assert not (tmp_path / "copies").exists(), "nothing written"


def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    (tmp_path / "empty.pem").write_text("")
    bad = (
        PullThrough("a", "https://a.example", ca_file="ca.pem"),
        PullThrough("b", "https://b.example", ca_file="empty.pem"),
    )
    with pytest.raises(ConfigError) as refused:
        read_mirror_files(bad, tmp_path)
    assert len(refused.value.errors) == 2
    assert refused.value.errors[0].startswith(
        "pullThrough[0].caFile: 'ca.pem' holds no usable PEM CA certificate"
    )
    assert refused.value.errors[1].startswith("pullThrough[1].caFile: 'empty.pem' holds no usable PEM CA")


def test_the_replicas_configuration_names_the_copies_and_they_load(files: Path, tmp_path: Path) -> None:
    layout = load_or_create_layout(tmp_path / "c", etcd_members=1, storage="filesystem")
    user_file = tmp_path / "config.yaml"
    user_file.write_text(
        yaml.safe_dump(
            {
                "pullThrough": [
                    {"prefix": "hub", "remote": "https://registry-1.docker.io", "username": "bot",
                     "passwordFile": "hub-password", "ttl": "1m", "expireAfter": "24h"},
                    {"prefix": "quay", "remote": "https://quay.example", "caFile": str(files / "ca.pem")},
                ]
            }
        )
    )  # fmt: skip
    config = load_config(user_file, {})
    assert write_replica_config(config, layout, files) is True
    assert write_replica_config(config, layout, files) is False
    loaded = load_config(layout.paths.replica_config, {})
    hub, quay = loaded.pull_through
    assert hub.password_file == str(layout.paths.mirror_dir / "0-password")
    assert (hub.ttl, hub.expire_after, hub.username) == (60.0, 86400.0, "bot")
    assert quay.ca_file == str(layout.paths.mirror_dir / "1-ca.pem")
    assert SECRET not in layout.paths.replica_config.read_text()
    # What a replica builds from it: the copied password, the copied CA bundle.
    secrets: list[bytes] = []
    mirrors = build_mirrors(loaded, SystemClock(), on_secret=secrets.append)  # no request is sent
    assert secrets == [SECRET.encode()]
    assert [m.prefix for m in mirrors] == ["hub", "quay"]
    # A changed password is a change though the configuration's text is not (a rolling restart).
    (files / "hub-password").write_text("rotated\n")
    assert write_replica_config(config, layout, files) is True
