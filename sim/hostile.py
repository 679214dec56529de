"""Hostile clients: requests that race, stall, replay, lie about ranges and hang up.

A few clients (``HOSTILE_CLIENTS``) run beside the well-behaved ones, each
looping over the behaviours in ``BEHAVIOURS``.  They call the same service
methods the HTTP handlers call, through the same load balancer, and every
request is an operation in the history (marked ``detail["hostile"]``), so the
commit-time checkers see what they cause like anything else (a blob committed
with bytes that do not hash to its digest is invariant 3 of docs/invariants.md at the commit).

Each answer is judged as it arrives:

* a refusal must carry an error code that fits the request (``REFUSALS``: a
  stale upload URL is ``BLOB_UPLOAD_UNKNOWN``, a Content-Range that overlaps
  or leaves a gap is ``416 BLOB_UPLOAD_INVALID``); a read-only refusal and a
  5xx for a fault are always allowed, but not a 503 that is a storage
  Protocol answer (``UploadNotFound`` and the like) passed off as an outage;
* an acknowledgement must be consistent with what the client knows: the
  client tracks the bytes it was told are staged (while every answer was
  definite), so an upload's size after a refused PATCH, and a closing PUT
  with the digest of exactly the acknowledged bytes, are checked; a replay on
  an upload whose session was gone (finished, cancelled or expired: the
  client asks the etcd model, as the checkers do) must be refused; a blob
  acknowledged by a closing PUT is read back and hashed.

What no correct registry does is reported as invariant ``hostile`` (or 3 for
wrong bytes served); an exception no handler maps is ``internal`` (``Env``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hareg.registry.errors import ErrorCode
from hareg.registry.service import Registry
from sim import history as h
from sim.history import Operation, Outcome
from sim.workload import Client, Env, Http, Response, get_blob, sha256

# behaviour -> what the client does (the CLI and the run summary use these names)
BEHAVIOURS: dict[str, str] = {
    "slow_patch": "a PATCH whose body arrives slowly, raced by the closing PUT of the same upload",
    "patch_race": "two PATCHes of one upload at once through different replicas",
    "double_put": "the closing PUT sent twice (at once, or again after its answer)",
    "stale_finished": "PATCH, PUT, GET and DELETE replayed on the URL of a finished upload",
    "stale_cancelled": "PATCH, PUT, GET and DELETE replayed on the URL of a cancelled upload",
    "stale_expired": "PATCH, PUT, GET and DELETE replayed on the URL of an expired upload",
    "bad_range": "a PATCH or closing PUT whose Content-Range overlaps the staged bytes or leaves a gap",
    "disconnect": "a PATCH or closing PUT whose client hangs up mid-body, then resumes",
    "resend": "a PATCH or closing PUT whose client hangs up mid-body, then sent again as it was",
    "mount_delete": "a cross-repository mount while the source repository's link is being deleted",
    "wrong_digest": "a closing PUT naming a digest its bytes do not hash to (other bytes', or a pushed blob's)",
}
WEIGHTS: tuple[tuple[str, float], ...] = (
    ("slow_patch", 4),
    ("patch_race", 2),
    ("double_put", 2),
    ("stale_finished", 1),
    ("stale_cancelled", 1),
    ("stale_expired", 0.5),
    ("bad_range", 2),
    ("disconnect", 2),
    ("resend", 2),
    ("mount_delete", 1.5),
    ("wrong_digest", 1.5),
)
HOSTILE_CLIENTS = 3
UPLOAD_SESSION_TTL = 8  # seconds: upload sessions expire within a run (Replica(upload_session_ttl=...))

# Kinds of the requests only hostile clients make (the closing PUT is h.BLOB_UPLOAD).
UPLOAD_START = "upload_start"
UPLOAD_PATCH = "upload_patch"
UPLOAD_STATUS = "upload_status"
UPLOAD_CANCEL = "upload_cancel"
BLOB_GET = "blob_get"

# What each request may be refused with (besides a read-only refusal and 5xx).
LIMITS = frozenset({ErrorCode.TOOMANYREQUESTS.name})  # a bound on sessions or sizes
UPLOAD_REFUSALS = LIMITS | {
    ErrorCode.BLOB_UPLOAD_UNKNOWN.name,
    ErrorCode.BLOB_UPLOAD_INVALID.name,
    ErrorCode.DIGEST_INVALID.name,
    ErrorCode.SIZE_INVALID.name,
}
GONE = frozenset({ErrorCode.BLOB_UPLOAD_UNKNOWN.name})  # a stale upload URL
BAD_RANGE = frozenset({ErrorCode.BLOB_UPLOAD_INVALID.name, ErrorCode.BLOB_UPLOAD_UNKNOWN.name})
DELETE_REFUSALS = frozenset({ErrorCode.BLOB_UNKNOWN.name, ErrorCode.DENIED.name})
READ_REFUSALS = frozenset({ErrorCode.BLOB_UNKNOWN.name})
# Storage Protocol answers that mean "not there" or "not at this offset": a
# registry that lets one through as a 503 invites a retry that cannot succeed.
PROTOCOL_ANSWERS = ("UploadNotFound", "UploadOffsetMismatch", "BlobNotFound")


class _Disconnected:
    """The handler's result when the client hung up mid-body (no response is sent)."""


