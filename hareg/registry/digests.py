"""Content digests: parsing, supported algorithms and streaming hashers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from hareg.registry.errors import ErrorCode, RegistryError

# The OCI image spec's digest grammar; encoded part checked per algorithm below.
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_LOWER_HEX_RE = re.compile(r"^[0-9a-f]+$")

SUPPORTED_ALGORITHMS = tuple(_HEX_LENGTH)
DEFAULT_ALGORITHM = "sha256"


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(text: str) -> Digest:
    """Parse and validate a digest; DIGEST_INVALID (400) for malformed or unsupported ones."""
    m = _DIGEST_RE.fullmatch(text)
    if not m:
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"malformed digest {text[:200]!r}")
    algorithm, encoded = m.group(1), m.group(2)
    length = _HEX_LENGTH.get(algorithm)
    if length is None:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"unsupported digest algorithm {algorithm!r}; supported: {', '.join(SUPPORTED_ALGORITHMS)}",
        )
    if len(encoded) != length or not _LOWER_HEX_RE.fullmatch(encoded):
        raise RegistryError(
            ErrorCode.DIGEST_INVALID, f"{algorithm} digest must be {length} lowercase hex characters"
        )
    return Digest(algorithm, encoded)


def check_algorithm(name: str) -> str:
    if name not in _HEX_LENGTH:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"unsupported digest algorithm {name[:50]!r}; supported: {', '.join(SUPPORTED_ALGORITHMS)}",
        )
    return name


def new_hasher(algorithm: str) -> hashlib._Hash:
    return hashlib.new(check_algorithm(algorithm))


def digest_bytes(data: bytes, algorithm: str = DEFAULT_ALGORITHM) -> str:
    h = new_hasher(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"
