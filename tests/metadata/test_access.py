"""Runtime grants and robot accounts in etcd (hareg/metadata/access.py), on a real etcd."""

from __future__ import annotations

import asyncio

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.base import KVUnknownOutcome, Put
from hareg.kv.etcd import EtcdKV
from hareg.metadata import access as access_module
from hareg.metadata.access import MissingSubject, TooMany
from hareg.metadata.keys import Keys
from hareg.metadata.store import MetadataStore
from hareg.metadata.switch import Switch

from .faulty_kv import UnknownOutcomeKV


def meta(kv: EtcdKV | UnknownOutcomeKV, keys: Keys, replica: str = "r") -> MetadataStore:
    return MetadataStore(kv, keys, SystemClock(), RandomIds(), replica)


async def test_grant_list_and_revoke(kv: EtcdKV, keys: Keys) -> None:
    store = meta(kv, keys)
    assert await store.add_grant("alice@example.com", "editor", "team/*", by="root")
    assert not await store.add_grant("alice@example.com", "editor", "team/*", by="root")  # already
    view = await store.access_view()
    assert [(g.subject, g.role, g.pattern, g.by) for g in view.grants] == [
        ("alice@example.com", "editor", "team/*", "root")
    ]
    assert view.version is None  # read from etcd: no cache here
    assert await store.remove_grant("alice@example.com", "editor", "team/*")
    assert not await store.remove_grant("alice@example.com", "editor", "team/*")
    assert (await store.access_view()).grants == ()


async def test_subjects_and_patterns_with_separators_do_not_collide(kv: EtcdKV, keys: Keys) -> None:
    store = meta(kv, keys)
    assert await store.add_grant("a@b", "viewer", "c", by="root")
    assert await store.add_grant("a", "viewer", "b@c", by="root")
    assert len((await store.access_view()).grants) == 2


async def test_robot_accounts_and_their_grants_go_together(kv: EtcdKV, keys: Keys) -> None:
    store = meta(kv, keys)
    with pytest.raises(MissingSubject):
        await store.add_grant("robot+ci", "editor", "team/*", by="root", robot="ci")
    assert await store.add_robot("ci", "0" * 64, by="root")
    assert not await store.add_robot("ci", "1" * 64, by="root")  # exists: the secret is not replaced
    assert await store.add_grant("robot+ci", "editor", "team/*", by="root", robot="ci")
    view = await store.access_view(robot="ci")
    assert view.robot is not None and view.robot.secret_sha256 == "0" * 64
    assert await store.remove_robot("ci", "robot+ci")
    view = await store.access_view(robot="ci")
    assert view.robot is None and view.grants == ()
    # A new account of the same name starts with no grants.
    assert await store.add_robot("ci", "2" * 64, by="root")
    assert (await store.access_view()).grants == ()
    assert [name for name, _ in await store.list_robots()] == ["ci"]


async def test_a_grant_racing_the_robots_deletion_never_outlives_it(kv: EtcdKV, keys: Keys) -> None:
    store = meta(kv, keys)
    for round_ in range(10):
        assert await store.add_robot("ci", "0" * 64, by="root")
        results = await asyncio.gather(
            store.add_grant("robot+ci", "viewer", f"p{round_}", by="root", robot="ci"),
            store.remove_robot("ci", "robot+ci"),
            return_exceptions=True,
        )
        assert results[1] is True
        assert results[0] is True or isinstance(results[0], MissingSubject)
        assert (await store.access_view()).grants == ()


async def test_a_lost_grant_reply_is_verified_by_its_own_write(kv: EtcdKV, keys: Keys) -> None:
    assert await meta(UnknownOutcomeKV(kv, apply=True), keys).add_grant("a", "viewer", "x", by="root")
    # Not applied: unknown, never sent again (a create is not fenced: see below).
    lossy = UnknownOutcomeKV(kv, apply=False)
    with pytest.raises(KVUnknownOutcome):
        await meta(lossy, keys).add_grant("b", "viewer", "x", by="root")
    assert lossy.writes == 1
    assert {g.subject for g in (await meta(kv, keys).access_view()).grants} == {"a"}


async def test_a_late_grant_cannot_come_back_after_a_revoke_that_followed_its_answer(
    kv: EtcdKV, keys: Keys
) -> None:
    """A grant whose reply is lost is still on its way (a request stuck at a
    frozen member).  Were it sent again and acknowledged, an admin could
    revoke it, and then the first attempt would arrive, find the key missing
    and bring the revoked grant back.  So the answer stays unknown, and the
    late attempt is the request taking effect late, once."""
    lossy = UnknownOutcomeKV(kv, apply=False, late=True)
    with pytest.raises(KVUnknownOutcome):
        await meta(lossy, keys).add_grant("a", "viewer", "x", by="root")
    assert lossy.writes == 1 and (await meta(kv, keys).access_view()).grants == ()
    assert [r.succeeded for r in await lossy.deliver()] == [True]
    assert [g.subject for g in (await meta(kv, keys).access_view()).grants] == ["a"]


async def test_a_lost_grant_reply_is_not_mistaken_for_another_replicas_grant(kv: EtcdKV, keys: Keys) -> None:
    other = meta(kv, keys, "other")

    async def meanwhile() -> None:
        await other.add_grant("a", "viewer", "x", by="someone else")

    # Our grant was not applied, theirs was: neither "done" nor "already bound"
    # (ours could still arrive after theirs is revoked): unknown.
    lossy = meta(UnknownOutcomeKV(kv, apply=False, meanwhile=meanwhile), keys)
    with pytest.raises(KVUnknownOutcome):
        await lossy.add_grant("a", "viewer", "x", by="root")
    assert [g.by for g in (await other.access_view()).grants] == ["someone else"]


async def test_a_lost_revoke_reply_is_verified_by_absence(kv: EtcdKV, keys: Keys) -> None:
    await meta(kv, keys).add_grant("a", "viewer", "x", by="root")
    assert await meta(UnknownOutcomeKV(kv, apply=True, deletes=True), keys).remove_grant("a", "viewer", "x")
    await meta(kv, keys).add_grant("a", "viewer", "x", by="root")
    with pytest.raises(KVUnknownOutcome):  # still there: the outcome stays unknown
        await meta(UnknownOutcomeKV(kv, apply=False, deletes=True), keys).remove_grant("a", "viewer", "x")


async def test_access_changes_are_not_frozen_by_the_read_only_switch(kv: EtcdKV, keys: Keys) -> None:
    await kv.txn([], [_put_switch(keys, on=True)])
    store = meta(kv, keys)
    assert await store.add_grant("a", "viewer", "x", by="root")
    assert await store.remove_grant("a", "viewer", "x")


async def test_the_number_of_grants_is_bounded(
    kv: EtcdKV, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access_module, "MAX_GRANTS", 2)
    store = meta(kv, keys)
    await store.add_grant("a", "viewer", "x", by="root")
    await store.add_grant("b", "viewer", "x", by="root")
    with pytest.raises(TooMany) as info:
        await store.add_grant("c", "viewer", "x", by="root")
    assert "at most 2 grants" in str(info.value)


def _put_switch(keys: Keys, *, on: bool) -> Put:
    return Put(keys.setting("read-only"), Switch(on, "now", "test").encode())
