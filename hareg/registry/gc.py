"""Online garbage collection: what is unreachable, and removing it safely
while pushes go on.  The argument for its safety is in docs/gc.md.

One run:

1. Snapshot every tag, history entry, manifest, link and blob record at one
   etcd revision R.  Expire mirrored tags not pulled for their mirror's
   ``expireAfter`` (docs/pull-through.md#expiry; guarded: the tag and its
   upstream-check record unchanged since R), then snapshot again.
2. Trim tag history beyond ``keep_tag_revisions`` per tag (never the latest
   entry, never one younger than ``keep_younger_than``).
3. Per repository, mark manifests reachable from the roots — current tags,
   kept history entries, manifests younger than ``keep_younger_than`` —
   through index children, referrers of reachable manifests and subjects of
   reachable referrers; delete the rest (guarded: no tag or manifest of the
   repository changed since R).
4. Per repository, delete links that no remaining manifest references and
   that were not touched (uploaded, mounted, found by HEAD/GET) within the
   grace window (guarded: link unchanged, no manifest appeared since R).
5. Blobs that no link anywhere names any more: mark "deleting" (guarded: the
   record is unchanged — every new link re-writes it), delete the bytes, drop
   the record.
6. Remove the staging of expired upload sessions.

Every deletion is fenced by the pruner's leadership, and a guard that fails
skips that batch: the next run will see the new state.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hareg.clock import Clock
from hareg.kv.base import Compare
from hareg.metadata.gc import ExpiredTag, GcStore, Snapshot
from hareg.metadata.records import HistoryEntry, ManifestRecord
from hareg.plants import planted
from hareg.registry.janitor import UploadJanitor
from hareg.storage.base import BlobStore

log = logging.getLogger("hareg.gc")


@dataclass(frozen=True, slots=True)
class MirrorExpiry:
    """Tags of repositories under ``prefix`` (a pullThrough mirror) not pulled
    for ``unused_for`` seconds are expired.  A pull records itself only when
    it asks the upstream (the tag's check record), at most once per ``ttl``:
    a tag is expired once its last check is ``unused_for + ttl`` old, so
    none pulled within ``unused_for`` ever is."""

    prefix: str
    unused_for: float
    ttl: float


@dataclass(frozen=True, slots=True)
class Policy:
    keep_tag_revisions: int = 3
    keep_younger_than: float = 3600.0
    grace: float = 3600.0  # links/blobs touched this recently are never collected
    mirrors: tuple[MirrorExpiry, ...] = ()  # pullThrough mirrors whose unused tags expire


@dataclass
class Plan:
    revision: int
    history: list[bytes] = field(default_factory=list)
    # repo -> [(digest, record)]
    manifests: dict[str, list[tuple[str, ManifestRecord]]] = field(default_factory=lambda: defaultdict(list))
    # repo -> [(digest, mod_revision)] if that repo's manifest deletions succeed ...
    links: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    # ... and the subset to delete if they do not (unreferenced even by the doomed manifests)
    links_if_manifests_kept: dict[str, list[tuple[str, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    blob_sizes: dict[str, int] = field(default_factory=dict)
    finishing: list[str] = field(default_factory=list)  # blobs already "deleting"
    expired: list[ExpiredTag] = field(default_factory=list)  # mirrored tags not pulled for long


@dataclass
class Report:
    dry_run: bool
    revision: int
    history_entries: int = 0
    manifests: list[str] = field(default_factory=list)  # "repo@digest"
    links: list[str] = field(default_factory=list)  # "repo@digest"
    blobs: list[str] = field(default_factory=list)
    bytes: int = 0
    uploads: list[str] = field(default_factory=list)
    expired_tags: list[str] = field(default_factory=list)  # "repo:tag" of mirrored tags expired
    skipped: int = 0  # guarded batches skipped because something changed meanwhile
    repositories: list[str] | None = None  # a scoped run's repositories (None: the whole registry)

    def to_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "revision": self.revision,
            "repositories": self.repositories,
            "counts": {
                "historyEntries": self.history_entries,
                "manifests": len(self.manifests),
                "links": len(self.links),
                "blobs": len(self.blobs),
                "bytes": self.bytes,
                "uploads": len(self.uploads),
                "expiredTags": len(self.expired_tags),
                "skipped": self.skipped,
            },
            "expiredTags": self.expired_tags,
            "manifests": self.manifests,
            "links": self.links,
            "blobs": self.blobs,
            "uploads": self.uploads,
        }


def _kept_history(
    entries: list[tuple[bytes, HistoryEntry]], policy: Policy, now: float
) -> tuple[list[HistoryEntry], list[bytes]]:
    ordered = sorted(entries, key=lambda e: e[1].seq)
    keep_last = max(policy.keep_tag_revisions, 1)  # the latest entry is the tag's current state
    kept, trimmed = [], []
    for i, (key, entry) in enumerate(ordered):
        if i >= len(ordered) - keep_last or now - entry.time < policy.keep_younger_than:
            kept.append(entry)
        else:
            trimmed.append(key)
    return kept, trimmed


def _reachable(roots: set[str], manifests: dict[str, ManifestRecord]) -> set[str]:
    referrers: dict[str, list[str]] = defaultdict(list)
    for digest, rec in manifests.items():
        if rec.subject is not None:
            referrers[rec.subject].append(digest)
    seen: set[str] = set()
    stack = [d for d in roots if d in manifests]
    while stack:
        digest = stack.pop()
        if digest in seen:
            continue
        seen.add(digest)
        rec = manifests[digest]
        stack += [c for c in rec.manifests if c in manifests]
        stack += referrers.get(digest, [])
        if rec.subject is not None and rec.subject in manifests:
            stack.append(rec.subject)
    return seen


def _parents_first(doomed: set[str], manifests: dict[str, ManifestRecord]) -> list[str]:
    """Doomed manifests ordered so that an index comes before the children it
    lists: deletions go in several transactions, and no index may be left
    pointing at an already deleted child in between (invariant 2 of docs/invariants.md)."""
    children = {d: [c for c in manifests[d].manifests if c in doomed] for d in doomed}
    parents_left = dict.fromkeys(doomed, 0)
    for d in doomed:
        for c in children[d]:
            parents_left[c] += 1
    ready = sorted(d for d, n in parents_left.items() if n == 0)
    order: list[str] = []
    while ready:
        d = ready.pop(0)
        order.append(d)
        for c in children[d]:
            parents_left[c] -= 1
            if parents_left[c] == 0:
                ready.append(c)
    # Manifests are content-addressed, so their references cannot form a cycle.
    assert len(order) == len(doomed)
    return order


def expired_mirror_tags(
    snap: Snapshot, mirrors: Sequence[MirrorExpiry], now: float, only: frozenset[str] | None = None
) -> list[ExpiredTag]:
    """The mirrored tags not pulled for their mirror's time (and check records
    of tags that are gone, as old): docs/pull-through.md#expiry.  Ordinary
    repositories are never looked at."""
    out: list[ExpiredTag] = []
    checked: dict[str, set[str]] = defaultdict(set)  # repo -> tags with a check record
    for repo, tag in snap.mirror_checks:
        checked[repo].add(tag)
    for mirror in mirrors:
        if mirror.unused_for <= 0:
            continue
        limit = mirror.unused_for + mirror.ttl
        under = mirror.prefix + "/"
        repos = {r for r in snap.tags if r.startswith(under)} | {r for r in checked if r.startswith(under)}
        for repo in sorted(repos):
            if only is not None and repo not in only:
                continue
            tags = snap.tags.get(repo, {})
            for tag in sorted(set(tags) | checked.get(repo, set())):
                check, check_revision = snap.mirror_checks.get((repo, tag), (None, 0))
                record = tags.get(tag)
                last = max(record.updated if record else 0.0, check.checked if check else 0.0)
                if now - last < limit:
                    continue
                history = tuple(
                    k for k, _ in sorted(snap.history.get((repo, tag), []), key=lambda e: e[1].seq)
                )
                out.append(
                    ExpiredTag(
                        repo,
                        tag,
                        record,
                        snap.tag_revisions.get((repo, tag), 0),
                        check_revision,
                        history if record is not None else (),
                    )
                )
    return out


def make_plan(snap: Snapshot, policy: Policy, now: float, only: frozenset[str] | None = None) -> Plan:
    """What one collection deletes.  ``only``: the repositories an admin
    prunes (``POST /hareg/v1/repositories/<name>/prune``): their history,
    manifests and links, and the blobs they linked that no repository links
    any more; everything else is left as it is.  Mirrored tags that expire
    (``policy.mirrors``) are planned as gone: neither they nor their history
    keep anything."""
    plan = Plan(snap.revision)
    plan.expired = expired_mirror_tags(snap, policy.mirrors, now, only)
    gone = {(e.repo, e.tag) for e in plan.expired if e.record is not None}
    history_by_repo: dict[str, list[list[tuple[bytes, HistoryEntry]]]] = defaultdict(list)
    for (repo, tag), entries in snap.history.items():
        if (repo, tag) not in gone:  # expiring removes these itself
            history_by_repo[repo].append(entries)
    linked_after: dict[str, set[str]] = {}  # repo -> digests still linked if the plan applies
    for repo in set(snap.manifests) | set(snap.links) | set(snap.tags) | set(history_by_repo):
        manifests = snap.manifests.get(repo, {})
        if only is not None and repo not in only:
            linked_after[repo] = set(snap.links.get(repo, {}))
            continue
        roots = {t.digest for tag, t in snap.tags.get(repo, {}).items() if (repo, tag) not in gone}
        for entries in history_by_repo.get(repo, []):
            kept, trimmed = _kept_history(entries, policy, now)
            plan.history += trimmed
            roots |= {e.new for e in kept if e.new is not None}
        roots |= {d for d, rec in manifests.items() if now - rec.created < policy.keep_younger_than}
        reachable = _reachable(roots, manifests)
        doomed = set(manifests) - reachable
        for digest in _parents_first(doomed, manifests):
            plan.manifests[repo].append((digest, manifests[digest]))
        used_by_reachable = {b for d in reachable for b in manifests[d].blobs}
        used_by_any = {b for rec in manifests.values() for b in rec.blobs}
        links = snap.links.get(repo, {})
        for digest, (link, mod) in sorted(links.items()):
            if now - max(link.touched, link.created) < policy.grace:
                continue
            if digest not in used_by_reachable:
                plan.links[repo].append((digest, mod))
            if digest not in used_by_any:
                plan.links_if_manifests_kept[repo].append((digest, mod))
        linked_after[repo] = set(links) - {d for d, _ in plan.links[repo]}
    still_linked = set().union(*linked_after.values()) if linked_after else set()
    # Large manifest bodies live in the blob store under the manifest digest.
    bodies = {d for ms in snap.manifests.values() for d, rec in ms.items() if rec.body is None}
    # A scoped run considers only the blobs of its repositories (linked, or a
    # large manifest body there); a finished blob elsewhere waits for a full run.
    scope = (
        None
        if only is None
        else {d for repo in only for d in snap.links.get(repo, {})}
        | {d for repo in only for d in snap.manifests.get(repo, {})}
    )
    for digest, (record, _mod) in sorted(snap.blobs.items()):
        if scope is not None and digest not in scope:
            continue
        if record.state == "deleting":
            plan.finishing.append(digest)
            plan.blob_sizes[digest] = record.size
        elif digest not in still_linked and digest not in bodies and now - record.created >= policy.grace:
            plan.blob_sizes[digest] = record.size
    return plan


class GarbageCollector:
    def __init__(
        self,
        gc_store: GcStore,
        store: BlobStore,
        clock: Clock,
        janitor: UploadJanitor,
        policy: Policy,
        *,
        replica: str = "",  # named in the history entries of the tags it expires
    ) -> None:
        self.gc_store = gc_store
        self.store = store
        self.clock = clock
        self.janitor = janitor
        self.policy = policy
        self.replica = replica

    async def plan(self, only: frozenset[str] | None = None, *, expire: bool = True) -> tuple[Snapshot, Plan]:
        snap = await self.gc_store.snapshot()
        # PLANTED BUG "gc-no-grace" (simulator only): no grace window guards in-flight pushes.
        policy = replace(self.policy, grace=0.0) if planted("gc-no-grace") else self.policy
        if not expire:
            policy = replace(policy, mirrors=())
        return snap, make_plan(snap, policy, self.clock.now(), only)

    async def _expire(self, plan: Plan, fence: Sequence[Compare], report: Report) -> None:
        for expired in plan.expired:
            if await self.gc_store.expire_mirror_tag(expired, self.clock.now(), self.replica, fence):
                if expired.record is not None:
                    report.expired_tags.append(f"{expired.repo}:{expired.tag}")
            else:
                report.skipped += 1

    async def run(
        self, fence: Sequence[Compare], *, dry_run: bool = False, only: frozenset[str] | None = None
    ) -> Report:
        """One collection (``only``: of those repositories; the upload
        stagings, which belong to no repository, are swept by full runs only)."""
        snap, plan = await self.plan(only)
        report = Report(dry_run, plan.revision, repositories=sorted(only) if only is not None else None)
        if dry_run:
            report.history_entries = len(plan.history)
            report.manifests = [f"{r}@{d}" for r, ms in plan.manifests.items() for d, _ in ms]
            report.links = [f"{r}@{d}" for r, ls in plan.links.items() for d, _ in ls]
            report.blobs = sorted(plan.blob_sizes)
            report.bytes = sum(plan.blob_sizes.values())
            report.uploads = await self.janitor.sweep(dry_run=True) if only is None else []
            report.expired_tags = [f"{e.repo}:{e.tag}" for e in plan.expired if e.record is not None]
            return report
        if plan.expired:
            # The plan counted on these tags being gone; whether or not each
            # expiry went through, the rest is planned again on what is there now
            # (a tag kept because it was just pulled stays a root).
            await self._expire(plan, fence, report)
            snap, plan = await self.plan(only, expire=False)
            report.revision = plan.revision
        report.history_entries = await self.gc_store.delete_history(plan.history, fence)
        deleted_links: dict[str, set[str]] = defaultdict(set)
        for repo in sorted(set(plan.manifests) | set(plan.links)):
            doomed = plan.manifests.get(repo, [])
            links = plan.links.get(repo, [])
            if doomed:
                gone = await self.gc_store.delete_manifests(repo, doomed, plan.revision, fence)
                # Reported as done even when a later batch was refused: those stay deleted.
                report.manifests += [f"{repo}@{d}" for d in gone]
                if len(gone) < len(doomed):
                    report.skipped += 1
                    links = plan.links_if_manifests_kept.get(repo, [])
            if links:
                done = await self.gc_store.delete_links(repo, links, plan.revision, fence)
                report.skipped += len(links) > len(done)
                deleted_links[repo] = set(done)
                report.links += [f"{repo}@{d}" for d in done]
        still_linked = {
            d for repo, links in snap.links.items() for d in links if d not in deleted_links.get(repo, set())
        }
        for digest, size in sorted(plan.blob_sizes.items()):
            if digest not in plan.finishing:
                if digest in still_linked:
                    continue
                record, mod = snap.blobs[digest]
                if not await self.gc_store.mark_blob_deleting(digest, record, mod, fence):
                    report.skipped += 1
                    continue
            # Claimed: nothing can link it any more, so the bytes can go first.
            await self.store.delete(digest)
            if await self.gc_store.remove_blob_record(digest, fence):
                report.blobs.append(digest)
                report.bytes += size
        report.uploads = await self.janitor.sweep() if only is None else []
        log.info(
            "garbage collection finished",
            extra={"fields": report.to_json()["counts"]},
        )
        return report
