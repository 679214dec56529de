"""The KV interface on a real etcd cluster, through etcd3aio's generated gRPC stubs.

Members and failover.  Each member has a gRPC channel of its own (etcd3aio's
services pin a single channel, and one round-robin channel over every member
keeps routing calls to a frozen member until gRPC's keepalive closes its
connection, 5 s or more since etcd refuses faster pings): so this module calls
etcd3aio's stubs itself and picks the member per call.  A call goes to the
member that answered last; ``member_timeout`` (0.5 s by default) bounds how
long one member may hold it up:

* Calls that are safe to send twice (reads, current_revision, a transaction
  that only reads, lease grant, refresh and revoke) are *hedged*: still
  unanswered after ``member_timeout``, the call is sent to the next member as
  well and the first answer wins; a member that fails is skipped at once.
  Every member failing, or ``timeout`` passing, is ``KVUnavailable`` (a read
  applies nothing).  A read at a compacted revision is ``KVCompacted``.
* A write (a transaction that writes) is sent to one member.  It moves to the
  next member only when the first certainly did not apply it (the channel
  could not connect; the member has no leader, which etcd's interceptor
  checks before it handles the request since every call asks for a leader).
  Still unanswered after ``member_timeout``, the member is asked for its
  status (within ``member_timeout``): a member that does not answer, has no
  leader or has moved to a new leader term (a proposal forwarded to a leader
  that froze is never answered) is given up on, the write is
  ``KVUnknownOutcome`` and later calls go to another member; a member that
  answers keeps the write until ``timeout``.  A write is never re-sent here:
  the metadata layer verifies an unknown outcome (``hareg/metadata/writes.py``).
  ``KVUnavailable`` only when the write certainly never reached etcd or etcd
  refused it before proposing it ("too many requests", "no leader").
* A write refused because etcd's database is at its space quota ("database
  space exceeded", its NOSPACE alarm) was not applied: ``KVNoSpace``, never
  sent to another member (they share the alarm), never re-sent.
* A request etcd rejects as invalid (too many ops, request too large, duplicate
  key in a txn, lease not found on a put, permission denied) was not applied
  and retrying does not help: ``KVRejected`` with etcd's message.

The watch runs on one member and is guarded: once that member is seen
failing by any call, or fails a status check while the stream is quiet, the
stream is ended and resumed on another member.

The watch is implemented here on the raw Watch stream rather than with
``etcd3aio.WatchService.watch``, which (0.3.0) silently skips past a
compaction, ends on a clean end-of-stream, and on reconnect resumes from the
*header* revision of the last response, which skips events when the watcher
was still catching up (etcd stamps catch-up batches with the current store
revision) or had only received its "created" response.  Here the resume point
is the last delivered event's revision + 1 (or a progress notification's
revision + 1), so a reconnect never leaves a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from etcd3aio._protobuf import (
    AlarmMember,
    AlarmRequest,
    CompactionRequest,
    DefragmentRequest,
    DeleteRangeRequest,
    KVStub,
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseRevokeRequest,
    LeaseStub,
    MaintenanceStub,
    PutRequest,
    RangeRequest,
    RequestOp,
    StatusRequest,
    TxnRequest,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio._protobuf import (
    Compare as PbCompare,
)
from etcd3aio.errors import EtcdError

from hareg.kv.base import (
    KV,
    Alarm,
    Compare,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    KVCompacted,
    KVError,
    KVNoSpace,
    KVRejected,
    KVUnavailable,
    KVUnknownOutcome,
    Maintenance,
    MemberStatus,
    Op,
    Put,
    RangeResult,
    Target,
    TxnOp,
    TxnResult,
    WatchBatch,
)

__all__ = ["EtcdKV", "parse_endpoints"]

log = logging.getLogger("hareg.kv")

T = TypeVar("T")

_OPS = {
    Op.EQUAL: PbCompare.EQUAL,
    Op.GREATER: PbCompare.GREATER,
    Op.LESS: PbCompare.LESS,
    Op.NOT_EQUAL: PbCompare.NOT_EQUAL,
}
_TARGETS = {
    Target.VERSION: (PbCompare.VERSION, "version"),
    Target.CREATE: (PbCompare.CREATE, "create_revision"),
    Target.MOD: (PbCompare.MOD, "mod_revision"),
    Target.VALUE: (PbCompare.VALUE, "value"),
}
_PB_DELETE = 1  # mvccpb.Event.DELETE

# Status codes that mean etcd looked at the request and refused it: nothing
# was applied, and sending it again will not help.
_REJECTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Failure details that prove the request never left this process.
_NOT_SENT_MARKERS = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "connection refused",
    "dns resolution failed",
    "name resolution failure",
    "no route to host",
    "network is unreachable",
)
_COMPACTED_MARKER = "required revision has been compacted"
# Refusals of a request too big for etcd: its --max-request-bytes ("request is
# too large", or gRPC's own "larger than max" message-size check, which comes
# as RESOURCE_EXHAUSTED), its --max-txn-ops, a key given twice in one txn.
_TOO_BIG_MARKERS = (
    "request is too large",
    "larger than max",
    "too many operations in txn request",
    "duplicate key given in txn request",
)
_TOO_MANY_REQUESTS = "too many requests"
# etcd's NOSPACE refusal (RESOURCE_EXHAUSTED "etcdserver: mvcc: database space
# exceeded"): the database reached --quota-backend-bytes; nothing was applied.
_NO_SPACE = "database space exceeded"
_NO_LEADER = "no leader"
# etcd's AlarmType enum (NONE, NOSPACE, CORRUPT), which etcd3aio does not export.
_ALARM_TYPE = AlarmMember.DESCRIPTOR.fields_by_name["alarm"].enum_type
# Attempts one hedged call may make per member, in all (see EtcdKV._read).
_ATTEMPTS_PER_MEMBER = 3
_LEADER_CHANGED = "leader changed"

# Every call asks for a member with a leader: etcd's interceptor refuses a
# unary call with "no leader" before handling it (so a write refused so was
# not applied and may go to another member), and cancels a watch stream when
# its member loses its leader, so the watch reconnects elsewhere instead of
# hanging on a partitioned member.
_REQUIRE_LEADER = (("hasleader", "true"),)


def parse_endpoints(endpoints: Sequence[str]) -> tuple[list[tuple[str, int]], bool]:
    """``["http://h:2379", "h2:2379", "https://[::1]:2379"]`` -> ``([(host, port), ...], tls)``.

    The scheme is stripped; ``https`` (on every endpoint) asks for TLS."""
    if not endpoints:
        raise ValueError("at least one etcd endpoint is required")
    out: list[tuple[str, int]] = []
    schemes: set[str] = set()
    for ep in endpoints:
        ep = ep.strip()
        if "://" not in ep:
            ep = "//" + ep
        parts = urlsplit(ep)
        schemes.add(parts.scheme or "http")
        if parts.hostname is None:
            raise ValueError(f"bad etcd endpoint {ep!r}")
        try:
            port = parts.port or 2379
        except ValueError as e:
            raise ValueError(f"bad etcd endpoint {ep!r}: {e}") from e
        out.append((parts.hostname, port))
    if not schemes <= {"http", "https"} or len(schemes) > 1:
        raise ValueError(f"etcd endpoints must all be http:// or all https://, got {sorted(schemes)}")
    return out, schemes == {"https"}


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _too_big(details: str) -> bool:
    low = details.lower()
    return any(marker in low for marker in _TOO_BIG_MARKERS)


def _rpc_error(exc: BaseException) -> Any | None:
    """The grpc.aio.AioRpcError behind an exception raised by etcd3aio."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen
        seen = seen.__cause__
    return None


