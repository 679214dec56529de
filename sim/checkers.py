"""The invariants of docs/invariants.md, checked during and after a run.

Two kinds of checks:

* **Omniscient, at every commit.**  ``CommitMonitor`` sees every etcd
  revision the registry produces (it is an observer of the model's store),
  and ``StorageMonitor`` every blob commit and deletion of the object store:
  - (2) after each revision, no live tag names a missing manifest, no live
    manifest references a missing link or child, and nothing was deleted
    while a live manifest or tag still reached it;
  - (3) every blob committed to storage hashes to its digest;
  - (5) every tag move in a revision advances the tag's sequence by exactly
    one and creates exactly one new history entry whose ``old``/``new``
    match the move; no history entry is overwritten; trimming never removes
    a tag's current entry;
  - (6) no blob record is claimed ("deleting") or removed, and no blob's bytes
    are deleted, while a link to it exists; no link is made to a blob being
    deleted;
  - (immutable) no tag covered by an immutability pattern in force at the
    commit moves to another digest or is deleted;
  - (2) a manifest stored as a blob (above the inline limit) has its bytes in
    the object store when committed, and they are not deleted while a
    manifest record needs them (``StorageMonitor``);
  - the timeline of tag, manifest, link and immutability-rule keys, and of
    the read-only switch, numbered in the history's order, for the checks
    below.
* **From the recorded history, after the run.**
  - (7) the transaction that made an acknowledged tag push left the tag
    naming the pushed digest (``check_tag_pushes``);
  - (7) one request's writes applied at most once, for every kind of key
    (``check_once``): no operation advanced a tag's sequence twice, made one
    link twice, wrote one manifest twice, ... — acknowledged or not;
  - (7) every acknowledged write took effect during its request (the
    timeline shows the tag/manifest/link in the acknowledged state at some
    point between invoke and completion): an unknown etcd outcome was never
    reported as success unverified;
  - (4) per-tag linearizability of reads and writes (``linearizability.py``);
    reads served stale (etcd unreachable) are exempt but must still return a
    value the tag really had; a read by digest that said "unknown" while the
    manifest existed throughout the request;
  - (6) a push that the registry told "layer exists" or "uploaded", failing
    within the grace window because the blob was gone (only a client delete
    may explain it);
  - (3) a wrong-digest upload that was accepted (reported by the client);
  - (immutable) a request refused as touching an immutable tag (DENIED, with
    the pattern) while no rule covering the tag was in force, or the tag did
    not exist with another digest, at any point of the request;
  - (read-only) a write acknowledged although the switch was on for its whole
    duration, even on a replica that had not yet seen the switch (its
    settings mirror was behind the revision that turned it on): every write
    transaction compares the switch, so the switch is linearizable; a replica
    whose view of the switch matches no value etcd had at or after the
    revision its mirror claims; a read refused for read-only.
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hareg.kv.base import Event, EventType, KeyValue
from hareg.metadata.keys import Keys
from hareg.metadata.records import (
    BlobRecord,
    HistoryEntry,
    ImmutabilityRecord,
    LinkRecord,
    ManifestRecord,
    TagRecord,
    TagSeqRecord,
    decode,
)
from sim import history as h
from sim import linearizability as lin
from sim.etcd_model import MVCCStore
from sim.history import History, Operation, Outcome

INVARIANTS = (
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "linearizability",
    "immutable",
    "read-only",
    "hostile",
    "liveness",
    "internal",
)
READ_ONLY_KEY = "read-only"  # the setting's name (hareg.registry.settings.READ_ONLY)


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    time: float
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "time": round(self.time, 6), "message": self.message}


@dataclass(slots=True)
class Findings:
    violations: list[Violation] = field(default_factory=list)
    lin_checked: int = 0
    lin_inconclusive: int = 0
    lin_steps: int = 0

    def add(self, invariant: str, time: float, message: str) -> None:
        if sum(1 for v in self.violations if v.invariant == invariant) < 20:  # keep reports readable
            self.violations.append(Violation(invariant, time, message))


def _short(digest: str | None) -> str:
    return digest[7:19] if digest else "-"


def switch_on(raw: bytes) -> bool:
    """The read-only switch's value as stored (``{"readOnly": true, ...}``);
    anything unreadable counts as off, as the registry reads it."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("readOnly") is True


# ----------------------------------------------------------------------------------------------
# At every commit


# (key kind, put or delete) -> what a commit did that one request may do at most
# once to one key (``check_once``; "l", "b", "r" and "u" are refined in
# ``CommitMonitor._unit``).  Settings ("c"), membership ("n") and mirror keys
# are left out: a request may write them more than once.
_UNITS: dict[tuple[str, bool], str] = {
    ("t", True): "tag written",
    ("t", False): "tag deleted",
    ("s", True): "tag sequence advanced",
    ("h", True): "history entry appended",
    ("m", True): "manifest written",
    ("m", False): "manifest deleted",
    ("d", True): "manifest delete marker written",
    ("f", True): "referrers entry written",
    ("f", False): "referrers entry deleted",
    ("b", True): "blob record created",
    ("r", True): "repository created",
    ("u", True): "upload opened",
    ("u", False): "upload closed",
    ("i", True): "immutability rule written",
    ("i", False): "immutability rule removed",
    ("g", True): "grant written",
    ("g", False): "grant removed",
    ("a", True): "robot account written",
    ("a", False): "robot account removed",
}