DISCONNECTED = _Disconnected()


class Body:
    """A request body as a client sends it: pieces over virtual time, ``gap``
    seconds apart.

    With ``hold``, the last piece waits for ``release()`` and arrives ``after``
    seconds after it: a client that feeds a PATCH slowly and closes the upload
    meanwhile.  After ``hang_up_after`` pieces the client disconnects: the
    server's read raises ``ConnectionResetError``, as aiohttp's does."""

    def __init__(
        self,
        parts: list[bytes],
        *,
        gap: float = 0.0,
        hold: bool = False,
        after: float = 0.0,
        hang_up_after: int | None = None,
    ) -> None:
        self.parts = parts
        self.gap = gap
        self.hold = asyncio.Event() if hold else None
        self.after = after
        self.hang_up_after = hang_up_after
        self.started = asyncio.Event()  # the server began reading the body
        self.disconnected = False
        self.sent = 0  # bytes the server read before a hang-up
        self._released = 0.0

    def release(self) -> None:
        """Let the last piece go (``after`` seconds from now)."""
        if self.hold is not None and not self.hold.is_set():
            self._released = asyncio.get_running_loop().time()
            self.hold.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started.set()
        for i, part in enumerate(self.parts):
            if i == self.hang_up_after:
                self.disconnected = True
                raise ConnectionResetError("Connection lost")
            if i and self.gap:
                await asyncio.sleep(self.gap)
            if self.hold is not None and i == len(self.parts) - 1:
                await self.hold.wait()
                loop = asyncio.get_running_loop()
                await asyncio.sleep(max(0.0, self._released + self.after - loop.time()))
            self.sent += len(part)
            yield part


@dataclass(slots=True)
class Upload:
    """An upload session as its client knows it."""

    repo: str
    id: str
    staged: bytes = b""  # the bytes the registry acknowledged, in order
    certain: bool = True  # every answer so far was definite (ok or refused)


@dataclass(slots=True)
class HostileLog:
    """What the hostile clients did, by behaviour (the run summary prints it)."""

    counts: dict[str, int] = field(default_factory=dict)

    def count(self, behaviour: str) -> None:
        self.counts[behaviour] = self.counts.get(behaviour, 0) + 1