def _describe(exc: BaseException) -> str:
    err = _rpc_error(exc)
    if err is not None:
        return f"{err.code().name}: {err.details()}"
    return f"{type(exc).__name__}: {exc}"


def _from(key: bytes, end: bytes | None) -> bytes:
    """etcd rejects an empty key; as the start of a range it means the same as
    ``b"\\x00"`` (no key is empty), so ``[b"", end)`` works like everywhere else."""
    return b"\x00" if not key and end else key


def _kv(pb: Any) -> KeyValue:
    return KeyValue(
        key=bytes(pb.key),
        value=bytes(pb.value),
        create_revision=int(pb.create_revision),
        mod_revision=int(pb.mod_revision),
        version=int(pb.version),
        lease=int(pb.lease),
    )


def _range_result(pb: Any, fallback_revision: int = 0) -> RangeResult:
    revision = int(pb.header.revision) if pb.HasField("header") else 0
    return RangeResult(
        kvs=[_kv(kv) for kv in pb.kvs],
        revision=revision or fallback_revision,
        more=bool(pb.more),
        count=int(pb.count),
    )


def _pb_compare(c: Compare) -> Any:
    target, field_name = _TARGETS[c.target]
    if c.target is Target.VALUE:
        if not isinstance(c.value, bytes):
            raise TypeError(f"a VALUE compare needs bytes, got {type(c.value).__name__}")
    elif not isinstance(c.value, int) or isinstance(c.value, bool):
        raise TypeError(f"a {c.target.name} compare needs an int, got {type(c.value).__name__}")
    pb = PbCompare(result=_OPS[c.op], target=target, key=_from(c.key, c.range_end), **{field_name: c.value})
    if c.range_end is not None:
        pb.range_end = c.range_end
    return pb