class CommitMonitor:
    """Checks invariants 2, 5 and 6 of docs/invariants.md on every etcd revision and keeps a timeline.

    It mirrors what it needs of the registry's state (tags, manifests with
    what they reference, links, blob states) with reverse counts, so every
    check after a revision is a dictionary lookup."""

    def __init__(
        self,
        store: MVCCStore,
        keys: Keys,
        now: Callable[[], float],
        seq: Callable[[], int],
        findings: Findings,
    ) -> None:
        self.store = store
        self.keys = keys
        self.now = now
        self.seq = seq
        self.findings = findings
        self.sparse_prefixes: tuple[str, ...] = ()  # repositories of pull-through mirrors ("mirror/")
        self._root = keys.root + b"/"
        self._tag_seq: dict[tuple[str, str], int] = {}
        self._tag_value: dict[tuple[str, str], str | None] = {}
        # key -> [(history seq, value or None)] for tag, manifest, link, rule and grant keys
        self.timeline: dict[bytes, list[tuple[int, bytes | None]]] = defaultdict(list)
        # tag key -> [(etcd revision, digest or None)]: a tag's value after a given commit
        self.tag_revisions: dict[bytes, list[tuple[int, str | None]]] = defaultdict(list)
        # The mirror: (repo, digest) -> record / count.
        self._manifests: dict[tuple[str, str], ManifestRecord] = {}
        self._links: dict[tuple[str, str], None] = {}
        self._blob_state: dict[str, str] = {}
        self._tagged: dict[tuple[str, str], int] = defaultdict(int)  # tags naming a manifest
        self._listed: dict[tuple[str, str], int] = defaultdict(int)  # indexes listing a manifest
        self._used: dict[tuple[str, str], int] = defaultdict(int)  # manifests using a blob link
        self._linked: dict[str, int] = defaultdict(int)  # links to a blob, all repositories
        # Entries of the referrers index (f/<repo>@<subject>@<digest>) naming a manifest.
        self._referrer_keys: set[bytes] = set()
        self._referred: dict[tuple[str, str], int] = defaultdict(int)
        # Manifests whose body is a blob in the object store: digest -> live records.
        self._bodies: dict[str, int] = defaultdict(int)
        # Immutability patterns in force, by repository.
        self._rules: dict[str, tuple[str, ...]] = {}
        # The read-only switch: (revision, history point, on) at every change.
        self.switch: list[tuple[int, int, bool]] = []
        self._switch_key = keys.setting(READ_ONLY_KEY)
        # Set by the StorageMonitor: is a blob's content in the object store?
        self.storage: StorageMonitor | None = None
        # revision -> what it did that one request may do at most once to a key
        # (``check_once``): (what, key) pairs, ``_UNITS`` says what each is.
        self.units: dict[int, list[tuple[str, str]]] = {}
        self._link_created: dict[bytes, float] = {}
        store.observers.append(self.on_commit)

    def _kind(self, key: bytes) -> tuple[str, str] | None:
        if not key.startswith(self._root) or len(key) < len(self._root) + 2:
            return None
        kind = key[len(self._root) : len(self._root) + 1].decode()
        return kind, key[len(self._root) + 2 :].decode()

    def _violation(self, invariant: str, message: str) -> None:
        self.findings.add(invariant, self.now(), f"rev {self.store.revision}: {message}")

    def links_to(self, digest: str) -> int:
        return self._linked.get(digest, 0)

    def bodies_of(self, digest: str) -> int:
        """Live manifest records whose body is the blob ``digest``."""
        return self._bodies.get(digest, 0)

    def _mirror_manifest(self, repo: str, digest: str, record: ManifestRecord | None) -> None:
        old = self._manifests.pop((repo, digest), None)
        if old is not None:
            if old.body is None:
                self._bodies[digest] -= 1
            for b in old.blobs:
                self._used[(repo, b)] -= 1
            for c in old.manifests:
                self._listed[(repo, c)] -= 1
        if record is not None:
            self._manifests[(repo, digest)] = record
            if record.body is None:
                self._bodies[digest] += 1
            for b in record.blobs:
                self._used[(repo, b)] += 1
            for c in record.manifests:
                self._listed[(repo, c)] += 1

    def on_commit(self, rev: int, events: list[Event]) -> None:
        seq = self.seq()
        moves: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
        checks: list[tuple[str, str, str]] = []
        rules: dict[str, tuple[str, ...]] = {}
        units: list[tuple[str, str]] = []
        for ev in events:
            parsed = self._kind(ev.kv.key)
            if parsed is None:
                continue
            kind, rest = parsed
            put = ev.type is EventType.PUT
            unit = self._unit(kind, rest, put, ev.kv)
            if unit is not None:
                # A history entry counts per tag (its key names its number).
                units.append((unit, rest.rsplit("@", 1)[0] if kind == "h" else rest))
            if kind in "tmlig":  # tags, manifests, links, immutability rules, grants
                self.timeline[ev.kv.key].append((seq, ev.kv.value if put else None))
            if kind == "i":
                rules[rest] = decode(ImmutabilityRecord, ev.kv.value).patterns if put else ()
            elif kind == "c" and ev.kv.key == self._switch_key:
                self.switch.append((rev, seq, put and switch_on(ev.kv.value)))
            if kind == "t":
                repo, tag = rest.rsplit("@", 1)
                record = decode(TagRecord, ev.kv.value) if put else None
                moves[(repo, tag)]["t"] = record
                self.tag_revisions[ev.kv.key].append((rev, record.digest if record else None))
                before = self._tag_value.get((repo, tag))
                if before is not None:
                    self._tagged[(repo, before)] -= 1
                if record is not None:
                    self._tagged[(repo, record.digest)] += 1
                    checks.append(("tag", repo, record.digest))
            elif kind == "s" and put:
                repo, tag = rest.rsplit("@", 1)
                moves[(repo, tag)]["s"] = decode(TagSeqRecord, ev.kv.value).seq
            elif kind == "h":
                repo, tag, number = rest.rsplit("@", 2)
                if put:
                    moves[(repo, tag)]["h"] = (int(number), ev.kv.version, decode(HistoryEntry, ev.kv.value))
                elif int(number) >= self._tag_seq.get((repo, tag), 0):
                    self._violation(
                        "5", f"{repo}:{tag}: history entry {int(number)} (the current one) was removed"
                    )
            elif kind == "m":
                repo, digest = rest.split("@", 1)
                self._mirror_manifest(repo, digest, decode(ManifestRecord, ev.kv.value) if put else None)
                checks.append(("manifest+" if put else "manifest-", repo, digest))
            elif kind == "l":
                repo, digest = rest.split("@", 1)
                if put and (repo, digest) not in self._links:
                    self._links[(repo, digest)] = None
                    self._linked[digest] += 1
                elif not put and (repo, digest) in self._links:
                    del self._links[(repo, digest)]
                    self._linked[digest] -= 1
                checks.append(("link+" if put else "link-", repo, digest))
            elif kind == "f":
                repo, _subject, digest = rest.split("@", 2)
                if put and ev.kv.key not in self._referrer_keys:
                    self._referrer_keys.add(ev.kv.key)
                    self._referred[(repo, digest)] += 1
                elif not put and ev.kv.key in self._referrer_keys:
                    self._referrer_keys.discard(ev.kv.key)
                    self._referred[(repo, digest)] -= 1
                if put:
                    checks.append(("referrer", repo, digest))
            elif kind == "b":
                state = decode(BlobRecord, ev.kv.value).state if put else "gone"
                self._blob_state[rest] = state
                if state != "live":
                    checks.append(("blob-", state, rest))
        if units:
            self.units[rev] = units
        for (repo, tag), move in moves.items():
            self._check_immutable(repo, tag, move)
            self._check_move(repo, tag, move)
        self._rules.update(rules)  # a rule binds the commits after the one that set it
        for what, repo, name in checks:
            self._check_reachability(what, repo, name)

    def _unit(self, kind: str, rest: str, put: bool, kv: KeyValue) -> str | None:
        """What a commit did to one key that one request may do at most once
        (``_UNITS``), or None: a tag's sequence advanced, a history entry
        appended, a link made (not touched: a HEAD keeps its ``created``), an
        upload opened or closed, a record created, a grant given or taken."""
        if kind == "l":
            if not put:
                self._link_created.pop(kv.key, None)
                return None
            created = decode(LinkRecord, kv.value).created
            if self._link_created.get(kv.key) == created:
                return None  # a touch
            self._link_created[kv.key] = created
            return "link made"
        if kind in "bru" and put and kv.version != 1:
            return None  # only their creation (a blob record is re-written by uses, an upload by chunks)
        if kind == "h" and not put:
            return None  # trimming
        if kind == "s" and not put:
            return None
        return _UNITS.get((kind, put))

    def _check_immutable(self, repo: str, tag: str, move: dict[str, Any]) -> None:
        """No tag covered by a pattern in force moves away from its digest."""
        if "t" not in move:
            return
        before = self._tag_value.get((repo, tag))
        record: TagRecord | None = move["t"]
        after = record.digest if record is not None else None
        if before is None or after == before:
            return  # created, or re-pushed with the same digest: allowed
        pattern = next((p for p in self._rules.get(repo, ()) if fnmatch.fnmatchcase(tag, p)), None)
        if pattern is not None:
            what = f"moved to {_short(after)}" if after else "deleted"
            self._violation(
                "immutable", f"{repo}:{tag} {what} from {_short(before)} while pattern {pattern!r} covers it"
            )

    def _check_move(self, repo: str, tag: str, move: dict[str, Any]) -> None:
        """Invariant 5 of docs/invariants.md: a tag moves only forward, one new history entry per move."""
        key = (repo, tag)
        prev_seq = self._tag_seq.get(key, 0)
        prev_value = self._tag_value.get(key)
        name = f"{repo}:{tag}"
        if "s" in move:
            if move["s"] != prev_seq + 1:
                self._violation("5", f"{name}: sequence went from {prev_seq} to {move['s']} (not +1)")
            self._tag_seq[key] = max(prev_seq, move["s"])
        if "h" in move:
            number, version, entry = move["h"]
            if version != 1:
                self._violation("5", f"{name}: history entry {number} was overwritten (version {version})")
            if entry.seq != number or move.get("s") != number:
                self._violation(
                    "5", f"{name}: history entry {number} does not match the sequence {move.get('s')}"
                )
            if entry.old != prev_value:
                self._violation(
                    "5",
                    f"{name}: history entry {number} says old={_short(entry.old)}, the tag was {_short(prev_value)}",
                )
        if "t" in move:
            record: TagRecord | None = move["t"]
            new_value = record.digest if record is not None else None
            if "h" not in move:
                self._violation("5", f"{name}: moved to {_short(new_value)} without a history entry")
            else:
                entry = move["h"][2]
                if entry.new != new_value:
                    self._violation(
                        "5", f"{name}: history says new={_short(entry.new)}, the tag is {_short(new_value)}"
                    )
                if record is not None and record.seq != move["h"][0]:
                    self._violation(
                        "5", f"{name}: tag record seq {record.seq} != history entry {move['h'][0]}"
                    )
            self._tag_value[key] = new_value
        elif "h" in move:
            self._violation("5", f"{name}: a history entry was written but the tag did not move")

    def _check_reachability(self, what: str, repo: str, name: str) -> None:
        """Invariants 2 and 6 of docs/invariants.md on the state after the revision."""
        if what == "tag":
            if (repo, name) not in self._manifests:
                self._violation("2", f"a tag of {repo} names missing manifest {_short(name)}")
        elif what == "manifest+":
            record = self._manifests.get((repo, name))
            if record is None:
                return
            if record.body is None and self.storage is not None and name not in self.storage.stored:
                self._violation(
                    "2", f"manifest {repo}@{_short(name)} stored as a blob whose bytes are not in the store"
                )
            # A pull-through mirror's manifests are sparse by design (docs/pull-through.md).
            sparse = repo.startswith(self.sparse_prefixes)
            for b in () if sparse else record.blobs:
                if (repo, b) not in self._links:
                    self._violation(
                        "2", f"manifest {repo}@{_short(name)} references unlinked blob {_short(b)}"
                    )
            for c in () if sparse else record.manifests:
                if (repo, c) not in self._manifests:
                    self._violation(
                        "2", f"index {repo}@{_short(name)} references missing manifest {_short(c)}"
                    )
        elif what == "manifest-":
            if (repo, name) not in self._manifests:
                if self._tagged.get((repo, name), 0) > 0:
                    self._violation("2", f"manifest {repo}@{_short(name)} deleted while a tag names it")
                if self._listed.get((repo, name), 0) > 0:
                    self._violation("2", f"manifest {repo}@{_short(name)} deleted while an index lists it")
                if self._referred.get((repo, name), 0) > 0:
                    self._violation(
                        "2", f"manifest {repo}@{_short(name)} deleted while the referrers index names it"
                    )
        elif what == "referrer":
            if (repo, name) not in self._manifests and self._referred.get((repo, name), 0) > 0:
                self._violation("2", f"a referrers entry of {repo} names missing manifest {_short(name)}")
        elif what == "link-":
            if (repo, name) not in self._links and self._used.get((repo, name), 0) > 0:
                self._violation("2", f"link {repo}@{_short(name)} deleted while a manifest uses it")
        elif what == "link+":
            state = self._blob_state.get(name, "gone")
            if state != "live" and (repo, name) in self._links:
                self._violation(
                    "6",
                    f"link {repo}@{_short(name)} made to a blob that is {'gone' if state == 'gone' else 'being deleted'}",
                )
        elif what == "blob-":
            links = self._linked.get(name, 0)
            if links > 0 and self._blob_state.get(name) == repo:
                self._violation("6", f"blob {_short(name)} {repo} while {links} link(s) name it")
            if (bodies := self.bodies_of(name)) > 0 and self._blob_state.get(name) == repo:
                self._violation(
                    "2", f"blob {_short(name)} {repo} while {bodies} manifest(s) keep their body in it"
                )


