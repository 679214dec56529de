"""Tag lifecycle: history, rollback and immutable tags.

History is written by every tag move (push, delete, rollback) in the same
transaction as the move; it only moves forward (invariant 5 of docs/invariants.md): a rollback is a
new entry that points the tag back at an earlier digest, never a rewrite.

Immutability rules are per repository: fnmatch-style patterns (``v*``, ``*``
for every tag, ``release-[0-9]*``), matched case-sensitively.  A tag that
matches may be created, and re-pushed with the same digest, but never moved
to another digest or deleted (directly or by deleting its manifest).  A
refusal is the spec's DENIED code with status 409 Conflict: the request is
well-formed and authorised, it conflicts with the repository's state, and a
403 would read as a permissions problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hareg.metadata.records import HistoryEntry, ImmutabilityRecord
from hareg.metadata.store import ImmutableTag, MetadataStore, MissingReferences
from hareg.registry.digests import parse_digest
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.names import check_name, check_tag

MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 128
# The tag charset plus fnmatch's wildcards; '!' (set negation) is not offered.
_PATTERN_RE = re.compile(r"^[A-Za-z0-9_.\-*?\[\]]+$")
IMMUTABLE_STATUS = 409


@dataclass(frozen=True, slots=True)
class TagMove:
    """The result of a rollback: the new history entry (``moved``), or, when the
    tag already pointed at the digest, its latest entry for that digest."""

    entry: HistoryEntry | None
    moved: bool


def immutable_error(exc: ImmutableTag) -> RegistryError:
    return RegistryError(
        ErrorCode.DENIED,
        f"tag {exc.tag} in {exc.repo} is immutable (pattern {exc.pattern!r})",
        detail={"tag": exc.tag, "pattern": exc.pattern},
        status=IMMUTABLE_STATUS,
    )


def _invalid(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, message, status=400)


def check_patterns(patterns: Sequence[object]) -> tuple[str, ...]:
    """Validated immutability patterns, duplicates removed (order kept)."""
    if len(patterns) > MAX_PATTERNS:
        raise _invalid(f"at most {MAX_PATTERNS} immutability patterns per repository, got {len(patterns)}")
    out: list[str] = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise _invalid(f"an immutability pattern must be a non-empty string, got {str(p)[:50]!r}")
        if len(p) > MAX_PATTERN_LENGTH:
            raise _invalid(
                f"immutability pattern {p[:50]!r}... is longer than {MAX_PATTERN_LENGTH} characters"
            )
        if not _PATTERN_RE.fullmatch(p):
            raise _invalid(
                f"invalid immutability pattern {p[:MAX_PATTERN_LENGTH]!r}: use tag characters "
                "[A-Za-z0-9_.-] and the wildcards * ? [ ]"
            )
        if p not in out:
            out.append(p)
    return tuple(out)


class TagLifecycle:
    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta

    async def _unknown_repo(self, repo: str) -> RegistryError | None:
        if await self.meta.repo_exists(repo):
            return None
        return RegistryError(ErrorCode.NAME_UNKNOWN, f"repository {repo} is not known to the registry")

    async def history(self, repo: str, tag: str) -> list[HistoryEntry]:
        """Every recorded move of the tag, oldest first."""
        check_name(repo)
        check_tag(tag)
        entries = await self.meta.tag_history(repo, tag)
        if not entries:
            raise await self._unknown_repo(repo) or RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"tag {tag} has no history in repository {repo}"
            )
        return entries

    async def rollback(self, repo: str, tag: str, digest_text: str) -> TagMove:
        """Point the tag at ``digest``, a manifest of the repository, as a new
        forward history entry with action "rollback"."""
        check_name(repo)
        check_tag(tag)
        digest = str(parse_digest(digest_text))
        try:
            entry = await self.meta.move_tag(repo, tag, digest, "rollback")
        except MissingReferences:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, f"manifest {digest} is not in repository {repo}"
            ) from None
        except ImmutableTag as exc:
            raise immutable_error(exc) from None
        if entry is not None:
            return TagMove(entry, True)
        history = await self.meta.tag_history(repo, tag)
        return TagMove(next((e for e in reversed(history) if e.new == digest), None), False)

    async def immutability(self, repo: str) -> ImmutabilityRecord | None:
        """The repository's rule (None: no tag is immutable)."""
        check_name(repo)
        record = await self.meta.get_immutability(repo)
        if record is None and (unknown := await self._unknown_repo(repo)) is not None:
            raise unknown
        return record

    async def set_immutability(self, repo: str, patterns: Sequence[object]) -> ImmutabilityRecord | None:
        """Replace the repository's patterns; an empty list removes the rule.
        A rule may be set before the repository's first push."""
        check_name(repo)
        return await self.meta.set_immutability(repo, check_patterns(patterns))