def _pb_op(op: TxnOp) -> Any:
    if isinstance(op, Put):
        return RequestOp(request_put=PutRequest(key=op.key, value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        req = DeleteRangeRequest(key=_from(op.key, op.range_end), range_end=op.range_end or b"")
        return RequestOp(request_delete_range=req)
    if isinstance(op, Get):
        rng = RangeRequest(key=_from(op.key, op.range_end), range_end=op.range_end or b"", limit=op.limit)
        return RequestOp(request_range=rng)
    raise TypeError(f"not a txn op: {op!r}")


@dataclass(eq=False)
class _Member:
    """One etcd member behind a gRPC channel of its own, so that a frozen
    member holds up only the calls sent to it (etcd3aio's services pin one
    channel, and one round-robin channel over every member keeps sending to a
    frozen member until gRPC's keepalive gives up on it)."""

    address: str
    channel: Any
    kv: Any  # etcd3aio._protobuf.KVStub
    lease: Any
    maintenance: Any
    watch: Any
    failed_at: float | None = None  # monotonic time it last failed to answer; None: it answers
    answered_at: float = -1e18  # monotonic time of its last answer
    raft_term: int = 0  # from the header of its last answer
    member_id: int = 0  # etcd's id of the member, from the header of its last answer


class _Stalled(Exception):
    """A member left a write unanswered and does not look able to answer it."""


class EtcdKV:
    """:class:`hareg.kv.base.KV` on etcd v3.

    ``endpoints`` are ``host:port`` or ``http(s)://host:port`` strings.  Each
    member gets a channel of its own; calls go to one member (the last that
    answered) and move to another when it fails or stalls: a read (and every
    call that is safe to send twice: lease grant, refresh and revoke, a
    transaction that only reads) still unanswered after ``member_timeout``
    seconds is sent to the next member too, and the first answer wins; a
    write still unanswered after ``member_timeout`` makes the client ask the
    member for its status (within ``member_timeout``), and a member that does
    not answer, has no leader, has seen a new leader term since or names a
    leader that does not answer is given up on: the write is
    ``KVUnknownOutcome`` and the next call goes elsewhere.
    TLS is used with ``https://`` endpoints or when ``ca_file`` is given;
    ``cert_file``/``key_file`` add a client certificate.  Every call is bounded
    by ``timeout`` seconds in all.

    Use ``await EtcdKV.connect(...)`` (or ``async with EtcdKV(...)``).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        member_timeout: float = 0.5,
        keepalive_time: float = 5.0,
        keepalive_timeout: float = 1.0,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        tls_server_name: str | None = None,
        watch_backoff: float = 0.1,
        watch_max_backoff: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if member_timeout <= 0:
            raise ValueError("member_timeout must be > 0")
        if keepalive_time <= 0 or keepalive_timeout <= 0:
            raise ValueError("keepalive_time and keepalive_timeout must be > 0")
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        self.endpoints, https = parse_endpoints(endpoints)
        self.timeout = timeout
        self.member_timeout = member_timeout
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout
        self._tls = https or ca_file is not None or cert_file is not None
        self._ca_file = ca_file
        self._cert_file = cert_file
        self._key_file = key_file
        self._tls_server_name = tls_server_name
        self._watch_backoff = watch_backoff
        self._watch_max_backoff = watch_max_backoff
        self._monotonic = monotonic
        self._members: list[_Member] = []
        self._preferred = 0  # index of the member calls go to first
        self._closed = False
        # One queue per open watch stream; request_watch_progress() feeds them.
        self._progress_queues: set[asyncio.Queue[None]] = set()
        self._progress_requests_safe = False  # learned from the server version when a watch starts
        self._server_version: str | None = None

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (the per-call timeout of the client)
        member_timeout: float = 0.5,
        keepalive_time: float = 5.0,
        keepalive_timeout: float = 1.0,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        tls_server_name: str | None = None,
        check: bool = False,
    ) -> EtcdKV:
        """Open a client.  With ``check``, also make one linearizable read, so
        an unreachable cluster fails here with KVUnavailable."""
        kv = cls(
            endpoints,
            timeout=timeout,
            member_timeout=member_timeout,
            keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            tls_server_name=tls_server_name,
        )
        await kv.open()
        if check:
            try:
                await kv.current_revision()
            except BaseException:
                await kv.close()
                raise
        return kv

    async def open(self) -> None:
        """Create one gRPC channel per member (each connects lazily, on its first call)."""
        if self._closed:
            raise KVError("EtcdKV is closed")
        if self._members:
            return
        options: list[tuple[str, Any]] = [
            # A call in flight on a connection whose pings go unanswered for
            # keepalive_timeout fails (UNAVAILABLE) instead of waiting for its
            # deadline.  etcd refuses pings more often than its
            # --grpc-keepalive-min-time (5 s by default), and pings on a
            # connection with no call at all (so: none on an idle member's).
            ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.enable_retries", 1),  # transparent retries only: never after the server saw a call
            # etcd enforces its own request limit (--max-request-bytes); large
            # ranges (manifests are up to 4 MiB) must not hit gRPC's 4 MiB default.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        credentials = None
        if self._tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(self._ca_file),
                private_key=_read_file(self._key_file),
                certificate_chain=_read_file(self._cert_file),
            )
        members: list[_Member] = []
        for host, port in self.endpoints:
            target = await self._target(host, port)
            member_options = list(options)
            if self._tls and self._tls_server_name is not None:
                member_options.append(("grpc.ssl_target_name_override", self._tls_server_name))
            elif self._tls and target.startswith("ipv") and _ip_version(host) is None:
                # Resolved here (localhost): verify the certificate against the name.
                member_options.append(("grpc.ssl_target_name_override", host))
            if credentials is not None:
                channel = grpc.aio.secure_channel(target, credentials, options=member_options)
            else:
                channel = grpc.aio.insecure_channel(target, options=member_options)
            members.append(
                _Member(
                    address=f"{host}:{port}",
                    channel=channel,
                    kv=KVStub(channel),
                    lease=LeaseStub(channel),
                    maintenance=MaintenanceStub(channel),
                    watch=WatchStub(channel),
                )
            )
        self._members = members

    @staticmethod
    async def _target(host: str, port: int) -> str:
        """The gRPC target of one member: its address, or its name for gRPC
        to resolve (``localhost`` is resolved here, to IPv4, as etcd listens)."""
        version = _ip_version(host)
        if version == 4:
            return f"ipv4:{host}:{port}"
        if version == 6:
            return f"ipv6:[{host}]:{port}"
        if host != "localhost":
            return f"dns:///{host}:{port}"
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError as e:
            raise KVUnavailable(f"cannot resolve etcd endpoint {host}: {e}") from e
        return f"ipv4:{infos[0][4][0]}:{port}"

    async def close(self) -> None:
        self._closed = True
        members, self._members = self._members, []
        for member in members:
            await member.channel.close()

    async def __aenter__(self) -> EtcdKV:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- choosing a member ---------------------------------------------------

    def _order(self) -> list[_Member]:
        """The members in the order to try them: the preferred one and those
        after it that answer, then those that failed, the one that answered
        last first (a frozen member answered last when it froze)."""
        if not self._members:
            raise KVUnavailable("EtcdKV is closed" if self._closed else "EtcdKV is not open")
        n = len(self._members)
        rotated = [self._members[(self._preferred + i) % n] for i in range(n)]
        answering = [m for m in rotated if m.failed_at is None]
        failed = sorted((m for m in rotated if m.failed_at is not None), key=lambda m: -m.answered_at)
        return answering + failed

    def _answered(self, member: _Member, header: Any = None) -> None:
        member.failed_at = None
        member.answered_at = self._monotonic()
        if header is not None:
            member.member_id = int(header.member_id) or member.member_id
            member.raft_term = int(header.raft_term) or member.raft_term
        if member in self._members:
            self._preferred = self._members.index(member)

    def _failed(self, member: _Member) -> None:
        if member.failed_at is None:
            log.info("etcd member %s does not answer: moving to another", member.address)
        member.failed_at = self._monotonic()

    async def _status(self, member: _Member, limit: float) -> Any | None:
        """``member``'s status within ``limit`` seconds; None if it did not
        answer, or answered that it has no leader."""
        try:
            resp = await member.maintenance.Status(StatusRequest(), timeout=limit, metadata=_REQUIRE_LEADER)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            return None
        member.answered_at = self._monotonic()
        member.member_id = int(resp.header.member_id) or member.member_id
        return resp if int(resp.leader) else None

    async def _healthy(self, member: _Member, limit: float) -> bool:
        """Whether ``member`` can still answer a write it holds: it answers a
        status request within ``limit`` seconds, has a leader, is still in the
        leader term it was last seen in (a proposal forwarded to a leader that
        has since been replaced may never be answered), and that leader, when
        it is another of the members, answers its own status in time too (a
        follower goes on naming a frozen leader until its election timeout)."""
        term = member.raft_term
        resp = await self._status(member, limit)
        if resp is None:
            return False
        new_term = int(resp.raftTerm)
        if term and new_term > term:
            return False
        member.raft_term = new_term
        leader = int(resp.leader)
        if leader == member.member_id:
            return True
        for other in self._members:
            if other.member_id == leader:
                if await self._status(other, limit) is None:
                    self._failed(other)
                    return False
                break
        return True

    # -- calls -------------------------------------------------------------

    async def _read(
        self, what: str, call: Callable[[_Member, float], Awaitable[T]], *, revision: int = 0
    ) -> T:
        """``call(member, seconds_left)``, a call that is safe to send twice,
        until one member answers.  Each ``member_timeout`` without an answer,
        the call is also sent to the next member (the slow ones keep their
        chance, and are marked failed), round and round: a member whose first
        attempt is stuck behind a leader that froze gets a fresh one.  A member
        that answers with an error is not asked again (once more for "leader
        changed", which an election ends).  KVUnavailable when every member
        answered with an error, or time ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        order = self._order()
        budget = _ATTEMPTS_PER_MEMBER * len(order)  # bounds the load one call adds
        running: dict[asyncio.Future[T], _Member] = {}
        excluded: set[int] = set()  # ids of the members that answered with an error
        retried: set[int] = set()
        failures: list[str] = []
        turn = 0

        def launch(member: _Member | None = None) -> bool:
            nonlocal budget, turn
            if member is None:
                eligible = [m for m in order if id(m) not in excluded]
                if not eligible or budget <= 0:
                    return False
                busy = {id(m) for m in running.values()}
                idle = [m for m in eligible if id(m) not in busy]
                pool = idle or eligible
                member = pool[turn % len(pool)] if not idle else idle[0]
                turn += 1
            budget -= 1
            task = asyncio.ensure_future(call(member, max(deadline - loop.time(), 0.001)))
            running[task] = member
            return True

        try:
            launch()
            while True:
                if not running and not launch():
                    raise KVUnavailable(f"{what}: no etcd member could answer: {'; '.join(failures)}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise KVUnavailable(
                        f"{what}: no answer from etcd within {self.timeout:g}s"
                        + (f" ({'; '.join(failures)})" if failures else "")
                    )
                done, _ = await asyncio.wait(
                    running, timeout=min(self.member_timeout, remaining), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    for member in running.values():
                        self._failed(member)
                    launch()
                    continue
                for task in done:
                    if task not in running:
                        continue  # given up with its member below
                    member = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        result = task.result()
                        self._answered(member, getattr(result, "header", None))
                        return result
                    await self._raise_if_final(what, exc, revision)
                    failures.append(f"{member.address}: {_describe(exc)}")
                    if _retry_here(exc) and id(member) not in retried:
                        # An election ended the call: the member may well
                        # answer the same call at once now.
                        retried.add(id(member))
                        launch(member)
                    else:
                        # It cannot serve (no leader, unreachable): its other
                        # attempts, perhaps stuck in a proposal it accepted
                        # just before, are given up too.
                        excluded.add(id(member))
                        self._failed(member)
                        for other in [t for t, m in running.items() if m is member]:
                            del running[other]
                            other.cancel()
                            other.add_done_callback(_retrieve)
        finally:
            for task in running:
                task.cancel()
                task.add_done_callback(_retrieve)

    async def _raise_if_final(self, what: str, exc: BaseException, revision: int) -> None:
        """Raise the error a failed read ends with whatever member answers."""
        err = _rpc_error(exc)
        if err is None:
            if isinstance(exc, (KVError, EtcdError, grpc.aio.UsageError)):
                return
            raise exc  # a bug, not etcd
        details = err.details() or ""
        if _NO_SPACE in details.lower():  # a lease grant under the NOSPACE alarm
            raise KVNoSpace(f"{what}: etcd is out of space (NOSPACE alarm): {details}") from exc
        if err.code() in _REJECTED:
            if _COMPACTED_MARKER in details:
                raise KVCompacted(await self._compact_revision(revision)) from exc
            raise KVRejected(
                f"{what}: etcd refused: {err.code().name}: {details}", too_big=_too_big(details)
            ) from exc
        if _too_big(details):
            raise KVRejected(f"{what}: etcd refused: {err.code().name}: {details}", too_big=True) from exc

    async def _write(self, what: str, call: Callable[[_Member, float], Awaitable[T]]) -> T:
        """``call(member, seconds_left)`` that must not be sent twice: to the
        next member only when the previous one certainly did not apply it
        (unreachable, no leader); KVUnknownOutcome once it may have."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        failures: list[str] = []
        for member in self._order():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            task = asyncio.ensure_future(call(member, remaining))
            try:
                result: T = await self._await_member(member, task, deadline)
            except _Stalled as e:
                self._failed(member)
                raise KVUnknownOutcome(
                    f"{what}: etcd member {member.address} stopped answering ({e}); outcome unknown"
                ) from e
            except TimeoutError as e:
                raise KVUnknownOutcome(f"{what}: no answer from etcd within {self.timeout:g}s") from e
            except (EtcdError, grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
                error = self._write_error(what, e)
                if not isinstance(error, KVUnavailable) or _TOO_MANY_REQUESTS in str(error).lower():
                    raise error from e
                self._failed(member)  # not applied: the next member may take it
                failures.append(f"{member.address}: {_describe(e)}")
                continue
            self._answered(member, getattr(result, "header", None))
            return result
        if failures:
            raise KVUnavailable(f"{what}: no etcd member could take the write: {'; '.join(failures)}")
        raise KVUnavailable(f"{what}: no etcd member could take the write within {self.timeout:g}s")

    async def _await_member(self, member: _Member, task: asyncio.Future[T], deadline: float) -> T:
        """``task``'s result; every ``member_timeout`` it is still unanswered,
        ``member`` must show it is alive (``_healthy``) or the write is given up."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({task}, timeout=min(self.member_timeout, remaining))
                if done:
                    return task.result()
                probe = min(self.member_timeout, max(deadline - loop.time(), 0.001))
                if not await self._healthy(member, probe) and not task.done():
                    raise _Stalled(
                        f"no answer for {self.member_timeout:g}s, then no status within {probe:g}s, "
                        "no leader, a new leader term or a leader that does not answer"
                    )
        finally:
            if not task.done():
                task.cancel()
                task.add_done_callback(_retrieve)

    @staticmethod
    def _write_error(what: str, exc: BaseException) -> KVError:
        err = _rpc_error(exc)
        if err is None:
            return KVUnknownOutcome(f"{what}: {_describe(exc)}")
        code = err.code()
        details = err.details() or ""
        low = details.lower()
        if _NO_SPACE in low:
            return KVNoSpace(f"{what}: etcd is out of space (NOSPACE alarm): {details}")
        if code in _REJECTED or _too_big(details):
            return KVRejected(f"{what}: etcd refused: {code.name}: {details}", too_big=_too_big(details))
        if _TOO_MANY_REQUESTS in low:
            return KVUnavailable(f"{what}: {code.name}: {details}")
        if code == grpc.StatusCode.UNAVAILABLE and any(m in low for m in _NOT_SENT_MARKERS):
            return KVUnavailable(f"{what}: etcd unreachable: {details}")
        if code == grpc.StatusCode.UNAVAILABLE and _NO_LEADER in low:
            # Refused by etcd's interceptor for _REQUIRE_LEADER, before the request is handled.
            return KVUnavailable(f"{what}: etcd member has no leader: {details}")
        return KVUnknownOutcome(f"{what}: outcome unknown: {code.name}: {details}")

    async def _compact_revision(self, revision: int) -> int:
        """etcd's compact revision (the oldest readable one), learned from a
        short-lived watch at ``revision``; ``revision + 1`` if that fails."""
        if not self._members:
            return revision + 1
        member = self._order()[0]
        create = WatchCreateRequest(key=b"\x00", start_revision=max(revision, 1))

        async def requests() -> AsyncIterator[Any]:
            yield WatchRequest(create_request=create)
            await asyncio.Future()  # keep the stream open until cancelled

        call = member.watch.Watch(requests())
        try:
            async with asyncio.timeout(min(self.timeout, 3.0)):
                async for resp in call:
                    if resp.compact_revision > 0:
                        return int(resp.compact_revision)
        except (TimeoutError, grpc.aio.AioRpcError):
            pass
        finally:
            call.cancel()
        return revision + 1

    # -- KV ----------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        request = RangeRequest(key=key)
        resp = await self._read(
            "get", lambda m, left: m.kv.Range(request, timeout=left, metadata=_REQUIRE_LEADER)
        )
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
    ) -> RangeResult:
        request = RangeRequest(
            key=_from(start, end), range_end=end, revision=revision, limit=limit, keys_only=keys_only
        )
        resp = await self._read(
            "range",
            lambda m, left: m.kv.Range(request, timeout=left, metadata=_REQUIRE_LEADER),
            revision=revision,
        )
        return _range_result(resp)

    async def current_revision(self) -> int:
        request = RangeRequest(key=b"\x00", limit=1, count_only=True)
        resp = await self._read(
            "current_revision", lambda m, left: m.kv.Range(request, timeout=left, metadata=_REQUIRE_LEADER)
        )
        return int(resp.header.revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        request = TxnRequest(
            compare=[_pb_compare(c) for c in compares],
            success=[_pb_op(op) for op in success],
            failure=[_pb_op(op) for op in failure],
        )

        async def send(member: _Member, left: float) -> Any:
            return await member.kv.Txn(request, timeout=left, metadata=_REQUIRE_LEADER)

        if all(isinstance(op, Get) for op in (*success, *failure)):
            resp = await self._read("txn", send)  # it only reads: safe to send twice
        else:
            resp = await self._write("txn", send)
        revision = int(resp.header.revision)
        responses: list[RangeResult | int | None] = []
        for r in resp.responses:
            kind = r.WhichOneof("response")
            if kind == "response_range":
                responses.append(_range_result(r.response_range, revision))
            elif kind == "response_delete_range":
                responses.append(int(r.response_delete_range.deleted))
            else:
                responses.append(None)
        return TxnResult(succeeded=bool(resp.succeeded), revision=revision, responses=responses)

    # -- leases ------------------------------------------------------------
    # Lease calls are sent to another member like reads: a refresh or a revoke
    # sent twice does what it does once, and a lease granted by an attempt
    # whose answer was not waited for holds no key and expires after its TTL.

    async def grant_lease(self, ttl: int) -> int:
        request = LeaseGrantRequest(TTL=ttl)
        resp = await self._read(
            "grant_lease", lambda m, left: m.lease.LeaseGrant(request, timeout=left, metadata=_REQUIRE_LEADER)
        )
        return int(resp.ID)

    async def refresh_lease(self, lease_id: int) -> int:
        async def once(member: _Member, left: float) -> Any:
            async def requests() -> AsyncIterator[Any]:
                yield LeaseKeepAliveRequest(ID=lease_id)

            call = member.lease.LeaseKeepAlive(requests(), timeout=left, metadata=_REQUIRE_LEADER)
            try:
                async for resp in call:
                    return resp
            finally:
                call.cancel()
            raise KVUnavailable("keep-alive stream ended without an answer")

        resp = await self._read("refresh_lease", once)
        return max(0, int(resp.TTL))

    async def revoke_lease(self, lease_id: int) -> None:
        request = LeaseRevokeRequest(ID=lease_id)
        try:
            await self._read(
                "revoke_lease",
                lambda m, left: m.lease.LeaseRevoke(request, timeout=left, metadata=_REQUIRE_LEADER),
            )
        except KVError as e:
            err = _rpc_error(e)
            if err is not None and err.code() == grpc.StatusCode.NOT_FOUND:
                return  # already expired or revoked
            raise

    # -- maintenance (hareg/registry/etcd_maintenance.py) ---------------------

    async def alarms(self) -> list[Alarm]:
        request = AlarmRequest(action=AlarmRequest.GET, memberID=0, alarm=0)  # 0: every kind
        resp = await self._read(
            "alarms", lambda m, left: m.maintenance.Alarm(request, timeout=left, metadata=_REQUIRE_LEADER)
        )
        kinds = _ALARM_TYPE.values_by_number
        return [
            Alarm(int(a.memberID), kinds[a.alarm].name if a.alarm in kinds else str(a.alarm))
            for a in resp.alarms
        ]

    async def disarm(self, alarm: Alarm) -> None:
        request = AlarmRequest(
            action=AlarmRequest.DEACTIVATE,
            memberID=alarm.member_id,
            alarm=_ALARM_TYPE.values_by_name[alarm.kind].number,
        )
        await self._read(  # deactivating twice does what it does once
            "disarm", lambda m, left: m.maintenance.Alarm(request, timeout=left, metadata=_REQUIRE_LEADER)
        )

    async def member_statuses(self) -> list[MemberStatus]:
        async def one(member: _Member) -> MemberStatus | None:
            try:
                resp = await member.maintenance.Status(StatusRequest(), timeout=self.timeout)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError):
                return None
            return MemberStatus(
                address=member.address,
                member_id=int(resp.header.member_id),
                leader_id=int(resp.leader),
                db_size=int(resp.dbSize),
                db_size_in_use=int(resp.dbSizeInUse),
                db_size_quota=int(resp.dbSizeQuota),
            )

        found = await asyncio.gather(*(one(m) for m in self._order()))
        return [s for s in found if s is not None]

    async def compact(self, revision: int) -> None:
        request = CompactionRequest(revision=revision, physical=True)
        try:  # compacting twice at one revision does what it does once
            await self._read("compact", lambda m, left: m.kv.Compact(request, timeout=left))
        except KVCompacted:
            return  # compacted at or past it already

    async def defragment(self, address: str, timeout: float) -> None:  # noqa: ASYNC109
        member = next((m for m in self._members if m.address == address), None)
        if member is None:
            raise KVError(f"defragment: no etcd member {address}")
        # It answers nothing while it rewrites its file: calls (and the watch)
        # go to the other members meanwhile, as for a member that stopped answering.
        member.failed_at = self._monotonic()
        try:
            await member.maintenance.Defragment(DefragmentRequest(), timeout=timeout)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
            raise KVUnavailable(f"defragment {address}: {_describe(e)}") from e
        member.failed_at = None

    async def server_version(self) -> str:
        """The etcd version of the member answering (e.g. ``"3.4.23"``)."""
        resp = await self._read("status", lambda m, left: m.maintenance.Status(StatusRequest(), timeout=left))
        return str(resp.version)

    # -- watch -------------------------------------------------------------

    def request_watch_progress(self) -> None:
        # Only where etcd orders requested progress reports after pending events:
        # before the fix for etcd#15220 (and #17507) a report could overtake
        # events, and a cache would claim to be current while missing them.
        if not self._progress_requests_safe:
            return
        for queue in self._progress_queues:
            if queue.empty():  # one pending request per stream is enough
                queue.put_nowait(None)

    async def _guard(self, member: _Member, call: Any, moved: list[bool]) -> None:
        """Watch over the member a watch stream is on: once it is seen failing
        (by any call) or fails a status check, end the stream so that the
        watch resumes on another member."""
        while True:
            await asyncio.sleep(self.member_timeout)
            if member.failed_at is None and self._monotonic() - member.answered_at < self.member_timeout:
                continue  # answered just now
            if member.failed_at is None and await self._status(member, self.member_timeout) is not None:
                continue
            self._failed(member)
            moved[0] = True
            call.cancel()
            return

    async def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Events in ``[start, end)`` from ``start_revision`` on.

        Resumes after disconnects from the revision after the last one
        delivered, on another member when its own stops answering; raises
        KVCompacted when that revision is compacted away.  Progress
        notifications (sent by etcd every
        ``--experimental-watch-progress-notify-interval`` while the range is
        idle) arrive as batches with no events.  ``start_revision`` 0 means
        "from now"; pass an explicit revision for gap-free resumption."""
        next_revision = start_revision
        backoff = self._watch_backoff
        while True:
            if self._closed or not self._members:
                raise KVUnavailable("EtcdKV is closed" if self._closed else "EtcdKV is not open")
            member = self._order()[0]
            create = WatchCreateRequest(
                key=_from(start, end), range_end=end, start_revision=next_revision, progress_notify=True
            )

            if self._server_version is None:
                # Once per client: a reconnect after a failover must not wait on it.
                with contextlib.suppress(KVError):
                    self._server_version = await self.server_version()
                    self._progress_requests_safe = progress_requests_safe(self._server_version)
            progress: asyncio.Queue[None] = asyncio.Queue(maxsize=1)

            async def requests(
                create: Any = create, progress: asyncio.Queue[None] = progress
            ) -> AsyncIterator[Any]:
                yield WatchRequest(create_request=create)
                while True:  # the stream stays open until cancelled
                    await progress.get()
                    yield WatchRequest(progress_request={})

            self._progress_queues.add(progress)
            call = member.watch.Watch(requests(), metadata=_REQUIRE_LEADER)
            moved = [False]
            # With one member there is nowhere else to go: etcd's keepalive
            # and its "no leader" cancellation end the stream.
            guard = (
                asyncio.get_running_loop().create_task(self._guard(member, call, moved))
                if len(self._members) > 1
                else None
            )
            try:
                async for resp in call:
                    backoff = self._watch_backoff
                    if resp.compact_revision > 0:
                        raise KVCompacted(int(resp.compact_revision))
                    if resp.canceled:
                        raise KVError(f"watch cancelled by etcd: {resp.cancel_reason or 'no reason given'}")
                    self._answered(member, resp.header if resp.HasField("header") else None)
                    if resp.created:
                        if next_revision == 0:
                            next_revision = int(resp.header.revision) + 1
                        continue
                    if resp.events:
                        events = [
                            Event(EventType.DELETE if ev.type == _PB_DELETE else EventType.PUT, _kv(ev.kv))
                            for ev in resp.events
                        ]
                        # Not header.revision: a catch-up batch is stamped with
                        # the store's current revision even when more events
                        # below it are still to come.
                        last = events[-1].kv.mod_revision
                        next_revision = last + 1
                        yield WatchBatch(events=events, revision=last)
                    else:
                        revision = int(resp.header.revision)
                        if revision >= next_revision - 1:
                            next_revision = revision + 1
                            yield WatchBatch(events=[], revision=revision)
                # A clean end of stream (the member shut down): reconnect.
            except asyncio.CancelledError:
                # The guard cancelled the stream (the task itself was not):
                # resume on another member at once.
                current = asyncio.current_task()
                if not moved[0] or (current is not None and current.cancelling()):
                    raise
                log.info("etcd watch moved off member %s", member.address)
                continue
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
                if self._closed:
                    raise KVUnavailable("EtcdKV closed while watching") from e
                err = _rpc_error(e)
                if err is not None and err.code() in _REJECTED:
                    raise KVError(f"watch refused: {err.code().name}: {err.details()}") from e
                if moved[0]:
                    continue
                self._failed(member)
            finally:
                if guard is not None:
                    guard.cancel()
                    guard.add_done_callback(_retrieve)
                self._progress_queues.discard(progress)
                call.cancel()
            if self._closed:
                raise KVUnavailable("EtcdKV closed while watching")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._watch_max_backoff)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned attempt's outcome as seen (no "never retrieved" warning)."""
    if not task.cancelled():
        task.exception()


def _retry_here(exc: BaseException) -> bool:
    """The call ended because the member's leader changed under it."""
    err = _rpc_error(exc)
    return err is not None and _LEADER_CHANGED in (err.details() or "").lower()


def progress_requests_safe(version: str) -> bool:
    """Whether this etcd version answers WatchProgressRequest in order with the
    events of the stream (fixed in 3.4.31 and 3.5.13, the versions Kubernetes
    requires for consistent reads from its watch cache)."""
    parts = version.split("-", 1)[0].split(".")
    try:
        major, minor, patch = (int(p) for p in [*parts, "0", "0"][:3])
    except ValueError:
        return False
    if (major, minor) == (3, 4):
        return patch >= 31
    if (major, minor) == (3, 5):
        return patch >= 13
    return (major, minor) > (3, 5)


def _read_file(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


if TYPE_CHECKING:

    def _conforms(kv: EtcdKV) -> KV:  # mypy checks EtcdKV against the protocol
        return kv

    def _maintains(kv: EtcdKV) -> Maintenance:
        return kv