class StorageMonitor:
    """Invariants 3 and 6 of docs/invariants.md at the object store."""

    def __init__(
        self,
        store: MVCCStore,
        keys: Keys,
        now: Callable[[], float],
        findings: Findings,
        monitor: CommitMonitor,
    ) -> None:
        self.store = store
        self.keys = keys
        self.now = now
        self.findings = findings
        self.monitor = monitor
        self.stored: set[str] = set()  # digests whose bytes are in the object store
        if monitor.storage is None:
            monitor.storage = self

    def on_blob_commit(self, digest: str, data: bytes) -> None:
        self.stored.add(digest)
        algorithm, _, hexdigest = digest.partition(":")
        try:
            actual = hashlib.new(algorithm, data).hexdigest()
        except ValueError:
            actual = ""
        if actual != hexdigest:
            self.findings.add(
                "3", self.now(), f"blob {_short(digest)} stored with bytes hashing to {actual[:12]}"
            )

    def on_blob_delete(self, digest: str) -> None:
        self.stored.discard(digest)
        if (bodies := self.monitor.bodies_of(digest)) > 0:
            self.findings.add(
                "2",
                self.now(),
                f"bytes of manifest {_short(digest)} deleted while {bodies} record(s) need them",
            )
        record = self.store.get(self.keys.blob(digest))
        if record is not None and decode(BlobRecord, record.value).state == "live":
            self.findings.add(
                "6", self.now(), f"bytes of blob {_short(digest)} deleted while its record is live"
            )
        if (links := self.monitor.links_to(digest)) > 0:
            self.findings.add(
                "6", self.now(), f"bytes of blob {_short(digest)} deleted while {links} link(s) name it"
            )


