"""The files the ``pullThrough`` entries name, copied into ``DIR/pull-through``
for every replica.

``hareg cluster up`` hands every replica the same ``pullThrough`` section
(docs/pull-through.md); the files its entries name (``passwordFile``, the
upstream's password or token, and ``caFile``, the PEM bundle that verifies
the upstream) are read here, checked as a replica would check them, and
copied (mode 0600, atomically) to::

    DIR/pull-through/<index>-password        DIR/pull-through/<index>-ca.pem

where ``<index>`` is the entry's place in the list.  The replicas'
configuration names the copies, so every replica reads the same bytes, as
with the ``auth`` files (auth_files.py, whose rules this follows: a relative
path is taken from the directory ``hareg cluster up`` runs in, the copies
change only when the supervisor re-reads its configuration, and a copy no
entry names any more is removed).  A password is never put in a message.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from hareg.cluster.auth_files import read_file, write_copy
from hareg.config.model import ConfigError, PullThrough

__all__ = ["StagedMirrors", "read_mirror_files", "stage_mirror_files"]

# Names of the copies by the entry's field (prefixed with the entry's index).
COPY_SUFFIXES: Final = {"passwordFile": "password", "caFile": "ca.pem"}


@dataclass(frozen=True)
class StagedMirrors:
    pull_through: tuple[PullThrough, ...]  # the entries with their paths pointing at the copies
    changed: bool  # a copy was written, or removed, with content it did not have


def _check(field: str, value: str, data: bytes) -> None:
    """Refuse what a replica would refuse at start (hareg/upstream/mirrors.py: it would crash-loop)."""
    if field.endswith(".passwordFile"):
        try:
            password = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError([f"{field}: {value!r} is not UTF-8 text; expected the password"]) from None
        if not password:
            raise ConfigError([f"{field}: {value!r} is empty; expected the upstream password or token"])
        return
    try:
        if not data.strip():
            raise ValueError("it is empty")
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            [f"{field}: {value!r} holds no usable PEM CA certificate ({exc}); expected a PEM CA bundle"]
        ) from None


def read_mirror_files(entries: tuple[PullThrough, ...], base: Path) -> dict[tuple[int, str], bytes]:
    """The content of each file the entries name, by (index, field), checked
    as a replica would check it; relative paths are taken from ``base``.
    Raises ConfigError listing every problem, each naming its field."""
    contents: dict[tuple[int, str], bytes] = {}
    errors: list[str] = []
    for index, entry in enumerate(entries):
        for key, value in (("passwordFile", entry.password_file), ("caFile", entry.ca_file)):
            if value is None:
                continue
            field = f"pullThrough[{index}].{key}"
            try:
                data = read_file(field, value, base)
                _check(field, value, data)
            except ConfigError as exc:
                errors.extend(exc.errors)
                continue
            contents[(index, key)] = data
    if errors:
        raise ConfigError(errors)
    return contents


def stage_mirror_files(entries: tuple[PullThrough, ...], directory: Path, base: Path) -> StagedMirrors:
    """Check and copy the files ``entries`` name into ``directory`` (see
    ``read_mirror_files``; nothing is written if one is refused).  A copy no
    entry names any more is removed."""
    contents = {
        f"{index}-{COPY_SUFFIXES[key]}": data
        for (index, key), data in read_mirror_files(entries, base).items()
    }

    def copy_of(index: int, key: str, value: str | None) -> str | None:
        name = f"{index}-{COPY_SUFFIXES[key]}"
        return str(directory / name) if name in contents else value

    staged = tuple(
        replace(
            entry,
            password_file=copy_of(index, "passwordFile", entry.password_file),
            ca_file=copy_of(index, "caFile", entry.ca_file),
        )
        for index, entry in enumerate(entries)
    )
    changed = False
    if contents:
        directory.mkdir(mode=0o700, exist_ok=True)
        for name, data in contents.items():
            changed |= write_copy(directory / name, data)
    if directory.is_dir():
        for old in directory.iterdir():
            if old.name not in contents and not old.name.startswith("."):
                old.unlink()
                changed = True
    return StagedMirrors(staged, changed)
