"""The KV interface on a real etcd cluster, through etcd3aio's gRPC stubs.

Error mapping (see the contract in :mod:`hareg.kv.base`):

* Reads (range, get, current_revision) are retried by etcd3aio on
  UNAVAILABLE / DEADLINE_EXCEEDED within one overall ``timeout``; any
  transport failure or timeout then becomes ``KVUnavailable`` (a read applies
  nothing).  A read at a compacted revision becomes ``KVCompacted``.
* Writes (txn, lease grant, refresh and revoke) are sent exactly once
  (``max_attempts=1``).  ``KVUnavailable`` only when the request certainly
  never reached etcd or etcd certainly refused it before proposing it (the
  channel could not connect, "too many requests"); a timeout, a lost
  connection, a leader change or any other ambiguous failure after sending is
  ``KVUnknownOutcome``.
* A request etcd rejects as invalid (too many ops, request too large, duplicate
  key in a txn, lease not found on a put, permission denied) was not applied
  and retrying does not help: plain ``KVError`` with etcd's message.

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
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]
import grpc.aio  # type: ignore[import-untyped]
from etcd3aio._protobuf import (
    Compare as PbCompare,
)
from etcd3aio._protobuf import (
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    WatchCreateRequest,
    WatchRequest,
    WatchStub,
)
from etcd3aio.errors import EtcdError
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.maintenance import MaintenanceService

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
    KVRejected,
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

__all__ = ["EtcdKV", "parse_endpoints"]

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

# etcd's interceptor cancels a watch stream with "no leader" when the member
# it is connected to loses its leader, so the watch reconnects elsewhere
# instead of hanging on a partitioned member.
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


class EtcdKV:
    """:class:`hareg.kv.base.KV` on etcd v3.

    ``endpoints`` are ``host:port`` or ``http(s)://host:port`` strings; with
    several, requests are balanced round-robin and a failed member is skipped.
    Host names are resolved once, at connect.  TLS is used with ``https://``
    endpoints or when ``ca_file`` is given; ``cert_file``/``key_file`` add a
    client certificate.  Every call is bounded by ``timeout`` seconds.

    Use ``await EtcdKV.connect(...)`` (or ``async with EtcdKV(...)``).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        tls_server_name: str | None = None,
        read_attempts: int = 3,
        watch_backoff: float = 0.1,
        watch_max_backoff: float = 2.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        self.endpoints, https = parse_endpoints(endpoints)
        self.timeout = timeout
        self._tls = https or ca_file is not None or cert_file is not None
        self._ca_file = ca_file
        self._cert_file = cert_file
        self._key_file = key_file
        self._tls_server_name = tls_server_name
        self._read_attempts = read_attempts
        self._watch_backoff = watch_backoff
        self._watch_max_backoff = watch_max_backoff
        self._channel: Any = None
        self._kv: KVService | None = None
        self._lease: LeaseService | None = None
        self._maintenance: MaintenanceService | None = None
        self._watch_stub: Any = None
        self._closed = False
        # One queue per open watch stream; request_watch_progress() feeds them.
        self._progress_queues: set[asyncio.Queue[None]] = set()
        self._progress_requests_safe = False  # learned from the server version when a watch starts

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 (the per-call timeout of the client)
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
        """Create the gRPC channel (it connects lazily, on the first call)."""
        if self._closed:
            raise KVError("EtcdKV is closed")
        if self._channel is not None:
            return
        target, name_override = await self._target()
        options: list[tuple[str, Any]] = [
            ("grpc.lb_policy_name", "round_robin"),
            # Pings every 5 s (etcd's default --grpc-keepalive-min-time; faster ones
            # are refused) unanswered for 2 s take a frozen member out of the
            # round-robin, so later requests go to live members.
            ("grpc.keepalive_time_ms", 5_000),
            ("grpc.keepalive_timeout_ms", 2_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.enable_retries", 1),  # transparent retries only: never after the server saw a call
            # etcd enforces its own request limit (--max-request-bytes); large
            # ranges (manifests are up to 4 MiB) must not hit gRPC's 4 MiB default.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self._tls:
            server_name = self._tls_server_name or name_override
            if server_name is not None:
                options.append(("grpc.ssl_target_name_override", server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(self._ca_file),
                private_key=_read_file(self._key_file),
                certificate_chain=_read_file(self._cert_file),
            )
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._kv = KVService(self._channel, max_attempts=self._read_attempts)
        self._lease = LeaseService(self._channel, max_attempts=self._read_attempts)
        self._maintenance = MaintenanceService(self._channel, max_attempts=self._read_attempts)
        self._watch_stub = WatchStub(self._channel)

    async def _target(self) -> tuple[str, str | None]:
        """The gRPC target, and the host name to verify TLS against when
        names were resolved here."""
        hosts = [h for h, _ in self.endpoints]
        if len(self.endpoints) == 1 and _ip_version(hosts[0]) is None and hosts[0] != "localhost":
            host, port = self.endpoints[0]
            return f"dns:///{host}:{port}", None  # gRPC re-resolves the name itself
        loop = asyncio.get_running_loop()
        resolved: list[tuple[str, int]] = []
        for host, port in self.endpoints:
            if _ip_version(host) is not None:
                resolved.append((host, port))
                continue
            try:
                infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
            except OSError as e:
                raise KVUnavailable(f"cannot resolve etcd endpoint {host}: {e}") from e
            resolved.append((str(infos[0][4][0]), port))
        versions = {_ip_version(h) for h, _ in resolved}
        if versions == {6}:
            target = "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in resolved)
        elif versions == {4}:
            target = "ipv4:" + ",".join(f"{h}:{p}" for h, p in resolved)
        else:
            raise ValueError("etcd endpoints mix IPv4 and IPv6 addresses")
        names = [h for h in hosts if _ip_version(h) is None]
        return target, (names[0] if names else None)

    async def close(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        self._kv = self._lease = self._maintenance = self._watch_stub = None
        if channel is not None:
            await channel.close()

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

    def _services(self) -> tuple[KVService, LeaseService]:
        if self._kv is None or self._lease is None:
            raise KVUnavailable("EtcdKV is closed" if self._closed else "EtcdKV is not open")
        return self._kv, self._lease

    # -- error mapping -----------------------------------------------------

    async def _read(self, what: str, call: Callable[[], Awaitable[T]], *, revision: int = 0) -> T:
        try:
            # etcd3aio bounds each attempt and the retry loop by the same
            # timeout; the outer one is a safety net.
            async with asyncio.timeout(self.timeout + 1.0):
                return await call()
        except TimeoutError as e:
            raise KVUnavailable(f"{what}: no answer from etcd within {self.timeout:g}s") from e
        except (EtcdError, grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
            err = _rpc_error(e)
            if err is not None and err.code() in _REJECTED:
                details = err.details() or ""
                if _COMPACTED_MARKER in details:
                    raise KVCompacted(await self._compact_revision(revision)) from e
                raise KVRejected(
                    f"{what}: etcd refused: {err.code().name}: {details}", too_big=_too_big(details)
                ) from e
            if err is not None and _too_big(err.details() or ""):
                raise KVRejected(
                    f"{what}: etcd refused: {err.code().name}: {err.details()}", too_big=True
                ) from e
            raise KVUnavailable(f"{what}: {_describe(e)}") from e

    async def _write(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout + 1.0):
                return await call()
        except TimeoutError as e:
            raise KVUnknownOutcome(f"{what}: no answer from etcd within {self.timeout:g}s") from e
        except (EtcdError, grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
            raise self._write_error(what, e) from e

    @staticmethod
    def _write_error(what: str, exc: BaseException) -> KVError:
        err = _rpc_error(exc)
        if err is None:
            return KVUnknownOutcome(f"{what}: {_describe(exc)}")
        code = err.code()
        details = err.details() or ""
        low = details.lower()
        if code in _REJECTED or _too_big(details):
            return KVRejected(f"{what}: etcd refused: {code.name}: {details}", too_big=_too_big(details))
        if _TOO_MANY_REQUESTS in low:
            return KVUnavailable(f"{what}: {code.name}: {details}")
        if code == grpc.StatusCode.UNAVAILABLE and any(m in low for m in _NOT_SENT_MARKERS):
            return KVUnavailable(f"{what}: etcd unreachable: {details}")
        return KVUnknownOutcome(f"{what}: outcome unknown: {code.name}: {details}")

    async def _compact_revision(self, revision: int) -> int:
        """etcd's compact revision (the oldest readable one), learned from a
        short-lived watch at ``revision``; ``revision + 1`` if that fails."""
        stub = self._watch_stub
        if stub is None:
            return revision + 1
        create = WatchCreateRequest(key=b"\x00", start_revision=max(revision, 1))

        async def requests() -> AsyncIterator[Any]:
            yield WatchRequest(create_request=create)
            await asyncio.Future()  # keep the stream open until cancelled

        call = stub.Watch(requests())
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
        kv, _ = self._services()
        resp = await self._read("get", lambda: kv.get(key, timeout=self.timeout))
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
        kv, _ = self._services()
        resp = await self._read(
            "range",
            lambda: kv.get(
                _from(start, end),
                range_end=end,
                revision=revision,
                limit=limit,
                keys_only=keys_only,
                timeout=self.timeout,
            ),
            revision=revision,
        )
        return _range_result(resp)

    async def current_revision(self) -> int:
        kv, _ = self._services()
        resp = await self._read(
            "current_revision", lambda: kv.get(b"\x00", limit=1, count_only=True, timeout=self.timeout)
        )
        return int(resp.header.revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        kv, _ = self._services()
        pb_compares = [_pb_compare(c) for c in compares]
        pb_success = [_pb_op(op) for op in success]
        pb_failure = [_pb_op(op) for op in failure]
        resp = await self._write(
            "txn",
            lambda: kv.txn(pb_compares, pb_success, pb_failure, timeout=self.timeout, max_attempts=1),
        )
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

    async def grant_lease(self, ttl: int) -> int:
        _, lease = self._services()
        resp = await self._write(
            "grant_lease", lambda: lease.grant(ttl, timeout=self.timeout, max_attempts=1)
        )
        return int(resp.ID)

    async def refresh_lease(self, lease_id: int) -> int:
        _, lease = self._services()

        async def once() -> int:
            call = lease.keep_alive(lease_id)
            try:
                async for resp in call:
                    return max(0, int(resp.TTL))
            finally:
                call.cancel()
            raise KVUnknownOutcome("refresh_lease: keep-alive stream ended without an answer")

        return await self._write("refresh_lease", once)

    async def revoke_lease(self, lease_id: int) -> None:
        _, lease = self._services()
        try:
            await self._write(
                "revoke_lease", lambda: lease.revoke(lease_id, timeout=self.timeout, max_attempts=1)
            )
        except KVError as e:
            err = _rpc_error(e)
            if err is not None and err.code() == grpc.StatusCode.NOT_FOUND:
                return  # already expired or revoked
            raise

    async def server_version(self) -> str:
        """The etcd version of the member answering (e.g. ``"3.4.23"``)."""
        m = self._maintenance
        if m is None:
            raise KVUnavailable("EtcdKV is closed" if self._closed else "EtcdKV is not open")
        resp = await self._read("status", lambda: m.status(timeout=self.timeout))
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

    async def watch(self, start: bytes, end: bytes, start_revision: int) -> AsyncIterator[WatchBatch]:
        """Events in ``[start, end)`` from ``start_revision`` on.

        Resumes after disconnects from the revision after the last one
        delivered; raises KVCompacted when that revision is compacted away.
        Progress notifications (sent by etcd every
        ``--experimental-watch-progress-notify-interval`` while the range is
        idle) arrive as batches with no events.  ``start_revision`` 0 means
        "from now"; pass an explicit revision for gap-free resumption."""
        next_revision = start_revision
        backoff = self._watch_backoff
        while True:
            stub = self._watch_stub
            if stub is None:
                raise KVUnavailable("EtcdKV is closed" if self._closed else "EtcdKV is not open")
            create = WatchCreateRequest(
                key=_from(start, end), range_end=end, start_revision=next_revision, progress_notify=True
            )

            if not self._progress_requests_safe:
                with contextlib.suppress(KVError):
                    self._progress_requests_safe = progress_requests_safe(await self.server_version())
            progress: asyncio.Queue[None] = asyncio.Queue(maxsize=1)

            async def requests(
                create: Any = create, progress: asyncio.Queue[None] = progress
            ) -> AsyncIterator[Any]:
                yield WatchRequest(create_request=create)
                while True:  # the stream stays open until cancelled
                    await progress.get()
                    yield WatchRequest(progress_request={})

            self._progress_queues.add(progress)
            call = stub.Watch(requests(), metadata=_REQUIRE_LEADER)
            try:
                async for resp in call:
                    backoff = self._watch_backoff
                    if resp.compact_revision > 0:
                        raise KVCompacted(int(resp.compact_revision))
                    if resp.canceled:
                        raise KVError(f"watch cancelled by etcd: {resp.cancel_reason or 'no reason given'}")
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
            except (grpc.aio.AioRpcError, grpc.aio.UsageError) as e:
                if self._closed:
                    raise KVUnavailable("EtcdKV closed while watching") from e
                err = _rpc_error(e)
                if err is not None and err.code() in _REJECTED:
                    raise KVError(f"watch refused: {err.code().name}: {err.details()}") from e
            finally:
                self._progress_queues.discard(progress)
                call.cancel()
            if self._closed:
                raise KVUnavailable("EtcdKV closed while watching")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._watch_max_backoff)


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