# ----------------------------------------------------------------------------------------------
# From the history


def _values_during(timeline: list[tuple[int, bytes | None]], start: int, end: int) -> list[bytes | None]:
    """Every value the key had at some point between history points ``start`` and
    ``end``.  A commit numbered n happened after history point n and before n+1:
    the value at ``start`` is the last one committed before it (number < start),
    then come the commits numbered start .. end-1."""
    i = bisect.bisect_left(timeline, start, key=lambda e: e[0])
    out = [timeline[i - 1][1] if i else None]
    while i < len(timeline) and timeline[i][0] < end:
        out.append(timeline[i][1])
        i += 1
    return out


def _present(values: list[bytes | None]) -> bool:
    return any(v is not None for v in values)


def _absent(values: list[bytes | None]) -> bool:
    return any(v is None for v in values)


def _written(values: list[bytes | None]) -> bool:
    # values[0] is what the key held when the request began; the rest were committed during it.
    return _present(values[1:])


@dataclass(frozen=True)
class _Effect:
    """What one kind of acknowledged write must have done to one key."""

    key: Callable[[Keys, str, str], bytes]  # Keys.tag, .manifest or .link: (keys, repo, name)
    test: Callable[[list[bytes | None]], bool]
    wrong: str  # what is wrong when the test fails: str.format with repo, tag and digest
    by_tag: bool = False  # the key is named by the operation's tag, else by its digest
    needs_found: bool = False  # judged only when the request found what it acted on


