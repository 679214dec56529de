"""Digests (hareg.registry.digests)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hareg.registry.digests import (
    DEFAULT_ALGORITHM,
    SUPPORTED_ALGORITHMS,
    Digest,
    check_algorithm,
    digest_bytes,
    new_hasher,
    parse_digest,
)
from hareg.registry.errors import ErrorCode, RegistryError

SHA256_HEX = hashlib.sha256(b"x").hexdigest()
SHA512_HEX = hashlib.sha512(b"x").hexdigest()


def test_supported_algorithms() -> None:
    assert DEFAULT_ALGORITHM == "sha256"
    assert set(SUPPORTED_ALGORITHMS) == {"sha256", "sha512"}


@pytest.mark.parametrize(("algorithm", "hex_"), [("sha256", SHA256_HEX), ("sha512", SHA512_HEX)])
def test_parse_valid(algorithm: str, hex_: str) -> None:
    digest = parse_digest(f"{algorithm}:{hex_}")
    assert digest == Digest(algorithm, hex_)
    assert str(digest) == f"{algorithm}:{hex_}"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + SHA256_HEX,
        "sha256:" + SHA256_HEX[:-1],
        "sha256:" + SHA256_HEX + "0",
        "sha256:" + SHA256_HEX.upper(),
        "SHA256:" + SHA256_HEX,
        "sha512:" + SHA256_HEX,
        "sha256:" + SHA512_HEX,
        "md5:" + hashlib.md5(b"x").hexdigest(),
        "sha1:" + hashlib.sha1(b"x").hexdigest(),
        "sha384:" + hashlib.sha384(b"x").hexdigest(),
        "sha256:" + "g" * 64,
        "sha256:" + SHA256_HEX + "\n",
        "sha256:" + SHA256_HEX + "\x00",
        " sha256:" + SHA256_HEX,
        "sha256 :" + SHA256_HEX,
        "sha256:../../" + SHA256_HEX[6:],
        "sha256::" + SHA256_HEX,
        "sha256:" + SHA256_HEX + ":" + SHA256_HEX,
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_digest(text)
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert info.value.status == 400


@given(st.binary(max_size=2048), st.sampled_from(SUPPORTED_ALGORITHMS))
def test_digest_bytes_round_trips_and_matches_hashlib(data: bytes, algorithm: str) -> None:
    text = digest_bytes(data, algorithm)
    assert text == f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    assert str(parse_digest(text)) == text


@given(st.text(max_size=200))
@settings(max_examples=500, deadline=None)
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        digest = parse_digest(text)
    except RegistryError as exc:
        assert exc.code is ErrorCode.DIGEST_INVALID
    else:
        assert str(digest) == text  # accepted only in canonical form


@pytest.mark.parametrize("name", ["md5", "sha1", "SHA256", "", "sha256 ", "sha3-256"])
def test_check_algorithm_refuses_others(name: str) -> None:
    with pytest.raises(RegistryError) as info:
        check_algorithm(name)
    assert info.value.code is ErrorCode.DIGEST_INVALID
    with pytest.raises(RegistryError):
        new_hasher(name)


@pytest.mark.parametrize("name", SUPPORTED_ALGORITHMS)
def test_new_hasher(name: str) -> None:
    hasher = new_hasher(name)
    hasher.update(b"x")
    assert hasher.hexdigest() == hashlib.new(name, b"x").hexdigest()
