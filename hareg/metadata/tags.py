"""Tags: reads, deletion, moves (rollback) with their forward-only history,
and the repository's immutability rule.

A tag moves only by a compare on its mod_revision, and every move appends a
history entry numbered by a per-tag sequence (invariant 5 of docs/invariants.md): history is never
rewritten, a rollback is a new forward entry.  Every tag write also compares
the immutability rule it was checked against (``rule_unchanged``), so no
move checked against an old rule commits after the rule changed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from hareg.kv.base import Compare, Delete, KeyValue, Put, TxnOp
from hareg.metadata.errors import ImmutableTag, MissingReferences
from hareg.metadata.keys import Keys
from hareg.metadata.records import (
    HistoryEntry,
    ImmutabilityRecord,
    TagRecord,
    TagSeqRecord,
    decode,
    encode,
)
from hareg.metadata.writes import Done, StoreBase, Txn


def immutable_pattern(patterns: Sequence[str], tag: str) -> str | None:
    """The first pattern that makes ``tag`` immutable (fnmatch, case-sensitive)."""
    return next((p for p in patterns if fnmatch.fnmatchcase(tag, p)), None)


def rule_patterns(rule: KeyValue | None) -> tuple[str, ...]:
    """The patterns of an immutability rule as read (none without a rule)."""
    return decode(ImmutabilityRecord, rule.value).patterns if rule else ()


def rule_unchanged(keys: Keys, repo: str, rule_kv: KeyValue | None) -> Compare:
    """Guard of a tag write checked against the immutability rule ``rule_kv``:
    a rule changed before the commit fails the transaction."""
    return Compare.mod_revision_is(keys.immutability(repo), rule_kv.mod_revision if rule_kv else 0)


def tag_delete_ops(
    keys: Keys, repo: str, tag: str, old: str, seq_kv: KeyValue | None, *, now: float, replica: str
) -> list[TxnOp]:
    """Delete ``tag`` (pointing at ``old``) and append its "delete" history
    entry, the last operation, after the sequence read as ``seq_kv``."""
    seq = (decode(TagSeqRecord, seq_kv.value).seq if seq_kv else 0) + 1
    entry = HistoryEntry(seq, now, old, None, replica, "delete")
    return [
        Delete(keys.tag(repo, tag)),
        Put(keys.tag_seq(repo, tag), encode(TagSeqRecord(seq))),
        Put(keys.history(repo, tag, seq), encode(entry)),
    ]


class TagMetadata(StoreBase):
    async def get_tag(self, repo: str, tag: str) -> TagRecord | None:
        # From etcd: the cache keeps only a tag's digest (get_tagged_manifest reads that).
        return await self._record(self.keys.tag(repo, tag), TagRecord)

    async def list_tags(self, repo: str, last: str | None, limit: int) -> tuple[list[str], bool]:
        if (cache := await self._from_cache()) is not None:
            return cache.tag_names(repo, last, limit)
        start, end = self.keys.tags(repo)
        if last is not None:
            start = self.keys.tag(repo, last) + b"\x00"
        result = await self.kv.range(start, end, limit=limit, keys_only=True)
        return [self.keys.last_part(kv.key) for kv in result.kvs], result.more

    async def tag_history(self, repo: str, tag: str) -> list[HistoryEntry]:
        result = await self._range_all(self.keys.histories(repo, tag))
        return [decode(HistoryEntry, kv.value) for kv in result.kvs]

    async def delete_tag(self, repo: str, tag: str) -> bool:
        tag_key, seq_key = self.keys.tag(repo, tag), self.keys.tag_seq(repo, tag)

        async def attempt() -> Txn[bool] | Done[bool]:
            tag_kv, seq_kv, rule_kv = await self._read_many([tag_key, seq_key, self.keys.immutability(repo)])
            if tag_kv is None:
                return Done(False)
            if pattern := immutable_pattern(rule_patterns(rule_kv), tag):
                raise ImmutableTag(repo, tag, pattern)
            compares = [
                Compare.mod_revision_is(tag_key, tag_kv.mod_revision),
                Compare.mod_revision_is(seq_key, seq_kv.mod_revision if seq_kv else 0),
                rule_unchanged(self.keys, repo, rule_kv),
            ]
            old = decode(TagRecord, tag_kv.value).digest

            def build() -> Txn[bool]:
                ops = tag_delete_ops(
                    self.keys, repo, tag, old, seq_kv, now=self.clock.now(), replica=self.replica
                )
                entry = ops[-1]
                assert isinstance(entry, Put)
                # Not "the tag is gone": a concurrent delete also leaves it gone.
                # Our own history entry (this replica, this instant) is proof; a
                # re-send writes its own (another instant).
                return Txn(compares, ops, lambda: self._wrote(entry), True, again=build)

            return build()

        return await self._write(f"delete of tag {tag} in {repo}", attempt)

    async def move_tag(
        self, repo: str, tag: str, digest: str, action: str = "rollback"
    ) -> HistoryEntry | None:
        """Point ``tag`` at ``digest``, a manifest already in the repository, and
        append a new forward history entry recording ``action`` (history is never
        rewritten).  None if the tag already points there.  Raises
        MissingReferences if the manifest is not in the repository and
        ImmutableTag if an immutability rule forbids moving the tag."""
        tag_key, seq_key = self.keys.tag(repo, tag), self.keys.tag_seq(repo, tag)
        manifest_key, rule_key = self.keys.manifest(repo, digest), self.keys.immutability(repo)
        self._check_writable()

        async def attempt() -> Txn[HistoryEntry | None] | Done[HistoryEntry | None]:
            tag_kv, seq_kv, manifest_kv, rule_kv = await self._read_many(
                [tag_key, seq_key, manifest_key, rule_key]
            )
            if manifest_kv is None:
                raise MissingReferences([], [digest])
            current = decode(TagRecord, tag_kv.value) if tag_kv else None
            if current is not None and current.digest == digest:
                await self.check_writes_allowed()  # a no-op, but refused as any write while read-only
                return Done(None)
            if current is not None and (pattern := immutable_pattern(rule_patterns(rule_kv), tag)):
                raise ImmutableTag(repo, tag, pattern)
            seq = (decode(TagSeqRecord, seq_kv.value).seq if seq_kv else 0) + 1
            compares = [
                Compare.mod_revision_is(tag_key, tag_kv.mod_revision if tag_kv else 0),
                Compare.mod_revision_is(seq_key, seq_kv.mod_revision if seq_kv else 0),
                # The target is still there, unchanged, as the tag moves (invariant 2 of docs/invariants.md).
                Compare.mod_revision_is(manifest_key, manifest_kv.mod_revision),
                rule_unchanged(self.keys, repo, rule_kv),
            ]

            def build() -> Txn[HistoryEntry | None]:
                """One attempt: its own write id and time (a re-send builds another)."""
                now, write_id = self.clock.now(), self.ids.new_id()
                entry = HistoryEntry(
                    seq, now, current.digest if current else None, digest, self.replica, action
                )
                ops: list[TxnOp] = [
                    Put(tag_key, encode(TagRecord(digest, seq, now, self.replica, write_id))),
                    Put(seq_key, encode(TagSeqRecord(seq))),
                    Put(self.keys.history(repo, tag, seq), encode(entry)),
                ]

                async def moved() -> bool:
                    kv = await self._get(tag_key)
                    return kv is not None and decode(TagRecord, kv.value).write_id == write_id

                # On a failed compare the tag, its sequence, the manifest or the rule
                # changed: read again.
                return Txn(compares, ops, moved, entry, again=build)

            return build()

        return await self._write(f"move of tag {tag} in {repo}", attempt)

    # ------------------------------------------------------------ immutability

    async def get_immutability(self, repo: str) -> ImmutabilityRecord | None:
        return await self._record(self.keys.immutability(repo), ImmutabilityRecord)

    async def set_immutability(self, repo: str, patterns: Sequence[str]) -> ImmutabilityRecord | None:
        """Replace the repository's immutability patterns (none: remove the rule).
        Every tag write compares the rule's mod_revision, so no tag move checked
        against the old rule can commit after this one."""
        key = self.keys.immutability(repo)
        what = f"immutability rule of {repo}"
        self._check_writable()
        if not patterns:

            async def remove() -> Txn[ImmutabilityRecord | None]:
                return Txn([], [Delete(key)], lambda: self._absent_while_writable(key), None)

            return await self._write(what, remove)
        record = ImmutabilityRecord(tuple(patterns), self.clock.now(), self.replica, self.ids.new_id())

        async def written() -> bool:
            kv = await self._get(key)
            return kv is not None and decode(ImmutabilityRecord, kv.value).write_id == record.write_id

        async def replace() -> Txn[ImmutabilityRecord | None]:
            return Txn([], [Put(key, encode(record))], written, record)

        return await self._write(what, replace)

    async def check_tag_moves(self, repo: str, digest: str, tags: Sequence[str]) -> None:
        """Raise ImmutableTag if pointing ``tags`` at ``digest`` would move an
        immutable tag.  Only a pre-check (before work a refused push would
        waste): put_manifest re-checks in its transaction."""
        if not tags:
            return
        found = await self._read_many([self.keys.immutability(repo)] + [self.keys.tag(repo, t) for t in tags])
        patterns = rule_patterns(found[0])
        for tag, kv in zip(tags, found[1:], strict=True):
            if kv is None or decode(TagRecord, kv.value).digest == digest:
                continue
            if pattern := immutable_pattern(patterns, tag):
                raise ImmutableTag(repo, tag, pattern)
