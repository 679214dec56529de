"""Repository names, tags and references (hareg.registry.names)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hareg.registry.digests import Digest
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.names import MAX_NAME_LENGTH, check_name, check_tag, is_tag, parse_reference

# The spec's grammar, written out independently of the module under test.
SPEC_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")

alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
separator = st.sampled_from([".", "_", "__", "-", "--", "---"])
component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    alnum,
    st.lists(st.tuples(separator, alnum), max_size=3),
)
valid_names = (
    st.lists(component, min_size=1, max_size=6).map("/".join).filter(lambda n: len(n) <= MAX_NAME_LENGTH)
)
valid_tags = st.from_regex(SPEC_TAG, fullmatch=True)


@given(valid_names)
@settings(max_examples=150, deadline=None)
def test_valid_names_round_trip(name: str) -> None:
    assert check_name(name) == name


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_text_is_accepted_exactly_when_the_spec_grammar_matches(text: str) -> None:
    expected = bool(SPEC_NAME.fullmatch(text)) and len(text) <= MAX_NAME_LENGTH
    try:
        assert check_name(text) == text
        ok = True
    except RegistryError as exc:
        assert exc.code is ErrorCode.NAME_INVALID and exc.status == 400
        ok = False
    assert ok == expected, text


@given(
    valid_names,
    st.sampled_from(["\n", "\r\n", "/", "//", " ", "\x00", "-", ".", "A", "é", "\\"]),
    st.booleans(),
)
def test_a_valid_name_spoiled_at_either_end_is_refused(name: str, junk: str, front: bool) -> None:
    bad = junk + name if front else name + junk
    with pytest.raises(RegistryError) as info:
        check_name(bad)
    assert info.value.code is ErrorCode.NAME_INVALID


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Repo",
        "..",
        "a/../b",
        "a/./b",
        "/a",
        "a/",
        "a//b",
        "a..b",
        "a___b",
        "-a",
        "a-",
        "a_",
        "_a",
        "a b",
        "a:b",
        "a@b",
        "ré",
        "a\\b",
        "a\x00",
        "repo\n",
        "a" * (MAX_NAME_LENGTH + 1),
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError) as info:
        check_name(name)
    assert info.value.code is ErrorCode.NAME_INVALID
    assert info.value.status == 400


@pytest.mark.parametrize("name", ["a", "a/b", "a__b", "a---b", "a.b/c_d/e-f", "0", "a" * MAX_NAME_LENGTH])
def test_edge_valid_names(name: str) -> None:
    assert check_name(name) == name


@given(valid_tags)
def test_valid_tags(tag: str) -> None:
    assert is_tag(tag)
    assert check_tag(tag) == tag
    assert parse_reference(tag) == tag


@given(st.text(max_size=140))
@settings(max_examples=500, deadline=None)
def test_is_tag_agrees_with_the_spec(text: str) -> None:
    assert is_tag(text) == bool(SPEC_TAG.fullmatch(text))
    if not is_tag(text):
        with pytest.raises(RegistryError) as info:
            check_tag(text)
        assert info.value.status == 400


@pytest.mark.parametrize(
    "tag", ["a" * 129, ".a", "-a", "", "a b", "a/b", "a+b", "a@b", "é", "v1\n", "v1\r\n", "\nv1"]
)
def test_invalid_tags(tag: str) -> None:
    assert not is_tag(tag)
    with pytest.raises(RegistryError) as info:
        check_tag(tag)
    assert info.value.code is ErrorCode.MANIFEST_INVALID


def test_longest_tag() -> None:
    assert check_tag("_" + "a" * 127) == "_" + "a" * 127


def test_parse_reference_digest_or_tag() -> None:
    digest = "sha256:" + "a" * 64
    assert parse_reference(digest) == Digest("sha256", "a" * 64)
    assert parse_reference("latest") == "latest"
    with pytest.raises(RegistryError) as info:
        parse_reference("sha256:xyz")
    assert info.value.code is ErrorCode.DIGEST_INVALID
    with pytest.raises(RegistryError) as info:
        parse_reference(".bad")
    assert info.value.code is ErrorCode.MANIFEST_INVALID
