"""select_range and not_modified: the RFC 9110 range and conditional decisions
of a blob GET (the HTTP behaviour on every driver's path is in test_blobs.py)."""

from __future__ import annotations

import pytest

from hareg.http.ranges import not_modified, select_range
from hareg.registry.errors import RangeNotSatisfiable, RegistryError

ETAG = '"sha256:' + "0" * 64 + '"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes = 0-9", (0, 10)),  # whitespace around "=" is tolerated
        ("bytes=\t0-9 ", (0, 10)),
        ("bytes=,0-9,", (0, 10)),  # empty list elements are allowed
        ("bytes=-1", (99, 1)),
        ("bytes=-100", (0, 100)),
        ("bytes=-" + "9" * 5000, (0, 100)),
        ("bytes=99-" + "9" * 5000, (99, 1)),
        ("bytes=0-0,5-5", None),
        ("bytes=0-0,0-0", None),
        ("none=0-9", None),
        ("0-9", None),
        ("", None),
    ],
)
def test_selection(header: str | None, expected: tuple[int, int] | None) -> None:
    assert select_range(header, None, 100, ETAG) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=-0",
        "bytes=-000",
        "bytes=100-",
        "bytes=" + "9" * 5000 + "-",
        "bytes=10-9",
        "bytes=,",
        "bytes=a-b",
        "bytes=1-2-3",
    ],
)
def test_refusals_name_the_size(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        select_range(header, None, 100, ETAG)
    assert info.value.status == 416
    assert info.value.headers == {"Content-Range": "bytes */100"}


def test_if_range() -> None:
    assert select_range("bytes=0-9", ETAG, 100, ETAG) == (0, 10)
    assert select_range("bytes=0-9", f" {ETAG} ", 100, ETAG) == (0, 10)
    assert select_range("bytes=0-9", "W/" + ETAG, 100, ETAG) is None
    assert select_range("bytes=0-9", "Wed, 21 Oct 2015 07:28:00 GMT", 100, ETAG) is None
    # If-Range without a bytes Range changes nothing; an unsatisfiable range under
    # a failed If-Range is not evaluated (the whole blob is sent).
    assert select_range(None, ETAG, 100, ETAG) is None
    assert select_range("bytes=500-", '"other"', 100, ETAG) is None


def test_not_modified() -> None:
    other = '"sha256:' + "1" * 64 + '"'
    assert not_modified(None, None, ETAG) is False
    assert not_modified(None, ETAG, ETAG) is True
    assert not_modified(None, f"W/{ETAG}", ETAG) is True  # weak comparison
    assert not_modified(None, f"{other}, {ETAG}", ETAG) is True
    assert not_modified(None, " * ", ETAG) is True
    assert not_modified(None, other, ETAG) is False
    assert not_modified(None, "garbage", ETAG) is False
    assert not_modified(ETAG, None, ETAG) is False
    assert not_modified("*", other, ETAG) is False
    for bad in (other, f"W/{ETAG}", "garbage", ""):  # If-Match compares strongly
        with pytest.raises(RegistryError) as info:
            not_modified(bad, None, ETAG)
        assert info.value.status == 412
