"""A model of a 3-member etcd cluster, and the KV client each replica uses.

``MVCCStore`` is etcd's data model: one revision counter, every key's
versions (create/mod revision, version, lease), ranges at any revision not
compacted away, transactions whose compares follow etcd's ``applyCompare``
(an empty range compares as a zero key, a VALUE compare on no key is false),
leases with TTLs, and an event log that watches read.

``EtcdCluster`` runs it as a replicated service on the simulated network:

* a leader; requests reaching a member that cannot reach the leader are
  refused with "no leader" (``KVUnavailable``: not applied);
* leader elections (a fault, or the leader losing its quorum to a partition)
  pause the cluster: requests wait for the new leader, and some writes that
  were in flight are lost with the old one;
* fault windows in which a write is dropped without being applied, or is
  applied but its reply is lost; the client times out either way and reports
  ``KVUnknownOutcome`` (as the real adapter does);
* leases expire on the cluster's clock (deleting their keys, which watches
  see) and are extended when a new leader takes over, as etcd does;
* periodic compaction, and windows of aggressive compaction, so watches and
  reads at old revisions meet ``KVCompacted``;
* watches stream ordered events, periodic progress notifications and
  requested ones (always after the events they cover, like etcd >= 3.4.31),
  and break on leader loss, partitions or lost messages; the client resumes
  from the next revision, as the real adapter does;
* a member can lose its disk (``lose_member``): it crashes (connections to
  it are refused, its watch streams reset, requests it held die with it; if
  it led, an election follows), the cluster runs on the other two (one more
  partition and there is no quorum), and ``replace_member`` brings a fresh member
  of the same name that serves nothing until it has caught up from a leader
  (a snapshot transfer); it neither votes nor leads before.

``SimKV`` is the :class:`hareg.kv.base.KV` a replica is given: every call
goes over the simulated network to one member, with the real adapter's
error mapping.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from hareg.kv.base import (
    KV,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    KVCompacted,
    KVError,
    KVUnavailable,
    KVUnknownOutcome,
    Op,
    Put,
    RangeResult,
    Target,
    TxnOp,
    TxnResult,
    WatchBatch,
)
from sim.history import CURRENT_OP
from sim.loop import SimLoop
from sim.network import Network, Pending
from sim.trace import Trace

T = TypeVar("T")

_INFINITY_END = b"\x00"  # as a range end: every key from the start on (etcd's convention)


class NoLeader(KVUnavailable):
    """The member cannot reach a leader; the request was not applied."""


# ---------------------------------------------------------------------------------------------
# The data model


@dataclass(slots=True)
class _Version:
    rev: int
    kv: KeyValue | None  # None: the key was deleted at ``rev``


@dataclass(slots=True)
class Lease:
    id: int
    ttl: int
    expiry: float
    keys: dict[bytes, None] = field(default_factory=dict)


def _in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    if end is None:
        return key == start
    if end == _INFINITY_END:
        return key >= start
    return start <= key < end


def _compare_values(actual: int | bytes, op: Op, expected: int | bytes) -> bool:
    if op is Op.EQUAL:
        return actual == expected
    if op is Op.NOT_EQUAL:
        return actual != expected
    if op is Op.LESS:
        return actual < expected  # type: ignore[operator]
    return actual > expected  # type: ignore[operator]


def _target_value(kv: KeyValue, target: Target) -> int | bytes:
    if target is Target.VERSION:
        return kv.version
    if target is Target.CREATE:
        return kv.create_revision
    if target is Target.MOD:
        return kv.mod_revision
    return kv.value


_ZERO = KeyValue(b"", b"", 0, 0, 0)


class MVCCStore:
    """etcd's MVCC key space, leases and event log (no replication, no time)."""

    def __init__(self, first_lease_id: int = 0x694D0000) -> None:
        self.revision = 1  # etcd starts at 1
        self.compact_revision = 0
        self._index: list[bytes] = []  # every key that has history, sorted
        self._history: dict[bytes, list[_Version]] = {}
        self._live: dict[bytes, KeyValue] = {}
        self._log_revs: list[int] = []
        self._log: list[list[Event]] = []
        self.leases: dict[int, Lease] = {}
        self._next_lease = first_lease_id
        self.observers: list[Callable[[int, list[Event]], None]] = []

    # -- reads ----------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        return self._live.get(key)

    def key_count(self) -> int:
        """How many live keys (the size of a snapshot)."""
        return len(self._live)

    def live_items(self, start: bytes, end: bytes) -> list[KeyValue]:
        """Live key-values in ``[start, end)`` (for checkers)."""
        return self._scan(start, end, 0)

    def _keys_from(self, start: bytes, end: bytes | None) -> list[bytes]:
        if end is None:
            return [start] if start in self._history else []
        lo = bisect.bisect_left(self._index, start)
        if end == _INFINITY_END:
            return self._index[lo:]
        hi = bisect.bisect_left(self._index, end, lo)
        return self._index[lo:hi]

    def _at(self, key: bytes, revision: int) -> KeyValue | None:
        if revision == 0:
            return self._live.get(key)
        versions = self._history.get(key)
        if not versions:
            return None
        found: KeyValue | None = None
        for v in reversed(versions):
            if v.rev <= revision:
                found = v.kv
                break
        return found

    def _scan(self, start: bytes, end: bytes | None, revision: int) -> list[KeyValue]:
        if not start and end:
            start = b"\x00"
        out: list[KeyValue] = []
        for key in self._keys_from(start, end):
            kv = self._at(key, revision)
            if kv is not None:
                out.append(kv)
        return out

    def range(
        self,
        start: bytes,
        end: bytes | None,
        *,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
        header_revision: int = 0,
    ) -> RangeResult:
        if revision > self.revision:
            raise KVError(f"etcdserver: mvcc: required revision is a future revision ({revision})")
        if revision and revision < self.compact_revision:
            raise KVCompacted(self.compact_revision)
        kvs = self._scan(start, end, revision)
        count = len(kvs)
        more = False
        if limit and count > limit:
            kvs = kvs[:limit]
            more = True
        if keys_only:
            kvs = [
                KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in kvs
            ]
        return RangeResult(kvs=kvs, revision=header_revision or self.revision, more=more, count=count)

    # -- transactions -------------------------------------------------------------

    def _compare(self, c: Compare) -> bool:
        if c.target is Target.VALUE:
            if not isinstance(c.value, bytes):
                raise TypeError("a VALUE compare needs bytes")
        elif not isinstance(c.value, int) or isinstance(c.value, bool):
            raise TypeError(f"a {c.target.name} compare needs an int")
        kvs = self._scan(c.key, c.range_end, 0)
        if not kvs:
            if c.target is Target.VALUE:
                return False  # no value to compare: always false, as in etcd
            return _compare_values(_target_value(_ZERO, c.target), c.op, c.value)
        return all(_compare_values(_target_value(kv, c.target), c.op, c.value) for kv in kvs)

    @staticmethod
    def _check_intervals(ops: Sequence[TxnOp]) -> None:
        """etcd refuses a branch that writes one key twice (put/put or put/delete)."""
        puts: list[bytes] = []
        deletes: list[tuple[bytes, bytes | None]] = []
        for op in ops:
            if isinstance(op, Put):
                if op.key in puts:
                    raise KVError("etcdserver: duplicate key given in txn request")
                puts.append(op.key)
            elif isinstance(op, Delete):
                deletes.append((op.key, op.range_end))
        for key in puts:
            for start, end in deletes:
                if _in_range(key, start, end):
                    raise KVError("etcdserver: duplicate key given in txn request")

    def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
    ) -> TxnResult:
        self._check_intervals(success)
        self._check_intervals(failure)
        ok = all(self._compare(c) for c in compares)
        ops = success if ok else failure
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise KVError("etcdserver: requested lease not found")
        rev = self.revision + 1
        events: list[Event] = []
        responses: list[RangeResult | int | None] = []
        for op in ops:
            if isinstance(op, Put):
                events.append(self._put(op, rev))
                responses.append(None)
            elif isinstance(op, Delete):
                deleted = self._delete(op.key, op.range_end, rev)
                events.extend(deleted)
                responses.append(len(deleted))
            elif isinstance(op, Get):
                responses.append(
                    self.range(op.key, op.range_end, limit=op.limit, header_revision=rev if events else 0)
                )
            else:
                raise TypeError(f"not a txn op: {op!r}")
        if events:
            self._commit(rev, events)
        return TxnResult(succeeded=ok, revision=self.revision, responses=responses)

    def _touch_index(self, key: bytes) -> list[_Version]:
        versions = self._history.get(key)
        if versions is None:
            versions = self._history[key] = []
            bisect.insort(self._index, key)
        return versions

    def _put(self, op: Put, rev: int) -> Event:
        prev = self._live.get(op.key)
        kv = KeyValue(
            key=op.key,
            value=op.value,
            create_revision=prev.create_revision if prev else rev,
            mod_revision=rev,
            version=prev.version + 1 if prev else 1,
            lease=op.lease,
        )
        if prev is not None and prev.lease and prev.lease != op.lease:
            old = self.leases.get(prev.lease)
            if old is not None:
                old.keys.pop(op.key, None)
        if op.lease:
            self.leases[op.lease].keys[op.key] = None
        self._live[op.key] = kv
        self._touch_index(op.key).append(_Version(rev, kv))
        return Event(EventType.PUT, kv)

    def _delete(self, start: bytes, end: bytes | None, rev: int) -> list[Event]:
        events: list[Event] = []
        for kv in self._scan(start, end, 0):
            del self._live[kv.key]
            self._history[kv.key].append(_Version(rev, None))
            if kv.lease:
                lease = self.leases.get(kv.lease)
                if lease is not None:
                    lease.keys.pop(kv.key, None)
            events.append(Event(EventType.DELETE, KeyValue(kv.key, b"", 0, rev, 0)))
        return events

    def _commit(self, rev: int, events: list[Event]) -> None:
        self.revision = rev
        self._log_revs.append(rev)
        self._log.append(events)
        for observer in self.observers:
            observer(rev, events)

    # -- watches ----------------------------------------------------------------------

    def events_since(self, revision: int, start: bytes, end: bytes | None) -> list[Event]:
        """Events at revisions >= ``revision`` in the key range (KVCompacted if gone)."""
        if revision < self.compact_revision:
            raise KVCompacted(self.compact_revision)
        i = bisect.bisect_left(self._log_revs, revision)
        return [ev for evs in self._log[i:] for ev in evs if _in_range(ev.kv.key, start, end)]

    # -- leases --------------------------------------------------------------------------

    def grant(self, ttl: int, now: float) -> int:
        self._next_lease += 1
        self.leases[self._next_lease] = Lease(self._next_lease, ttl, now + ttl)
        return self._next_lease

    def refresh(self, lease_id: int, now: float) -> int:
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expiry = now + lease.ttl
        return lease.ttl

    def revoke(self, lease_id: int) -> int:
        """Delete the lease and its keys in one revision; how many keys went."""
        lease = self.leases.pop(lease_id, None)
        if lease is None or not lease.keys:
            return 0
        rev = self.revision + 1
        events: list[Event] = []
        for key in list(lease.keys):
            events.extend(self._delete(key, None, rev))
        if events:
            self._commit(rev, events)
        return len(events)

    def expire(self, now: float) -> list[int]:
        gone = [lid for lid, lease in self.leases.items() if lease.expiry <= now]
        for lid in gone:
            self.revoke(lid)
        return gone

    def extend_leases(self, now: float) -> None:
        """A new leader restarts every lease's countdown (etcd's lessor Promote)."""
        for lease in self.leases.values():
            lease.expiry = max(lease.expiry, now + lease.ttl)

    # -- compaction ------------------------------------------------------------------------

    def compact(self, revision: int) -> bool:
        revision = min(revision, self.revision)
        if revision <= self.compact_revision:
            return False
        self.compact_revision = revision
        dead: list[bytes] = []
        for key, versions in self._history.items():
            # Keep the newest version at or below the compact revision (reads at it
            # must still work) unless it is a deletion, and everything after it.
            keep_from = 0
            for i in range(len(versions) - 1, -1, -1):
                if versions[i].rev <= revision:
                    keep_from = i if versions[i].kv is not None else i + 1
                    break
            if keep_from:
                del versions[:keep_from]
            if not versions:
                dead.append(key)
        for key in dead:
            del self._history[key]
            i = bisect.bisect_left(self._index, key)
            del self._index[i]
        i = bisect.bisect_left(self._log_revs, revision)
        del self._log_revs[:i]
        del self._log[:i]
        return True