# Every acknowledged write but a tag write (whose test needs the digest) -> its effect.
_EFFECTS: dict[str, _Effect] = {
    h.MANIFEST_PUT: _Effect(
        Keys.manifest, _present, "manifest {repo}@{digest} acknowledged but never stored"
    ),
    # Written during the request, not merely present: a link an earlier upload
    # left is judged by the collector by its old age (seed 9576).
    h.BLOB_UPLOAD: _Effect(
        Keys.link,
        _written,
        "blob {repo}@{digest} acknowledged but its link was not written during the request",
    ),
    h.BLOB_MOUNT: _Effect(
        Keys.link, _present, "mount of {digest} into {repo} acknowledged but never linked", needs_found=True
    ),
    h.TAG_DELETE: _Effect(
        Keys.tag,
        _absent,
        "delete of {repo}:{tag} acknowledged but the tag stayed",
        by_tag=True,
        needs_found=True,
    ),
    h.MANIFEST_DELETE: _Effect(
        Keys.manifest, _absent, "delete of {repo}@{digest} acknowledged but it stayed", needs_found=True
    ),
}


def _acknowledged_effect(
    op: Operation, keys: Keys
) -> tuple[bytes, Callable[[list[bytes | None]], bool], str] | None:
    """What an acknowledged write must have done: (key, test over the values the
    key had during the request, what is wrong when the test fails)."""
    digest = op.digest or ""
    if op.kind == h.TAG_WRITE and op.tag and op.digest:

        def names_it(values: list[bytes | None]) -> bool:
            return any(v is not None and decode(TagRecord, v).digest == digest for v in values)

        return (
            keys.tag(op.repo, op.tag),
            names_it,
            f"{op.repo}:{op.tag} -> {_short(digest)} acknowledged ({op.detail.get('action', 'push')}) "
            "but the tag never named it during the request",
        )
    effect = _EFFECTS.get(op.kind)
    if effect is None:
        return None
    name = op.tag if effect.by_tag else op.digest
    if not name or (effect.needs_found and not op.found):
        return None
    wrong = effect.wrong.format(repo=op.repo, tag=op.tag, digest=_short(digest))
    return effect.key(keys, op.repo, name), effect.test, wrong


def check_acknowledged_writes(
    history: History, monitor: CommitMonitor, keys: Keys, findings: Findings
) -> None:
    """Invariant 7 of docs/invariants.md: what the registry acknowledged was in etcd during the request."""
    for op in history.ops:
        if not op.ok or op.complete_seq is None or op.final:
            continue
        effect = _acknowledged_effect(op, keys)
        if effect is None:
            continue
        key, holds, wrong = effect
        if not holds(_values_during(monitor.timeline.get(key, []), op.invoke_seq, op.complete_seq)):
            findings.add("7", op.complete_time or 0.0, f"op {op.id}: {wrong}")


# Writes whose acknowledgement says "this request did it": a DELETE answered 202
# rather than 404.  Pushes are idempotent (a tag that already names the digest,
# a manifest someone else stored): the state the client asked for holds, and the
# timeline check above covers them (an upload must also have written its link).
_EFFECTFUL = (h.TAG_DELETE, h.MANIFEST_DELETE)


def check_effects(history: History, effects: dict[int, int], findings: Findings) -> None:
    """Invariant 7 of docs/invariants.md, exactly: an acknowledged delete had one of its own etcd
    transactions applied (with its compares holding).  A delete whose outcome
    was unknown and whose verification was fooled by someone else's change
    (the tag is gone — but another request deleted it) is caught here."""
    for op in history.ops:
        if not op.ok or op.kind not in _EFFECTFUL or op.final:
            continue
        if op.kind in (h.TAG_DELETE, h.MANIFEST_DELETE) and not op.found:
            continue
        if op.detail.get("moved") == "no":
            continue  # a rollback to the digest the tag already names writes nothing
        if not effects.get(op.id):
            findings.add(
                "7",
                op.complete_time or 0.0,
                f"op {op.id} {op.kind} {op.repo}{':' + op.tag if op.tag else ''} on {op.replica} acknowledged "
                f"({op.detail.get('action', 'ok')}), but none of its etcd transactions applied",
            )


