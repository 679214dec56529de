"""Repository names, tags and references as the distribution spec defines them."""

from __future__ import annotations

import re

from hareg.registry.digests import Digest, parse_digest
from hareg.registry.errors import ErrorCode, RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
# distribution's limit; clients add the host to it and cap the whole at 255.
MAX_NAME_LENGTH = 255


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(
            ErrorCode.NAME_INVALID, f"repository name is longer than {MAX_NAME_LENGTH} characters"
        )
    if not _NAME_RE.fullmatch(name):
        raise RegistryError(
            ErrorCode.NAME_INVALID,
            f"invalid repository name {name[:100]!r}: lowercase alphanumeric path components "
            "separated by '/', each with single '.', '_', '__' or runs of '-' between alphanumerics",
        )
    return name


def is_tag(text: str) -> bool:
    return bool(_TAG_RE.fullmatch(text))


def check_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise RegistryError(
            ErrorCode.MANIFEST_INVALID,
            f"invalid tag {tag[:150]!r}: at most 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'",
        )
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a digest (it has a ':') or a tag."""
    if ":" in reference:
        return parse_digest(reference)
    return check_tag(reference)