# ---------------------------------------------------------------------------------------------
# The replicated service


@dataclass(slots=True)
class _Request:
    member: str
    client: str
    fn: Callable[[MVCCStore], Any]
    write: bool  # changes the store (fault windows apply to it)
    what: str
    pending: Pending
    net: Network
    op: int = -1  # the client operation it serves (history.CURRENT_OP)
    late: bool = False  # held back by a late-delivery window once already (never twice)

    def reply(self, result: Any) -> None:
        pending = self.pending
        if not self.net.send(
            self.member, self.client, functools.partial(pending.resolve, result), on_drop=pending.lost
        ):
            pending.lost()


@dataclass(slots=True, eq=False)  # identity semantics: a stream key for the network
class _ServerWatch:
    id: int
    member: str
    client: str
    start: bytes
    end: bytes
    next_rev: int
    deliver: Callable[[object], None]
    idle_since: float
    broken: bool = False


class StreamBroken:
    """Marker delivered to a watch client when its stream ends."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class WatchCreated:
    revision: int  # the store revision when the watch was created


class EtcdCluster:
    def __init__(
        self,
        loop: SimLoop,
        net: Network,
        rng: random.Random,
        trace: Trace,
        *,
        members: Sequence[str] = ("e0", "e1", "e2"),
        progress_interval: float = 1.0,
        compact_interval: float = 5.0,
        keepalive_timeout: float = 2.0,
        tick: float = 0.1,
    ) -> None:
        self.loop = loop
        self.net = net
        self.rng = rng
        self.trace = trace
        self.members = list(members)
        self.store = MVCCStore()
        self.leader: str | None = self.members[rng.randrange(len(self.members))]
        self.progress_interval = progress_interval
        self.compact_interval = compact_interval
        self.keepalive_timeout = keepalive_timeout
        self.tick = tick
        self._election_until = 0.0
        self._pending: list[_Request] = []
        self._watches: dict[int, _ServerWatch] = {}
        self._next_watch = 0
        self._drop_writes: list[float] = []  # fault windows: write dropped, not applied
        self._lose_replies: list[float] = []  # fault windows: write applied, reply lost
        self._late_writes: list[float] = []  # fault windows: txn held, applied after its deadline
        # Transactions held back by a late-delivery window, in the order they were
        # held: number -> (request, the timer that releases it, how many write
        # txns of its client operation had arrived by then); the heal releases the rest.
        self._late: dict[int, tuple[_Request, asyncio.TimerHandle, int]] = {}
        self._next_late = 0
        # client operation -> its write txns that reached a member while any was held
        self._txn_arrivals: dict[int, int] = {}
        self._aggressive_compaction = 0
        self._last_compact_at = 0.0
        self._compact_candidate = 1
        self._last_progress = 0.0
        # Members that lost their disk (down, not yet replaced), and fresh
        # replacements still catching up: member -> when the snapshot transfer
        # from the leader will have completed (restarted while no leader is reachable).
        self.lost: dict[str, float] = {}
        self._catching_up: dict[str, float] = {}
        self._held: dict[str, list[_Request]] = {}  # requests reaching a member that is catching up
        # client operation -> how many of its writes applied with their compares
        # holding (for invariant 7 of docs/invariants.md: nothing is acknowledged that did not apply)
        self.effects: dict[int, int] = {}
        # op id -> the revision of its last applied write transaction
        self.write_revisions: dict[int, int] = {}
        # revision -> the client operation whose transaction made it (for the
        # checker that counts one request's effects: sim/checkers.py)
        self.commit_ops: dict[int, int] = {}
        self.stats: dict[str, int] = {
            "commits": 0,
            "elections": 0,
            "dropped_writes": 0,
            "lost_replies": 0,
            "late_writes": 0,
            "late_applied": 0,  # held transactions released (applied, or refused by a compare)
            "late_refused": 0,  # ... whose compares failed when they finally arrived
            "late_after_resend": 0,  # ... after another txn of the same request (a re-send, a retry)
            "lost_in_election": 0,
            "compactions": 0,
            "lease_expiries": 0,
            "watch_breaks": 0,
            "members_lost": 0,
            "members_replaced": 0,
        }
        self.store.observers.append(self._on_commit)

    # -- faults ----------------------------------------------------------------------

    def add_write_drops(self, p: float) -> None:
        self._drop_writes.append(p)

    def remove_write_drops(self, p: float) -> None:
        if p in self._drop_writes:
            self._drop_writes.remove(p)

    def add_lost_replies(self, p: float) -> None:
        self._lose_replies.append(p)

    def remove_lost_replies(self, p: float) -> None:
        if p in self._lose_replies:
            self._lose_replies.remove(p)

    def add_late_writes(self, p: float) -> None:
        self._late_writes.append(p)

    def remove_late_writes(self, p: float) -> None:
        if p in self._late_writes:
            self._late_writes.remove(p)

    def set_aggressive_compaction(self, on: bool) -> None:
        self._aggressive_compaction += 1 if on else -1

    def heal(self) -> None:
        """End the fault windows; a member that lost its disk is replaced now
        (it still has to catch up before it serves)."""
        self._drop_writes.clear()
        self._lose_replies.clear()
        self._late_writes.clear()
        self._aggressive_compaction = 0
        # What the network still held arrives now, in the order it was held.
        for number in list(self._late):
            self._release_late(number)
        for member in list(self.lost):
            self.replace_member(member)

    # -- members losing their disk ------------------------------------------------------

    def serving(self, member: str) -> bool:
        """Up, and holding the cluster's data (not lost, not catching up)."""
        return member not in self.lost and member not in self._catching_up

    def lose_member(self, member: str) -> bool:
        """``member`` crashes and loses its data.  False (nothing done) while a
        member is already lost or catching up: with two disks gone, a 3-member
        cluster has lost entries only they held and must be restored from a
        backup, which this model does not cover."""
        if self.lost or self._catching_up:
            self.trace.event("etcd.member_loss_skipped", member=member)
            return False
        self.stats["members_lost"] += 1
        self.trace.event("etcd.member_lost", member=member, leader=self.leader)
        # Connections reset: its watch streams end (the client is told if the
        # reset gets there; its keepalive notices anyway).
        for w in list(self._watches.values()):
            if w.member == member:
                self._reset(w, f"connection reset (etcd member {member} crashed)")
        self.lost[member] = self.loop.time()
        self._catching_up.pop(member, None)
        # Requests it held (waiting for a leader or for its catch-up) die with it:
        # never proposed, their clients time out.
        self._pending = [r for r in self._pending if r.member != member]
        self._held.pop(member, None)
        for number, (req, timer, _) in list(self._late.items()):
            if req.member == member:
                timer.cancel()
                del self._late[number]
        # From now on nothing reaches it and nothing leaves it (connection refused).
        self.net.isolate(member)
        if self.leader == member:
            self.start_election(0.3 + self.rng.random(), f"leader {member} lost its disk")
        return True

    def replace_member(self, member: str) -> bool:
        """``etcdctl member remove`` + ``member add``: a fresh, empty member of the
        same name joins and catches up from the leader before it serves."""
        if self.lost.pop(member, None) is None:
            return False
        self.stats["members_replaced"] += 1
        self.net.unisolate(member)
        self._catching_up[member] = self.loop.time() + self._transfer_time()
        self.trace.event("etcd.member_replaced", member=member)
        return True

    def _transfer_time(self) -> float:
        """A snapshot of the key space, sent by the leader (bounded, state-sized)."""
        return 0.2 + 0.3 * self.rng.random() + 2e-6 * self.store.key_count()

    def _catch_up(self, now: float) -> None:
        for member, ready_at in list(self._catching_up.items()):
            leader = self.leader
            if leader is None or not self.net.connected(member, leader):
                # The transfer needs a leader: start over once one is reachable.
                self._catching_up[member] = now + self._transfer_time()
                continue
            if now < ready_at:
                continue
            del self._catching_up[member]
            self.trace.event("etcd.member_ready", member=member, rev=self.store.revision)
            for req in self._held.pop(member, []):
                self._serve(req)

    def start_election(self, duration: float, why: str) -> None:
        """The leader is gone: nothing commits until a new one is elected."""
        until = self.loop.time() + duration
        if self.leader is None:
            self._election_until = max(self._election_until, until)
            return
        self.stats["elections"] += 1
        self.trace.event("etcd.leader_lost", leader=self.leader, why=why, pause=round(duration, 6))
        self.leader = None
        self._election_until = until
        self.break_watches("etcdserver: no leader")
        self.loop.call_at(until, self._elect)

    def _quorum_of(self, member: str) -> int:
        """Members that can ack ``member``'s proposals: itself and the reachable
        ones holding the data (a member catching up cannot ack new entries)."""
        return 1 + sum(
            1 for m in self.members if m != member and self.serving(m) and self.net.connected(member, m)
        )

    def _elect(self) -> None:
        if self.leader is not None:
            return
        now = self.loop.time()
        if now < self._election_until:
            self.loop.call_at(self._election_until, self._elect)
            return
        majority = len(self.members) // 2 + 1
        candidates = [m for m in self.members if self.serving(m) and self._quorum_of(m) >= majority]
        if not candidates:
            self.loop.call_later(0.5, self._elect)  # no quorum anywhere: try again
            return
        self.leader = candidates[self.rng.randrange(len(candidates))]
        self.store.extend_leases(now)
        self.trace.event("etcd.leader", leader=self.leader)
        pending, self._pending = self._pending, []
        for req in pending:
            if req.write and self.rng.random() < 0.5:
                # The proposal died with the old leader; the client times out.
                self.stats["lost_in_election"] += 1
                self.trace.event("etcd.lost_in_election", client=req.client, what=req.what)
                continue
            self._serve(req)

    def has_leader(self, member: str) -> bool:
        leader = self.leader
        return leader is not None and (member == leader or self.net.connected(member, leader))

    # -- background: quorum, leases, compaction, progress -----------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            now = self.loop.time()
            if self.leader is not None and self._quorum_of(self.leader) < len(self.members) // 2 + 1:
                self.start_election(0.3 + self.rng.random(), "leader lost its quorum")
            if self._catching_up:
                self._catch_up(now)
            if self.leader is not None:
                for lid in self.store.expire(now):
                    self.stats["lease_expiries"] += 1
                    self.trace.event("etcd.lease_expired", lease=lid)
                self._compact(now)
                self._check_watch_links()
                if now - self._last_progress >= self.progress_interval:
                    self._last_progress = now
                    self._periodic_progress(now)

    def _compact(self, now: float) -> None:
        if self._aggressive_compaction > 0:
            target = self.store.revision
        elif now - self._last_compact_at >= self.compact_interval:
            # Periodic compaction keeps one interval of history (etcd's --auto-compaction-mode=periodic).
            target, self._compact_candidate = self._compact_candidate, self.store.revision
            self._last_compact_at = now
        else:
            return
        if self.store.compact(target):
            self.stats["compactions"] += 1
            self.trace.event("etcd.compact", rev=target)

    # -- requests ---------------------------------------------------------------------------

    def _hold(self, req: _Request) -> None:
        """No leader: the request waits for the election (the client may time out)."""
        self._pending.append(req)
        req.pending.lost()

    def receive(self, req: _Request) -> None:
        """A request arrives at a member."""
        if self._late and req.write and req.what == "txn":
            self._txn_arrivals[req.op] = self._txn_arrivals.get(req.op, 0) + 1
        if req.member in self.lost:
            req.pending.lost()  # it crashed as the request arrived: no answer
            return
        if req.member in self._catching_up:
            # A fresh member serves nothing it does not have yet: the request
            # waits for the catch-up (the client may time out).
            self._held.setdefault(req.member, []).append(req)
            req.pending.lost()
            return
        if self.leader is None:
            self._hold(req)
            return
        if not self.has_leader(req.member):
            req.reply(NoLeader(f"etcdserver: no leader (member {req.member} is cut off from the quorum)"))
            return
        self._serve(req)

    def _serve(self, req: _Request) -> None:
        if not self.has_leader(req.member):
            req.reply(NoLeader(f"etcdserver: no leader (member {req.member})"))
            return
        # The commit time (and a follower's round trip to the leader) was part of
        # the request's transit (SimKV adds it), so it applies on arrival.
        self._apply(req)

    def _hold_late(self, req: _Request) -> None:
        """A late-delivery window: the transaction sits in the network or the
        member's queue and applies only after its client's deadline — after
        the verification read and, usually, after a re-send (the delay is
        drawn past the deadline).  The client sees a timeout."""
        req.late = True
        self.stats["late_writes"] += 1
        # 40% land within 5 ms of the deadline, between the client's verification
        # read and its re-send (or racing them), the rest up to 5 s later, after
        # the re-send (or after the client's 503).
        extra = self.rng.uniform(0.0, 0.005) if self.rng.random() < 0.4 else self.rng.uniform(0.005, 5.0)
        at = max(self.loop.time(), req.pending.deadline) + extra
        number, self._next_late = self._next_late, self._next_late + 1
        self.trace.event("etcd.held_late", client=req.client, op=req.op, until=round(at, 6))
        arrived = self._txn_arrivals.get(req.op, 0)
        self._late[number] = (req, self.loop.call_at(at, self._release_late, number), arrived)
        req.pending.lost()

    def _release_late(self, number: int) -> None:
        held = self._late.pop(number, None)
        if held is None:
            return
        req, timer, arrived = held
        timer.cancel()
        self.stats["late_applied"] += 1
        if req.op >= 0 and self._txn_arrivals.get(req.op, 0) > arrived:
            self.stats["late_after_resend"] += 1  # another txn of its request got there first
        self.trace.event("etcd.late", client=req.client, op=req.op, member=req.member)
        if req.member in self.lost:
            return  # the member crashed with it
        if req.member in self._catching_up:
            self._held.setdefault(req.member, []).append(req)
            return
        if self.leader is None:
            self._hold(req)
            return
        self._serve(req)

    def _apply(self, req: _Request) -> None:
        if self.leader is None:
            self._hold(req)
            return
        late = req.what == "txn" and req.write and not req.late and self._late_writes
        if late and self.rng.random() < max(self._late_writes):
            self._hold_late(req)
            return
        if req.write and self._drop_writes and self.rng.random() < max(self._drop_writes):
            self.stats["dropped_writes"] += 1
            self.trace.event("etcd.dropped", client=req.client, what=req.what)
            req.pending.lost()
            return  # never applied; the client times out
        result: Any
        before = self.store.revision
        try:
            result = req.fn(self.store)
        except KVError as exc:
            result = exc
        if req.write and isinstance(result, TxnResult) and result.succeeded:
            self.effects[req.op] = self.effects.get(req.op, 0) + 1
            self.write_revisions[req.op] = self.store.revision
            if self.store.revision != before:
                self.commit_ops[self.store.revision] = req.op
        elif req.late and isinstance(result, TxnResult):
            self.stats["late_refused"] += 1
        if req.write and self._lose_replies and self.rng.random() < max(self._lose_replies):
            self.stats["lost_replies"] += 1
            self.trace.event("etcd.reply_lost", client=req.client, what=req.what)
            req.pending.lost()
            return  # applied, but the client never hears of it
        req.reply(result)

    def _on_commit(self, rev: int, events: list[Event]) -> None:
        self.stats["commits"] += 1
        self.trace.event("etcd.commit", rev=rev, n=len(events))
        for w in list(self._watches.values()):
            if w.broken or w.next_rev > rev:
                continue
            evs = [ev for ev in events if _in_range(ev.kv.key, w.start, w.end)]
            w.next_rev = rev + 1
            if evs:
                w.idle_since = self.loop.time()
                self._stream(w, WatchBatch(events=evs, revision=rev))

    # -- watches --------------------------------------------------------------------------------

    def create_watch(
        self,
        member: str,
        client: str,
        start: bytes,
        end: bytes,
        start_rev: int,
        deliver: Callable[[object], None],
    ) -> int:
        self._next_watch += 1
        w = _ServerWatch(self._next_watch, member, client, start, end, 0, deliver, self.loop.time())
        self._watches[w.id] = w
        if not self.serving(member):
            self._break(w, f"etcdserver: member {member} is not ready (catching up)")
            return w.id
        if not self.has_leader(member):
            self._break(w, "etcdserver: no leader")
            return w.id
        now_rev = self.store.revision
        from_rev = start_rev or now_rev + 1
        try:
            backlog = self.store.events_since(from_rev, start, end)
        except KVCompacted as exc:
            self._stream(w, exc)
            self._drop(w)
            return w.id
        self._stream(w, WatchCreated(now_rev))
        w.next_rev = max(now_rev + 1, from_rev)  # a future start: nothing before it (as etcd)
        if backlog:
            self._stream(w, WatchBatch(events=backlog, revision=backlog[-1].kv.mod_revision))
        return w.id

    def close_watch(self, watch_id: int) -> None:
        w = self._watches.pop(watch_id, None)
        if w is not None:
            w.broken = True
            self.net.close_stream(w)

    def request_progress(self, watch_id: int) -> None:
        w = self._watches.get(watch_id)
        if w is None or w.broken or not self.has_leader(w.member):
            return
        self._stream(w, WatchBatch(events=[], revision=self.store.revision))

    def _periodic_progress(self, now: float) -> None:
        for w in list(self._watches.values()):
            if not w.broken and now - w.idle_since >= self.progress_interval:
                w.idle_since = now
                self._stream(w, WatchBatch(events=[], revision=self.store.revision))

    def _stream(self, w: _ServerWatch, item: object) -> None:
        sent = self.net.send(
            w.member, w.client, lambda: w.deliver(item), stream=w, on_drop=lambda: self._lost_on_stream(w)
        )
        if not sent:
            self._lost_on_stream(w)

    def _lost_on_stream(self, w: _ServerWatch) -> None:
        """A message of the stream is lost: the connection is gone."""
        if not w.broken:
            self.stats["watch_breaks"] += 1
            self._drop(w)

    def _break(self, w: _ServerWatch, reason: str) -> None:
        """The member ends the stream (the client is told, if the message gets there)."""
        if w.broken:
            return
        self.stats["watch_breaks"] += 1
        broken = StreamBroken(reason)
        self.net.send(w.member, w.client, lambda: w.deliver(broken), stream=w)
        self._drop(w)

    def _reset(self, w: _ServerWatch, reason: str) -> None:
        """The member's process died: the client's kernel sees the connection
        reset one network latency later (no message from the member needed)."""
        if w.broken:
            return
        self.stats["watch_breaks"] += 1
        w.broken = True
        self._watches.pop(w.id, None)
        self.loop.call_later(self.net.latency(w.member, w.client), w.deliver, StreamBroken(reason))

    def _drop(self, w: _ServerWatch) -> None:
        """The stream is over on the member's side.  Whatever becomes of the last
        messages, the client notices within its keepalive timeout (gRPC keepalive),
        so a watch never hangs on a dead stream."""
        w.broken = True
        self._watches.pop(w.id, None)
        self.loop.call_later(self.keepalive_timeout, w.deliver, StreamBroken("keepalive timeout"))

    def break_watches(self, reason: str) -> None:
        for w in list(self._watches.values()):
            self._break(w, reason)

    def _check_watch_links(self) -> None:
        for w in list(self._watches.values()):
            if not self.net.connected(w.member, w.client):
                self._lost_on_stream(w)
            elif not self.has_leader(w.member):
                self._break(w, "etcdserver: no leader")