def check_once(
    history: History, monitor: CommitMonitor, commit_ops: dict[int, int], findings: Findings
) -> None:
    """One request's write applied at most once, for every kind of key the
    registry writes: no client operation advanced a tag's sequence twice,
    appended two history entries to one tag, wrote one tag, manifest, rule or
    grant twice, made one link twice, opened or closed one upload twice.
    Every transaction counts — acknowledged, failed or unknown — since a
    request's effects are its transactions, whenever they apply: an attempt
    held back and applied after its re-send (the ``late`` fault) is one of
    them.  A re-send is safe only if its compares let at most one attempt ever
    apply (docs/consistency.md, "Writes whose outcome is unknown"), and a
    re-send taken for a conflict writes the request a second time
    (docs/simulation.md finding 3, the ``naive-resend`` plant)."""
    done: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    for rev, units in monitor.units.items():
        op_id = commit_ops.get(rev, -1)
        if op_id < 0:
            continue  # a background task's (collector, janitor, leases) or another tenant's
        for what, key in units:
            done[(op_id, what, key)].append(rev)
    for (op_id, what, key), revs in sorted(done.items()):
        if len(revs) < 2:
            continue
        op = history.ops[op_id]
        findings.add(
            "7",
            op.complete_time or op.invoke_time,
            f"op {op.id} {op.kind} {op.repo}{':' + op.tag if op.tag else ''} on {op.replica} "
            f"({op.outcome.value if op.outcome else 'running'}): {what} {len(revs)} times for {key} "
            f"(revs {', '.join(map(str, revs))}): one request applied more than once",
        )


def check_tag_pushes(
    history: History, monitor: CommitMonitor, keys: Keys, write_revisions: dict[int, int], findings: Findings
) -> None:
    """Invariant 7 of docs/invariants.md for tag pushes: the transaction that made an acknowledged
    push of ``tag -> digest`` (its last applied write) left the tag naming the
    digest.  A re-push of the tag's current manifest that commits without a
    compare on the tag, after a DELETE of the manifest took the tag, re-creates
    the manifest but not the tag: both requests acknowledged, in a state no
    serial order gives (the manifest exists, the tag is gone)."""
    for op in history.ops:
        if op.kind != h.TAG_WRITE or not op.ok or op.final or not op.tag or not op.digest:
            continue
        revision = write_revisions.get(op.id)
        if revision is None:
            continue  # wrote nothing (a rollback to the current digest)
        changes = monitor.tag_revisions.get(keys.tag(op.repo, op.tag), [])
        i = bisect.bisect_right(changes, revision, key=lambda e: e[0])
        after = changes[i - 1][1] if i else None
        if after != op.digest:
            findings.add(
                "7",
                op.complete_time or 0.0,
                f"op {op.id} push of {op.repo}:{op.tag} -> {_short(op.digest)} on {op.replica} acknowledged, "
                f"but its transaction (rev {revision}) left the tag naming {_short(after)}",
            )


def check_digest_reads(history: History, monitor: CommitMonitor, keys: Keys, findings: Findings) -> None:
    """Invariant 4 of docs/invariants.md for pulls by digest: a linearizable read cannot miss a manifest
    that existed during the whole request."""
    for op in history.ops:
        if (
            op.kind != h.DIGEST_READ
            or not op.ok
            or op.stale
            or op.found
            or op.complete_seq is None
            or not op.digest
        ):
            continue
        values = _values_during(
            monitor.timeline.get(keys.manifest(op.repo, op.digest), []), op.invoke_seq, op.complete_seq
        )
        if all(v is not None for v in values):
            findings.add(
                "4",
                op.complete_time or 0.0,
                f"op {op.id}: {op.repo}@{_short(op.digest)} read as unknown on {op.replica} while it existed",
            )


def register_ops(history: History) -> dict[tuple[str, str], list[lin.RegOp]]:
    """Per-tag register operations (fan-out of manifest deletes to the repo's tags)."""
    tags: dict[str, set[str]] = defaultdict(set)
    for op in history.ops:
        if op.tag:
            tags[op.repo].add(op.tag)
    out: dict[tuple[str, str], list[lin.RegOp]] = defaultdict(list)
    for op in history.ops:
        if op.outcome is None or op.outcome is Outcome.FAIL:
            continue
        unknown = op.outcome is Outcome.UNKNOWN
        ret = None if unknown else op.complete_seq
        if op.kind == h.TAG_WRITE and op.tag:
            out[(op.repo, op.tag)].append(lin.RegOp(lin.WRITE, op.digest, op.invoke_seq, ret, op.id))
        elif op.kind == h.TAG_DELETE and op.tag:
            if unknown:
                reg = lin.RegOp(lin.DROP, None, op.invoke_seq, None, op.id)
            elif op.found:
                reg = lin.RegOp(lin.DELETE, None, op.invoke_seq, ret, op.id)
            else:
                reg = lin.RegOp(lin.READ, None, op.invoke_seq, ret, op.id)
            out[(op.repo, op.tag)].append(reg)
        elif op.kind == h.TAG_READ and op.tag and not unknown and not op.stale:
            out[(op.repo, op.tag)].append(lin.RegOp(lin.READ, op.value, op.invoke_seq, ret, op.id))
        elif op.kind == h.MANIFEST_DELETE and op.digest:
            for tag in sorted(tags[op.repo]):
                out[(op.repo, tag)].append(lin.RegOp(lin.DROP, op.digest, op.invoke_seq, ret, op.id))
    return out


