"""The retry loop every metadata write runs (StoreBase._write), against the real
etcd: a failed compare is retried on a fresh read, up to max_retries, then
Contended; a reason that retrying cannot help ends it at once; an unknown
outcome is verified, never retried (invariant 7 of docs/invariants.md)."""

from __future__ import annotations

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import Compare, KVUnknownOutcome, Put
from hareg.kv.etcd import EtcdKV
from hareg.metadata.errors import Contended, MissingReferences
from hareg.metadata.keys import Keys
from hareg.metadata.store import MetadataStore
from hareg.metadata.switch import Switch, WritesFrozen
from hareg.metadata.writes import Done, StoreBase, Txn

from .faulty_kv import UnknownOutcomeKV
from .support import digest


async def unapplied() -> bool:
    return False


def store(kv: EtcdKV | UnknownOutcomeKV, keys: Keys, *, max_retries: int = 3) -> StoreBase:
    return StoreBase(kv, keys, SystemClock(), RandomIds(), "r", max_retries=max_retries)


async def test_a_commit_returns_the_attempts_result(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys)
    key = keys.setting("written")
    put = Put(key, b"v")

    async def attempt() -> Txn[str]:
        return Txn([Compare.missing(key)], [put], lambda: base._wrote(put), "done")

    assert await base._write("the write", attempt) == "done"
    found = await kv.get(key)
    assert found is not None and found.value == b"v"


async def test_a_failed_compare_is_retried_on_a_fresh_read_then_contended(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys, max_retries=3)
    held, target = keys.setting("held"), keys.setting("target")
    await kv.txn([], [Put(held, b"x")])
    reads: list[int] = []
    conflicts: list[int] = []

    async def conflict() -> None:
        conflicts.append(len(reads))

    async def attempt() -> Txn[None]:
        found = await base._read_many([held])
        reads.append(found[0].mod_revision if found[0] else 0)
        # Always stale: the compare names a revision the key does not have.
        return Txn([Compare.mod_revision_is(held, 0)], [Put(target, b"y")], unapplied, None, conflict)

    with pytest.raises(Contended, match="the contended write"):
        await base._write("the contended write", attempt)
    assert len(reads) == 3 and conflicts == [1, 2, 3]
    assert await kv.get(target) is None


async def test_a_reason_that_retrying_cannot_help_ends_the_loop(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys, max_retries=5)
    held = keys.setting("held")
    await kv.txn([], [Put(held, b"x")])
    attempts: list[None] = []

    async def refuse() -> None:
        raise MissingReferences(["sha256:gone"], [])

    async def attempt() -> Txn[None]:
        attempts.append(None)
        return Txn([Compare.missing(held)], [Put(keys.setting("t"), b"y")], unapplied, None, refuse)

    with pytest.raises(MissingReferences):
        await base._write("the write", attempt)
    assert len(attempts) == 1


async def test_an_attempt_with_nothing_to_write_runs_no_transaction(kv: EtcdKV, keys: Keys) -> None:
    flaky = UnknownOutcomeKV(kv, apply=False)  # any write transaction would raise
    base = store(flaky, keys)

    async def attempt() -> Done[int]:
        return Done(7)

    assert await base._write("the write", attempt) == 7
    assert flaky.times == 1


@pytest.mark.parametrize("applied", [True, False])
async def test_an_unknown_outcome_is_verified_and_never_retried(
    kv: EtcdKV, keys: Keys, applied: bool
) -> None:
    base = store(UnknownOutcomeKV(kv, apply=applied), keys)
    key = keys.setting("lost-reply")
    put = Put(key, b"ours")
    attempts: list[None] = []

    async def attempt() -> Txn[str]:
        attempts.append(None)
        return Txn([], [put], lambda: base._wrote(put), "verified")

    if applied:
        assert await base._write("the write", attempt) == "verified"
    else:
        with pytest.raises(KVUnknownOutcome):
            await base._write("the write", attempt)
        assert await kv.get(key) is None
    assert len(attempts) == 1


async def test_no_write_commits_while_the_read_only_switch_is_on(kv: EtcdKV, keys: Keys) -> None:
    base = store(kv, keys)
    await kv.txn([], [Put(base.read_only_guard.key, Switch(True, "", "admin").encode())])
    key = keys.setting("frozen")

    async def attempt() -> Txn[None]:
        return Txn([], [Put(key, b"v")], unapplied, None)

    with pytest.raises(WritesFrozen):
        await base._write("the write", attempt)
    assert await kv.get(key) is None


@pytest.mark.parametrize("what", ["immutability rule", "blob link"])
async def test_a_lost_delete_is_not_acknowledged_once_the_switch_is_on(
    kv: EtcdKV, keys: Keys, what: str
) -> None:
    """A delete whose reply is lost finds its key gone (nothing to delete, or
    another client's delete), but the read-only switch was turned on
    meanwhile: the answer stays unknown (503), never a success under the switch."""
    other = MetadataStore(kv, keys, SystemClock(), RandomIds(), "other")
    if what == "blob link":
        await other.add_blob("repo", digest("b"), 1)

    async def gone_then_switch_on() -> None:
        if what == "blob link":
            assert await other.remove_link("repo", digest("b"))
        await kv.txn([], [Put(keys.setting("read-only"), Switch(True, "now", "other").encode())])

    lossy = UnknownOutcomeKV(kv, apply=False, meanwhile=gone_then_switch_on, deletes=True)
    meta = MetadataStore(lossy, keys, SystemClock(), RandomIds(), "r")  # type: ignore[arg-type]
    with pytest.raises(KVUnknownOutcome):
        if what == "immutability rule":
            await meta.set_immutability("repo", [])  # there is no rule to delete
        else:
            await meta.remove_link("repo", digest("b"))