# ---------------------------------------------------------------------------------------------
# The client


class SimKV:
    """The KV interface over the simulated network (one per replica process)."""

    def __init__(
        self,
        cluster: EtcdCluster,
        net: Network,
        node: str,
        rng: random.Random,
        *,
        timeout: float = 2.0,
        watch_backoff: float = 0.1,
        watch_max_backoff: float = 2.0,
    ) -> None:
        self.cluster = cluster
        self.net = net
        self.node = node
        self.loop = cluster.loop
        self.timeout = timeout
        self.watch_backoff = watch_backoff
        self.watch_max_backoff = watch_max_backoff
        self.rng = rng
        self._member = rng.randrange(len(cluster.members))
        self._closed = False
        self._watches: dict[int, str] = {}  # open server-side watch id -> member
        self.calls = 0

    # -- plumbing ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KVUnavailable("client closed (process gone)")

    def _reachable_member(self) -> str | None:
        members = self.cluster.members
        for i in range(len(members)):
            m = members[(self._member + i) % len(members)]
            if not self.net.is_cut(self.node, m):
                self._member = (self._member + i) % len(members)
                return m
        return None

    def _rotate(self) -> None:
        self._member = (self._member + 1) % len(self.cluster.members)

    async def _call(
        self, what: str, fn: Callable[[MVCCStore], T], *, write: bool, mutating: bool | None = None
    ) -> T:
        """One request to one member.  ``write``: sent once, and a timeout is an
        unknown outcome (the adapter treats every txn so); reads are retried on
        other members and a timeout is KVUnavailable."""
        self._check_open()
        if self.net.is_paused(self.node):
            await self.net.wait_running(self.node)
            self._check_open()
        self.calls += 1
        attempts = 1 if write else len(self.cluster.members)
        deadline = self.loop.time() + self.timeout
        last: BaseException = KVUnavailable(f"{what}: no etcd member reachable")
        for _ in range(attempts):
            member = self._reachable_member()
            if member is None:
                raise last  # never sent: certainly not applied
            pending = Pending(self.loop, deadline)
            req = _Request(
                member,
                self.node,
                fn,
                write if mutating is None else mutating,
                what,
                pending,
                self.net,
                CURRENT_OP.get(),
            )
            commit = (0.0005 + 0.001 * self.rng.random()) if req.write else 0.0002
            leader = self.cluster.leader
            if leader is not None and leader != member:
                commit += 2 * self.net.latency(member, leader)  # a follower forwards to the leader
            if not self.net.send(
                self.node,
                member,
                functools.partial(self.cluster.receive, req),
                on_drop=pending.lost,
                extra=commit,
            ):
                self._rotate()
                continue
            result = await pending.fut
            if result is Pending.TIMED_OUT:
                self._rotate()
                if write:
                    raise KVUnknownOutcome(f"{what}: no answer from etcd within {self.timeout:g}s")
                raise KVUnavailable(f"{what}: no answer from etcd within {self.timeout:g}s")
            if isinstance(result, NoLeader):
                self._rotate()
                last = result
                continue
            if isinstance(result, BaseException):
                raise result
            return cast(T, result)
        raise last

    # -- KV ------------------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        return await self._call("get", lambda s: s.get(key), write=False)

    async def range(
        self, start: bytes, end: bytes, *, limit: int = 0, revision: int = 0, keys_only: bool = False
    ) -> RangeResult:
        return await self._call(
            "range",
            lambda s: s.range(start, end, limit=limit, revision=revision, keys_only=keys_only),
            write=False,
        )

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        compares, success, failure = list(compares), list(success), list(failure)
        mutating = any(isinstance(op, Put | Delete) for op in (*success, *failure))
        return await self._call(
            "txn", lambda s: s.txn(compares, success, failure), write=True, mutating=mutating
        )

    async def current_revision(self) -> int:
        return await self._call("current_revision", lambda s: s.revision, write=False)

    async def grant_lease(self, ttl: int) -> int:
        now = self.loop.time
        return await self._call("grant_lease", lambda s: s.grant(ttl, now()), write=True)

    async def refresh_lease(self, lease_id: int) -> int:
        now = self.loop.time
        return await self._call("refresh_lease", lambda s: s.refresh(lease_id, now()), write=True)

    async def revoke_lease(self, lease_id: int) -> None:
        await self._call("revoke_lease", lambda s: s.revoke(lease_id), write=True)

    def request_watch_progress(self) -> None:
        if self._closed:
            return
        for watch_id, member in list(self._watches.items()):
            self.net.send(self.node, member, functools.partial(self.cluster.request_progress, watch_id))

    async def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        next_rev = start_revision
        backoff = self.watch_backoff
        while True:
            self._check_open()
            await self.net.wait_running(self.node)
            member = self._reachable_member()
            queue: asyncio.Queue[object] = asyncio.Queue()
            ids: list[int] = []

            create = functools.partial(self._create_watch, member or "", start, end, next_rev, queue, ids)

            # If the request to open the stream is lost, the client's keepalive notices.
            def lost(queue: asyncio.Queue[object] = queue) -> None:
                self.loop.call_later(self.cluster.keepalive_timeout, queue.put_nowait, StreamBroken("lost"))

            if member is None or not self.net.send(self.node, member, create, on_drop=lost):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.watch_max_backoff)
                continue
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, WatchCreated):
                        if next_rev == 0:
                            next_rev = item.revision + 1
                        continue
                    if isinstance(item, KVCompacted):
                        raise KVCompacted(item.compact_revision)
                    if isinstance(item, StreamBroken):
                        break
                    assert isinstance(item, WatchBatch)
                    backoff = self.watch_backoff
                    if item.events:
                        next_rev = item.events[-1].kv.mod_revision + 1
                        yield item
                    elif item.revision >= next_rev - 1:
                        next_rev = item.revision + 1
                        yield item
            finally:
                for watch_id in ids:
                    self._watches.pop(watch_id, None)
                    self.cluster.close_watch(watch_id)
            self._rotate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.watch_max_backoff)

    def _create_watch(
        self,
        member: str,
        start: bytes,
        end: bytes,
        from_rev: int,
        queue: asyncio.Queue[object],
        ids: list[int],
    ) -> None:
        if self._closed:
            return
        watch_id = self.cluster.create_watch(member, self.node, start, end, from_rev, queue.put_nowait)
        ids.append(watch_id)
        self._watches[watch_id] = member

    async def close(self) -> None:
        self.kill()

    def kill(self) -> None:
        """The process is gone: its connections drop and every call fails."""
        self._closed = True
        for watch_id in list(self._watches):
            self.cluster.close_watch(watch_id)
        self._watches.clear()


if TYPE_CHECKING:

    def _conforms(kv: SimKV) -> KV:  # mypy checks SimKV against the protocol
        return kv