def check_linearizability(history: History, findings: Findings, *, budget: int = 2_000_000) -> None:
    ops_by_id = {op.id: op for op in history.ops}
    for (repo, tag), ops in sorted(register_ops(history).items()):
        verdict = lin.check(ops, None, budget=budget)
        findings.lin_checked += 1
        findings.lin_steps += verdict.steps
        if verdict.inconclusive:
            findings.lin_inconclusive += 1
        elif not verdict.ok:
            stuck = ops[verdict.stuck] if verdict.stuck >= 0 else None
            op = ops_by_id.get(stuck.ref) if stuck else None
            what = (
                f"op {op.id} {op.kind} on {op.replica} at t={op.invoke_time:.3f}..{(op.complete_time or 0):.3f} "
                f"({'value ' + _short(op.value) if op.kind == h.TAG_READ else _short(op.digest)})"
                if op
                else "?"
            )
            findings.add(
                "linearizability",
                op.complete_time or 0.0 if op else 0.0,
                f"{repo}:{tag}: {len(ops)} ops not linearizable; cannot place {what}",
            )
    # Stale reads (etcd unreachable): exempt from linearizability, but never wrong.
    written: dict[tuple[str, str], list[tuple[int, str | None]]] = defaultdict(list)
    for op in history.ops:
        if op.kind == h.TAG_WRITE and op.tag and op.outcome is not Outcome.FAIL:
            written[(op.repo, op.tag)].append((op.invoke_seq, op.digest))
    for op in history.ops:
        if op.kind == h.TAG_READ and op.tag and op.ok and op.stale and op.value is not None:
            seen = {d for s, d in written[(op.repo, op.tag)] if s < (op.complete_seq or 0)}
            if op.value not in seen:
                findings.add(
                    "4",
                    op.complete_time or 0.0,
                    f"op {op.id}: stale read of {op.repo}:{op.tag} returned {_short(op.value)}, never written",
                )


def check_inflight_pushes(
    history: History, findings: Findings, *, grace: float, head_grace: float, keep_younger: float
) -> None:
    """Invariant 6 of docs/invariants.md: a push relying on a fresh upload (or a child manifest just
    pushed, or "layer exists") is not undercut by garbage collection within
    the grace window (``keepYoungerThan`` for manifests; for a HEAD, half the
    grace window, which is what the registry promises: docs/gc.md, G2b).
    The window runs from the confirmation to the refusal: the collector
    deleted the blob before the push was refused, and a push that reached its
    replica only after the window (it waited on a paused one) is not guarded."""
    deletes: dict[tuple[str, str], list[int]] = defaultdict(list)
    for op in history.ops:
        if op.kind in (h.BLOB_DELETE, h.MANIFEST_DELETE) and op.digest and op.outcome is not Outcome.FAIL:
            deletes[(op.repo, op.digest)].append(op.invoke_seq)
    for op in history.ops:
        missing = op.detail.get("missing", "")
        if op.kind not in (h.TAG_WRITE, h.MANIFEST_PUT) or not missing:
            continue
        for field_name, window in (
            ("confirmed", grace),
            ("confirmed_head", head_grace),
            ("confirmed_manifests", keep_younger),
        ):
            if not op.detail.get(field_name):
                continue
            confirmed = dict(item.split("=", 1) for item in op.detail[field_name].split(","))
            for digest in missing.split(","):
                if digest not in confirmed:
                    continue
                # Judged at the refusal, not at the invocation: the request may
                # have waited on a paused replica past the window (seed 352).
                age = (op.complete_time or op.invoke_time) - float(confirmed[digest])
                if age < window and not any(s < (op.complete_seq or 0) for s in deletes[(op.repo, digest)]):
                    findings.add(
                        "6",
                        op.complete_time or 0.0,
                        f"op {op.id}: push to {op.repo} refused: {_short(digest)} gone, though the registry "
                        f"confirmed it {age:.2f}s before the refusal (guarded for {window:g}s)",
                    )


def _covered(rule_values: list[bytes | None], pattern: str, tag: str) -> bool:
    """Some rule value among ``rule_values`` has ``pattern`` and it covers ``tag``."""
    return fnmatch.fnmatchcase(tag, pattern) and any(
        v is not None and pattern in decode(ImmutabilityRecord, v).patterns for v in rule_values
    )


def check_immutable_refusals(
    history: History, monitor: CommitMonitor, keys: Keys, findings: Findings
) -> None:
    """A request refused because a tag is immutable (DENIED, with the pattern):
    at some point during it, a rule with that pattern was in force and the tag
    existed naming another digest (a push or rollback) or at all (a delete)."""
    for op in history.ops:
        pattern, tag = op.detail.get("pattern"), op.detail.get("denied_tag")
        if op.outcome is not Outcome.FAIL or pattern is None or not tag or op.complete_seq is None:
            continue
        window = (op.invoke_seq, op.complete_seq)
        rule = _values_during(monitor.timeline.get(keys.immutability(op.repo), []), *window)
        tag_values = _values_during(monitor.timeline.get(keys.tag(op.repo, tag), []), *window)
        if op.kind == h.TAG_WRITE:
            moved = any(v is not None and decode(TagRecord, v).digest != op.digest for v in tag_values)
        else:
            moved = any(v is not None for v in tag_values)
        if op.detail.get("code") != "DENIED" or not _covered(rule, pattern, tag) or not moved:
            findings.add(
                "immutable",
                op.complete_time or 0.0,
                f"op {op.id} {op.kind} {op.repo}:{tag} refused ({op.detail.get('code')}) as immutable "
                f"by {pattern!r}, but no such rule covered an existing tag during the request",
            )