def split(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    """``data`` cut into at most ``pieces`` non-empty parts."""
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, pieces - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class HostileClient(Client):
    """A client that does what the protocol allows a client to do, at the worst moment."""

    def __init__(
        self,
        name: str,
        env: Env,
        rng: random.Random,
        *,
        think: float,
        log: HostileLog,
        session_alive: Callable[[str], bool],
    ) -> None:
        super().__init__(name, env, rng, think=think)
        self.log = log
        # Whether an upload's session record is in etcd right now (the model's own state).
        self.session_alive = session_alive
        self.behaviour = ""
        self._hostile_ops = [b for b, _ in WEIGHTS]
        self._hostile_weights = [w for _, w in WEIGHTS]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.rng.expovariate(1.0 / self.think))
            if stop.is_set():
                return
            self.behaviour = self.rng.choices(self._hostile_ops, self._hostile_weights)[0]
            self.log.count(self.behaviour)
            await getattr(self, self.behaviour)()

    # -- plumbing ------------------------------------------------------------------------

    def _other(self, index: int) -> int:
        """A replica other than ``index``."""
        n = len(self.env.replicas)
        return (index + 1 + self.rng.randrange(n - 1)) % n if n > 1 else index

    def _flag(self, op: Operation, message: str, invariant: str = "hostile") -> None:
        self.env.anomaly(invariant, op, f"{self.behaviour}: {message}")

    async def _send(
        self,
        kind: str,
        repo: str,
        handler: Callable[[Registry], Awaitable[Any]],
        http: Http,
        *,
        allowed: frozenset[str],
        replica: int | None = None,
        digest: str | None = None,
        body: Body | None = None,
    ) -> tuple[Operation, Response]:
        """One request on one replica (no failover), judged: a refusal must be one
        of ``allowed``; a 503 must not be a storage Protocol answer."""
        index = self._replica() if replica is None else replica
        op = self.history.invoke(self.name, kind, repo, self.env.replicas[index].name, digest=digest)
        op.detail["hostile"] = self.behaviour

        async def run(reg: Registry) -> Any:
            try:
                return await handler(reg)
            except ConnectionResetError:
                # The HTTP layer lets a client's hang-up through (no response);
                # any other reset is the registry's own failure (a 500).
                if body is not None and body.disconnected:
                    return DISCONNECTED
                raise

        resp = await self.env.call(self.name, run, start=index, http=http, op=op, failover=False)
        if resp.outcome is Outcome.OK and resp.value is DISCONNECTED:
            resp = Response(Outcome.UNKNOWN, error="client hung up mid-body", replica=resp.replica)
        op.replica = resp.replica or op.replica
        found = None
        if kind == h.BLOB_MOUNT and resp.outcome is Outcome.OK:
            found = resp.value is not None
        elif kind == h.BLOB_DELETE:
            found = True if resp.outcome is Outcome.OK else None
        self._complete(op, resp, found=found)
        if resp.outcome is Outcome.FAIL and resp.code and resp.code not in allowed:
            if op.detail.get("read_only") != "refused":
                self._flag(
                    op, f"{kind} refused with {resp.error}; expected one of {', '.join(sorted(allowed))}"
                )
        elif resp.outcome is Outcome.UNKNOWN and resp.error.removeprefix("5xx ") in PROTOCOL_ANSWERS:
            self._flag(op, f"{kind} answered 503 for the storage answer {resp.error[4:]}, not an outage")
        return op, resp

    async def _on_upload(
        self,
        kind: str,
        method: str,
        up: Upload,
        handler: Callable[[Registry], Awaitable[Any]],
        *,
        allowed: frozenset[str],
        replica: int | None = None,
        digest: str | None = None,
        body: Body | None = None,
    ) -> tuple[Operation, Response]:
        """One request on an open upload's URL (``_send`` on ``/v2/REPO/blobs/uploads/ID``)."""
        return await self._send(
            kind,
            up.repo,
            handler,
            (method, f"/v2/{up.repo}/blobs/uploads/{up.id}"),
            allowed=allowed,
            replica=replica,
            digest=digest,
            body=body,
        )

    async def _start(self, repo: str) -> Upload | None:
        _, resp = await self._send(
            UPLOAD_START,
            repo,
            lambda reg: reg.uploads.start(repo),
            ("POST", f"/v2/{repo}/blobs/uploads/"),
            allowed=LIMITS,
        )
        return Upload(repo, resp.value.upload_id) if resp.outcome is Outcome.OK else None

    async def _patch(
        self,
        up: Upload,
        data: bytes,
        *,
        start: int | None,
        replica: int | None = None,
        body: Body | None = None,
        allowed: frozenset[str] = UPLOAD_REFUSALS,
    ) -> tuple[Operation, Response]:
        """A PATCH (``start``: its Content-Range's first byte, None without one)."""
        chunks = (body or Body([data])).chunks
        return await self._on_upload(
            UPLOAD_PATCH,
            "PATCH",
            up,
            lambda reg: reg.uploads.write(up.repo, up.id, chunks(), start=start, length=len(data)),
            allowed=allowed,
            replica=replica,
            body=body,
        )

    async def _finish(
        self,
        up: Upload,
        digest: str,
        last: bytes | None = None,
        *,
        start: int | None = None,
        replica: int | None = None,
        body: Body | None = None,
        allowed: frozenset[str] = UPLOAD_REFUSALS,
    ) -> tuple[Operation, Response]:
        """The closing PUT ?digest=, with an optional last chunk."""
        chunks = None if last is None else (body or Body([last])).chunks()
        length = None if last is None else len(last)
        return await self._on_upload(
            h.BLOB_UPLOAD,
            "PUT",
            up,
            lambda reg: reg.uploads.finish(up.repo, up.id, digest, chunks, start=start, length=length),
            allowed=allowed,
            replica=replica,
            digest=digest,
            body=body,
        )

    async def _status(self, up: Upload, *, allowed: frozenset[str] = GONE) -> tuple[Operation, Response]:
        return await self._on_upload(
            UPLOAD_STATUS, "GET", up, lambda reg: reg.uploads.status(up.repo, up.id), allowed=allowed
        )

    async def _cancel(self, up: Upload, *, allowed: frozenset[str] = GONE) -> tuple[Operation, Response]:
        return await self._on_upload(
            UPLOAD_CANCEL, "DELETE", up, lambda reg: reg.uploads.cancel(up.repo, up.id), allowed=allowed
        )

    async def _open(self, *, first: float = 1.0) -> Upload | None:
        """POST, then (with probability ``first``) a first PATCH that must succeed."""
        up = await self._start(self._repo())
        if up is None:
            return None
        if self.rng.random() < first:
            data = self._random_bytes(1, 1024)
            _, resp = await self._patch(up, data, start=0 if self.rng.random() < 0.7 else None)
            if resp.outcome is not Outcome.OK:
                return None
            up.staged = data
        return up

    def _account(self, up: Upload, resp: Response, data: bytes) -> None:
        """A PATCH's answer: acknowledged bytes are staged, unknown ones make the client unsure."""
        if resp.outcome is Outcome.OK:
            up.staged += data
        elif resp.outcome is Outcome.UNKNOWN:
            up.certain = False

    async def _check_size(self, up: Upload, why: str) -> None:
        """While every answer was definite, the upload holds exactly the acknowledged bytes."""
        if not up.certain:
            return
        op, resp = await self._status(up, allowed=GONE)
        if resp.outcome is Outcome.OK and resp.value.size != len(up.staged):
            self._flag(
                op, f"after {why} the upload has {resp.value.size} bytes; {len(up.staged)} were acknowledged"
            )

    async def _close(self, up: Upload) -> None:
        """The closing PUT with the digest of the acknowledged bytes (sometimes
        with one last chunk); refused with DIGEST_INVALID while the client was
        sure of every answer, the registry staged something else."""
        last = self._random_bytes(1, 512) if self.rng.random() < 0.3 else None
        content = up.staged + (last or b"")
        if not content:
            return
        digest = sha256(content)
        certain = up.certain
        op, resp = await self._finish(up, digest, last, start=len(up.staged) if last else None)
        if certain and resp.code == ErrorCode.DIGEST_INVALID.name:
            self._flag(
                op, f"the digest of the {len(content)} acknowledged bytes refused: the upload holds others"
            )
        if resp.outcome is Outcome.OK:
            await self._read_back(up.repo, digest)

    async def _read_back(self, repo: str, digest: str, expected: bytes | None = None) -> None:
        """GET the blob an acknowledged request stored: its bytes hash to its digest (3)."""

        async def read(reg: Registry) -> tuple[bytes, int]:
            return await get_blob(reg, repo, digest)

        op, resp = await self._send(
            BLOB_GET, repo, read, ("GET", f"/v2/{repo}/blobs/{digest}"), allowed=READ_REFUSALS, digest=digest
        )
        if resp.outcome is not Outcome.OK:
            return
        data, size = resp.value
        if sha256(data) != digest:
            self._flag(
                op, f"blob {digest[7:19]} served with {len(data)} bytes hashing to {sha256(data)[7:19]}", "3"
            )
        elif len(data) != size:
            self._flag(op, f"blob {digest[7:19]} has {len(data)} bytes, its link says {size}", "3")
        elif expected is not None and data != expected:
            self._flag(op, f"blob {digest[7:19]} bytes differ from the ones pushed", "1")

    # -- behaviours ------------------------------------------------------------------------------

    async def slow_patch(self) -> None:
        """The race of issue 11: a PATCH feeds its body slowly; once the server is
        reading it, the closing PUT of the same upload goes out, and the PATCH's
        last piece arrives 0-40 ms later.  The PUT names the digest of the bytes
        staged before the PATCH (most often: a blob stored under it must be
        exactly those bytes) or of everything."""
        up = await self._open()
        if up is None:
            return
        data = self._random_bytes(2, 1024)
        poison = self.rng.random() < 0.7
        digest = sha256(up.staged if poison else up.staged + data)
        body = Body(
            split(data, self.rng, self.rng.randint(2, 3)),
            gap=self.rng.uniform(0.001, 0.02),
            hold=True,
            after=self.rng.uniform(0.0, 0.04),
        )
        patch_at = self._replica()
        put_at = patch_at if self.rng.random() < 0.3 else self._other(patch_at)
        start = len(up.staged) if self.rng.random() < 0.5 else None
        loop = self.env.loop
        patch = loop.create_task(self._patch(up, data, start=start, replica=patch_at, body=body))
        started = loop.create_task(body.started.wait())
        try:
            # Once the server reads the body (its session and offset checks are done):
            await asyncio.wait(
                [patch, started], timeout=self.env.request_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            put = loop.create_task(self._finish(up, digest, replica=put_at))
        finally:
            started.cancel()
            body.release()  # never leave the server waiting for the last piece
        (patch_op, patch_resp), (put_op, put_resp) = await asyncio.gather(patch, put)
        if poison and patch_resp.outcome is Outcome.OK and put_resp.outcome is Outcome.OK:
            self._flag(
                patch_op,
                f"the PATCH was acknowledged and the upload finished (op {put_op.id}) without its bytes",
            )
        if put_resp.outcome is Outcome.OK:
            await self._read_back(up.repo, digest, up.staged if poison else up.staged + data)

    async def patch_race(self) -> None:
        """Two PATCHes at once on different replicas: from the same Content-Range
        start (at most one may be acknowledged), or without one and with the same
        bytes (each acknowledged one appends them)."""
        up = await self._open(first=0.5)
        if up is None:
            return
        ranged = self.rng.random() < 0.5
        a = self._random_bytes(1, 512)
        b = self._random_bytes(1, 512) if ranged else a
        start = len(up.staged) if ranged else None
        first = self._replica()
        (op_a, resp_a), (_, resp_b) = await asyncio.gather(
            self._patch(up, a, start=start, replica=first),
            self._patch(up, b, start=start, replica=self._other(first)),
        )
        oks = [resp.outcome is Outcome.OK for resp in (resp_a, resp_b)]
        if ranged and all(oks):
            self._flag(op_a, f"two PATCHes from byte {start} were both acknowledged")
            return
        for resp, data in ((resp_a, a), (resp_b, b)):
            self._account(up, resp, data)
        await self._check_size(up, "two racing PATCHes")
        await self._close(up)

    async def double_put(self) -> None:
        """The closing PUT twice: at once on two replicas, or again after it was
        acknowledged (a finished upload refuses it)."""
        up = await self._open()
        if up is None:
            return
        digest = sha256(up.staged)
        first = self._replica()
        if self.rng.random() < 0.6:
            # Both may be acknowledged: a close with the same digest may continue a
            # sealed upload, and on S3 both commit the same verified bytes
            # (docs/architecture.md); what they stored is read back.
            (_, resp_a), (_, resp_b) = await asyncio.gather(
                self._finish(up, digest, replica=first),
                self._finish(up, digest, replica=self._other(first)),
            )
            if Outcome.OK in (resp_a.outcome, resp_b.outcome):
                await self._read_back(up.repo, digest, up.staged)
            return
        _, resp = await self._finish(up, digest, replica=first)
        if resp.outcome is not Outcome.OK:
            return
        await self._read_back(up.repo, digest, up.staged)
        await self._replay(up, "finished")

    async def wrong_digest(self) -> None:
        """A closing PUT whose digest the upload's bytes do not hash to: that of
        other bytes, or of a blob other clients pushed to the repository (a
        client trying to put its bytes under a digest others pull).  Refused
        with DIGEST_INVALID; an acknowledgement is invariant 3, and whatever
        the digest names afterwards still reads back whole."""
        up = await self._open()
        if up is None:
            return
        last = self._random_bytes(1, 512) if self.rng.random() < 0.5 else None
        content = up.staged + (last or b"")
        pushed = self.u.layers.get(up.repo) or []
        if pushed and self.rng.random() < 0.5:
            digest = pushed[self.rng.randrange(len(pushed))]
        else:
            digest = sha256(content + self._random_bytes(1, 16))
        if digest == sha256(content):
            return  # the client's own bytes after all: not this behaviour
        op, resp = await self._finish(up, digest, last, start=len(up.staged) if last else None)
        if resp.outcome is Outcome.OK:
            self._flag(
                op,
                f"a closing PUT of {len(content)} bytes hashing to {sha256(content)[7:19]} "
                f"acknowledged as {digest[7:19]}",
                "3",
            )
        await self._read_back(up.repo, digest)

    async def _replay(self, up: Upload, why: str) -> None:
        """PATCH, PUT, GET and DELETE on a stale upload URL, in a random order: each
        is BLOB_UPLOAD_UNKNOWN, and none may be acknowledged once the session is gone."""
        actions = ["patch", "put", "get", "delete"]
        self.rng.shuffle(actions)
        for action in actions:
            # While the session is still there (an expiry not yet come), anything goes.
            alive = self.session_alive(up.id)
            allowed = UPLOAD_REFUSALS if alive else GONE
            if action == "patch":
                data = self._random_bytes(1, 256)
                start = len(up.staged) if self.rng.random() < 0.5 else None
                op, resp = await self._patch(up, data, start=start, allowed=allowed)
                self._account(up, resp, data)
            elif action == "put":
                last = self._random_bytes(1, 256) if self.rng.random() < 0.3 else None
                digest = sha256(up.staged + (last or b""))
                op, resp = await self._finish(
                    up, digest, last, start=len(up.staged) if last else None, allowed=allowed
                )
            elif action == "get":
                op, resp = await self._status(up, allowed=allowed)
            else:
                op, resp = await self._cancel(up, allowed=allowed)
            if resp.outcome is Outcome.OK and not alive:
                self._flag(
                    op, f"{action.upper()} on the URL of a {why} upload (session gone) was acknowledged"
                )

    async def stale_finished(self) -> None:
        up = await self._open()
        if up is None:
            return
        _, resp = await self._finish(up, sha256(up.staged))
        if resp.outcome is Outcome.OK:
            await self._replay(up, "finished")

    async def stale_cancelled(self) -> None:
        up = await self._open(first=0.7)
        if up is None:
            return
        # Gone is a fair answer only if the session expired while the cancel
        # was on its way (a paused replica can hold it past the lease).
        op, resp = await self._cancel(up, allowed=LIMITS | GONE)
        if resp.code in GONE and self.session_alive(up.id):
            self._flag(op, "a cancel of a live upload session was answered BLOB_UPLOAD_UNKNOWN")
        if resp.outcome is Outcome.OK:
            await self._replay(up, "cancelled")

    async def stale_expired(self) -> None:
        """Walk away from an upload until its session expires (its lease runs
        out: ``UPLOAD_SESSION_TTL``), then come back to it."""
        up = await self._open(first=0.7)
        if up is None:
            return
        await asyncio.sleep(UPLOAD_SESSION_TTL)
        for _ in range(4 * UPLOAD_SESSION_TTL):
            if not self.session_alive(up.id):
                break
            await asyncio.sleep(0.5)
        await self._replay(up, "expired")

    async def bad_range(self) -> None:
        """A chunk whose Content-Range starts inside the staged bytes (overlap) or
        past their end (gap): 416, nothing written; then the upload goes on."""
        up = await self._open(first=0.8)
        if up is None:
            return
        n = len(up.staged)
        start = n - self.rng.randint(1, n) if n and self.rng.random() < 0.5 else n + self.rng.randint(1, 64)
        data = self._random_bytes(1, 512)
        if self.rng.random() < 0.7:
            op, resp = await self._patch(up, data, start=start, allowed=BAD_RANGE)
        else:
            op, resp = await self._finish(up, sha256(up.staged + data), data, start=start, allowed=BAD_RANGE)
        if resp.outcome is Outcome.OK:
            self._flag(op, f"a chunk from byte {start} was accepted on an upload of {n} bytes")
            return
        if resp.outcome is Outcome.UNKNOWN:
            up.certain = False
        await self._check_size(up, f"a refused chunk from byte {start}")
        more = self._random_bytes(1, 512)
        _, resp = await self._patch(up, more, start=len(up.staged))
        self._account(up, resp, more)
        if resp.outcome is not Outcome.FAIL:
            await self._close(up)

    async def disconnect(self) -> None:
        """A PATCH (or the closing PUT's last chunk) whose client hangs up after
        part of the body; the client then asks where the upload stands and
        resumes from there.  Nothing of the broken request may be committed."""
        up = await self._open(first=0.6)
        if up is None:
            return
        data = self._random_bytes(2, 1024)
        parts = split(data, self.rng, self.rng.randint(2, 4))
        body = Body(parts, gap=self.rng.uniform(0.0, 0.01), hang_up_after=self.rng.randint(1, len(parts) - 1))
        n = len(up.staged)
        if self.rng.random() < 0.7:
            op, resp = await self._patch(up, data, start=n, body=body)
        else:
            op, resp = await self._finish(up, sha256(up.staged + data), data, start=n, body=body)
        if resp.outcome is Outcome.OK:
            self._flag(op, "a request whose client hung up mid-body was acknowledged")
            return
        if resp.outcome is Outcome.FAIL:
            if resp.code == ErrorCode.BLOB_UPLOAD_UNKNOWN.name:
                return  # the session is gone (expired): nothing to resume
        elif not body.disconnected:
            up.certain = False  # a fault, not the hang-up: the client cannot know
        status_op, status = await self._status(up, allowed=GONE)
        if status.outcome is not Outcome.OK:
            return
        size = status.value.size
        if up.certain and size != n:
            # Nothing of a request that died counts: the upload is as it was before it.
            self._flag(
                status_op,
                f"after a hang-up the upload has {size} bytes; it had {n}, {body.sent} more were sent",
            )
            return
        if size > n:
            # The registry kept a prefix of the broken body: resume after it.
            up.staged += data[: size - n]
            data = data[size - n :]
        if data:
            _, resp = await self._patch(up, data, start=len(up.staged))
            self._account(up, resp, data)
            if resp.outcome is Outcome.FAIL:
                return
        await self._close(up)

    async def resend(self) -> None:
        """A PATCH (or the closing PUT with its last chunk) whose client hangs up
        after part of the body, then sends the very same request again, through
        any replica, at once (as a client's retry or haproxy would): the broken
        request must have left the upload as it was, so while the client is
        sure of every answer the re-send is never refused for its range or
        digest (it may wait for the broken request's claim, or get a 503)."""
        up = await self._open(first=0.6)
        if up is None:
            return
        data = self._random_bytes(2, 1024)
        parts = split(data, self.rng, self.rng.randint(2, 4))
        body = Body(parts, gap=self.rng.uniform(0.0, 0.01), hang_up_after=self.rng.randint(1, len(parts) - 1))
        n = len(up.staged)
        closing = self.rng.random() < 0.3
        digest = sha256(up.staged + data)
        if closing:
            op, resp = await self._finish(up, digest, data, start=n, body=body)
        else:
            op, resp = await self._patch(up, data, start=n, body=body)
        if resp.outcome is Outcome.OK:
            self._flag(op, "a request whose client hung up mid-body was acknowledged")
            return
        if resp.outcome is Outcome.FAIL:
            if resp.code == ErrorCode.BLOB_UPLOAD_UNKNOWN.name:
                return  # the session is gone (expired)
        elif not body.disconnected:
            up.certain = False  # a fault, not the hang-up: the client cannot know
        certain = up.certain
        if closing:
            op, resp = await self._finish(up, digest, data, start=n)
        else:
            op, resp = await self._patch(up, data, start=n)
            self._account(up, resp, data)
        refused = {ErrorCode.BLOB_UPLOAD_INVALID.name, ErrorCode.DIGEST_INVALID.name}
        if certain and resp.outcome is Outcome.FAIL and resp.code in refused:
            self._flag(op, f"the re-send of a request cut off mid-body was refused: {resp.error}")
            return
        if closing:
            if resp.outcome is Outcome.OK:
                await self._read_back(up.repo, digest)
        elif resp.outcome is Outcome.OK:
            await self._close(up)

    async def mount_delete(self) -> None:
        """Mount a layer from a repository while another request deletes it there."""
        source, target = self._repo(), self._repo()
        pool = self.u.layers[source]
        if source == target or not pool:
            return
        digest = pool[self.rng.randrange(len(pool))]
        lead = self.rng.uniform(0.0, 0.03)

        async def delete() -> tuple[Operation, Response]:
            await asyncio.sleep(lead)
            return await self._send(
                h.BLOB_DELETE,
                source,
                lambda reg: reg.blobs.delete(source, digest),
                ("DELETE", f"/v2/{source}/blobs/{digest}"),
                allowed=DELETE_REFUSALS,
                digest=digest,
            )

        async def mount() -> tuple[Operation, Response]:
            return await self._send(
                h.BLOB_MOUNT,
                target,
                lambda reg: reg.blobs.mount(target, digest, source),
                ("POST", f"/v2/{target}/blobs/uploads/?mount={digest}&from={source}"),
                allowed=LIMITS,
                digest=digest,
            )

        _, (_, resp) = await asyncio.gather(delete(), mount())
        if resp.outcome is Outcome.OK and resp.value is not None:
            await self._read_back(target, digest, self.u.blobs.get(digest))
