"""What a blob GET sends: the conditional (RFC 9110 §13) and range (§14)
rules, decided before any byte is sent, the same on every path.

A blob's ETag is ``"<digest>"`` on every path (sendfile included): the bytes
under a blob URL never change, so that validator is exact.  ``not_modified``
evaluates If-Match (412 when no entity-tag matches strongly) and
If-None-Match (304 when one matches weakly, or ``*``).

``select_range`` decides, before any byte is sent and whichever path serves
the bytes (sendfile, a stream from the blob store, a redirect), between the
whole blob (200), one range of it (206) and 416:

* no Range, a range unit other than ``bytes`` (RFC 9110 §14.2: MUST be
  ignored), or an If-Range other than the blob's ETag (``"<digest>"``): the
  whole blob;
* one satisfiable range: that range (a last-pos past the end is clipped);
* several ranges of which at least one is satisfiable: the whole blob with
  200, which §14.2 allows ("a server MAY ignore the Range header field");
  hareg never sends multipart/byteranges;
* no satisfiable range (``bytes=-0``, a first-pos at or past the end, any
  byte range of an empty blob except a non-zero suffix): 416 with
  ``Content-Range: bytes */<size>``;
* a ``bytes`` range set that does not parse (``bytes=5-2``, ``bytes=x``): 416,
  which §14.2 allows for an invalid ranges-specifier.
"""

from __future__ import annotations

import re
from typing import Final

from hareg.registry.errors import ErrorCode, RangeNotSatisfiable, RegistryError

# ASCII digits; more than 19 of them is past any blob's size, and int() is never
# given a 5000-digit string.
_INT_RANGE: Final = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE: Final = re.compile(r"-([0-9]+)")
_HUGE: Final = 1 << 64


_ENTITY_TAG: Final = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')


def _entity_tags(header: str) -> list[tuple[bool, str]]:
    """(weak, opaque-tag) of each entity-tag in an If-Match / If-None-Match list."""
    return [(bool(m[1]), m[2]) for m in _ENTITY_TAG.finditer(header)]


def not_modified(if_match: str | None, if_none_match: str | None, etag: str) -> bool:
    """True when If-None-Match names the blob (answer 304); raises 412 when an
    If-Match names no current representation of it."""
    strong = [tag for weak, tag in _entity_tags(if_match or "") if not weak]
    if if_match is not None and if_match.strip() != "*" and etag not in strong:
        raise RegistryError(
            ErrorCode.UNSUPPORTED, f"If-Match does not name this blob's ETag {etag}", status=412
        )
    if if_none_match is None:
        return False
    return if_none_match.strip() == "*" or any(tag == etag for _, tag in _entity_tags(if_none_match))


def _number(text: str) -> int:
    return int(text) if len(text) <= 19 else _HUGE


def select_range(
    range_header: str | None, if_range: str | None, size: int, etag: str
) -> tuple[int, int] | None:
    """(offset, length) of the one range to send with 206, or None for the whole
    blob with 200; raises RangeNotSatisfiable (416) when nothing can be sent."""
    if range_header is None:
        return None
    unit, eq, range_set = range_header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None  # an unknown unit (or no ranges-specifier at all) is ignored
    if if_range is not None and if_range.strip() != etag:
        # Strong comparison with the digest ETag; anything else (another tag, a date)
        # gets the whole blob, which is always a correct answer (RFC 9110 §13.1.5).
        return None
    unsatisfiable = RangeNotSatisfiable(
        f"cannot satisfy range {range_header[:100]!r} of a {size}-byte blob",
        headers={"Content-Range": f"bytes */{size}"},
    )
    specs = [part.strip(" \t") for part in range_set.split(",")]
    specs = [spec for spec in specs if spec]  # a list may have empty elements (RFC 9110 §5.6.1)
    if not specs:
        raise unsatisfiable
    satisfiable: list[tuple[int, int]] = []
    for spec in specs:
        if m := _INT_RANGE.fullmatch(spec):
            first = _number(m[1])
            last = _number(m[2]) if m[2] else _HUGE
            if last < first:
                raise unsatisfiable  # invalid, not merely unsatisfiable
            if first < size:
                end = min(last, size - 1)
                satisfiable.append((first, end - first + 1))
        elif m := _SUFFIX_RANGE.fullmatch(spec):
            length = min(_number(m[1]), size)
            if m[1].strip("0"):  # a non-zero suffix-length is satisfiable, even of an empty blob
                satisfiable.append((size - length, length))
        else:
            raise unsatisfiable
    if not satisfiable:
        raise unsatisfiable
    if len(specs) > 1:
        return None  # several ranges: the whole blob (never multipart)
    offset, length = satisfiable[0]
    # A suffix range of an empty blob selects zero bytes, which no Content-Range can
    # describe: the whole (empty) blob.
    return (offset, length) if length else None