# Requests the read-only middleware refuses (``is_write``), by operation kind.
READ_ONLY_WRITES = (
    h.TAG_WRITE,
    h.MANIFEST_PUT,
    h.BLOB_UPLOAD,
    h.TAG_DELETE,
    h.MANIFEST_DELETE,
    h.BLOB_DELETE,
    h.BLOB_MOUNT,
    h.PRUNE,
    h.IMMUTABILITY,
)
READS = (h.TAG_READ, h.DIGEST_READ, h.BLOB_HEAD, h.REF_CHECK, h.LIST_TAGS)


def _switch_at(switch: list[tuple[int, int, bool]], revision: int) -> bool:
    """The switch's value at etcd revision ``revision``."""
    i = bisect.bisect_right(switch, revision, key=lambda e: e[0])
    return switch[i - 1][2] if i else False


def check_tag_lists(history: History, monitor: CommitMonitor, keys: Keys, findings: Findings) -> None:
    """4: a tag list read through the barrier (not stale) names every tag that
    existed for the whole request and none that was absent for the whole of it."""
    names: dict[str, set[str]] = {}  # every tag ever committed, by repository
    tag_prefix = keys.kind_prefix("t")
    for key in monitor.timeline:
        if key.startswith(tag_prefix):
            repo, _, tag = keys.strip("t", key).rpartition("@")
            names.setdefault(repo, set()).add(tag)
    for op in history.ops:
        if op.kind != h.LIST_TAGS or not op.ok or op.stale or op.complete_seq is None:
            continue
        listed = set(filter(None, op.detail.get("tags", "").split(",")))
        for tag in sorted(names.get(op.repo, set()) | listed):
            timeline = monitor.timeline.get(keys.tag(op.repo, tag), [])
            values = _values_during(timeline, op.invoke_seq, op.complete_seq)
            if tag not in listed and all(v is not None for v in values):
                findings.add(
                    "4",
                    op.complete_time or 0.0,
                    f"op {op.id}: tag list of {op.repo} on {op.replica} lacks {tag}",
                )
            elif tag in listed and all(v is None for v in values):
                findings.add(
                    "4",
                    op.complete_time or 0.0,
                    f"op {op.id}: tag list of {op.repo} on {op.replica} names {tag}, absent during the request",
                )


def check_read_only(history: History, monitor: CommitMonitor, findings: Findings) -> None:
    """The cluster read-only switch: no write acknowledged while it was on for the
    whole request, whatever the replica had seen of it (the switch is a compare
    in every write transaction); a replica's view always one etcd really had;
    reads never refused for it."""
    switch = monitor.switch
    for op in history.ops:
        if op.kind in READS and op.detail.get("read_only") == "refused":
            findings.add(
                "read-only", op.complete_time or 0.0, f"op {op.id} {op.kind} {op.repo} refused as read-only"
            )
        view = op.detail.get("ro")
        if view is not None:
            rev_text, on_text, seq_text = view.split(":")
            rev, on, seq = int(rev_text), on_text == "1", int(seq_text)
            # The mirror is complete up to ``rev``; a replica's own switch may be newer.
            later = [v for r, s, v in switch if r > rev and s <= seq]
            if on not in [_switch_at(switch, rev), *later]:
                findings.add(
                    "read-only",
                    op.complete_time or 0.0,
                    f"op {op.id} {op.kind} on {op.replica}: the replica saw read-only {'on' if on else 'off'} "
                    f"at settings revision {rev}, which etcd never had from then on",
                )
        if op.kind not in READ_ONLY_WRITES or not op.ok or op.final or op.complete_seq is None:
            continue
        if op.found is False:
            continue  # a delete or mount that found nothing (404) wrote nothing
        i = bisect.bisect_left(switch, op.invoke_seq, key=lambda e: e[1])
        in_force = switch[i - 1] if i else None  # the last change before the request
        if in_force is None or not in_force[2]:
            continue
        if any(not on for _, s, on in switch[i:] if s < op.complete_seq):
            continue  # turned off during the request
        # No exemption for a replica that had not seen the switch yet: every write
        # transaction compares the switch (hareg/metadata/switch.py).
        findings.add(
            "read-only",
            op.complete_time or 0.0,
            f"op {op.id} {op.kind} {op.repo}{':' + op.tag if op.tag else ''} on {op.replica} acknowledged while "
            f"the registry was read-only (since revision {in_force[0]}) for the whole request"
            + ("" if view is not None else " (it never passed the read-only test)"),
        )


def check_history(
    history: History,
    monitor: CommitMonitor,
    keys: Keys,
    findings: Findings,
    *,
    effects: dict[int, int],
    write_revisions: dict[int, int] | None = None,
    commit_ops: dict[int, int] | None = None,
    grace: float,
    head_grace: float,
    keep_younger: float,
) -> None:
    check_acknowledged_writes(history, monitor, keys, findings)
    check_effects(history, effects, findings)
    check_tag_pushes(history, monitor, keys, write_revisions or {}, findings)
    check_once(history, monitor, commit_ops or {}, findings)
    check_digest_reads(history, monitor, keys, findings)
    check_inflight_pushes(history, findings, grace=grace, head_grace=head_grace, keep_younger=keep_younger)
    check_immutable_refusals(history, monitor, keys, findings)
    check_read_only(history, monitor, findings)
    check_tag_lists(history, monitor, keys, findings)
    check_linearizability(history, findings)
