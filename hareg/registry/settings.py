"""Cluster-wide settings that an operator switches at runtime, kept in etcd.

Today one: the read-only switch, ``<p>/c/read-only``, a small JSON document
``{"readOnly": true, "changedAt": "...", "replica": "..."}``.  Every replica
mirrors the ``<p>/c/`` keys, fed by the replica's one reflector
(hareg/metadata/reflector.py, which feeds the metadata cache too: listed at a
revision, then watched from the next one), so a switch made through any
replica is seen by all of them in the time a watch event takes to arrive.

A replica is read-only when its configuration file says so (``readOnly``,
reloaded on SIGHUP) **or** the cluster switch is on: the switch can put a
whole cluster into read-only mode, and turning it off never unlocks a
replica whose own file asks for read-only.

The HTTP layer refuses writes early by this view (a middleware); what makes
the switch linearizable is the metadata store: every write transaction
compares the switch key (hareg/metadata/switch.py), so no write commits after
``set_read_only(True)`` returned, whichever replica it reached and however
late that replica's watch is.
"""

from __future__ import annotations

import asyncio
import logging

from hareg.clock import Clock, rfc3339
from hareg.kv.base import KV, Event, EventType, KeyValue, KVError, KVUnknownOutcome, Put
from hareg.metadata.keys import Keys
from hareg.metadata.reflector import Reflector
from hareg.metadata.switch import READ_ONLY, Switch

__all__ = ["READ_ONLY", "ClusterSettings", "Switch"]

log = logging.getLogger("hareg.settings")


class ClusterSettings:
    def __init__(
        self,
        kv: KV,
        reflector: Reflector,
        keys: Keys,
        clock: Clock,
        *,
        replica: str = "replica",
        read_only: bool = False,
    ) -> None:
        self.kv = kv
        self.reflector = reflector
        self.keys = keys
        self.clock = clock
        self.replica = replica
        # From the configuration file; the server updates it on SIGHUP.
        self.config_read_only = read_only
        self.loaded = False  # the etcd settings have been read once
        self.revision = 0  # the mirror holds every change up to this revision
        self._values: dict[bytes, bytes] = {}
        # Switches made here, by revision, until the mirror has caught up with
        # them: a listing at an older revision must not undo them meanwhile.
        self._own: dict[bytes, tuple[int, bytes]] = {}
        self.prefixes = (keys.kind_prefix("c"),)
        self._read_only_key = keys.setting(READ_ONLY)
        reflector.subscribe(self)

    # ------------------------------------------------------------------ reads

    @property
    def cluster_switch(self) -> Switch | None:
        """The cluster read-only switch as last seen in etcd (None: never set)."""
        raw = self._values.get(self._read_only_key)
        return Switch.decode(raw) if raw is not None else None

    @property
    def cluster_read_only(self) -> bool:
        switch = self.cluster_switch
        return switch is not None and switch.on

    @property
    def read_only(self) -> bool:
        return self.config_read_only or self.cluster_read_only

    def describe(self) -> dict[str, object]:
        switch = self.cluster_switch
        return {
            "readOnly": self.read_only,
            "config": self.config_read_only,
            "cluster": switch.on if switch else False,
            "changedAt": switch.changed_at if switch else None,
            "changedBy": switch.replica if switch else None,
        }

    # ----------------------------------------------------------------- writes

    async def set_read_only(self, on: bool) -> None:
        """Switch the whole cluster; applied here at once, elsewhere by the watch."""
        value = Switch(on, rfc3339(self.clock.now()), self.replica)
        encoded = value.encode()
        try:
            result = await self.kv.txn([], [Put(self._read_only_key, encoded)])
            revision = result.revision
        except KVUnknownOutcome:
            # A blind put: it applied iff the key now holds this exact value.
            current = await self.kv.get(self._read_only_key)
            if current is None or current.value != encoded:
                raise
            revision = current.mod_revision
        if revision > self.revision:
            self._values[self._read_only_key] = encoded
            self._own[self._read_only_key] = (revision, encoded)
        log.warning(
            "cluster read-only switch %s", "on" if on else "off", extra={"fields": {"replica": self.replica}}
        )

    # --------------------------------------------- fed by the reflector

    def listing(self) -> _Listing:
        return _Listing(self)

    def reset(self, values: dict[bytes, bytes], revision: int) -> None:
        """Serve ``values`` (by key), a listing as of ``revision``."""
        before = self.read_only
        self._values = values
        self.revision = revision
        self._keep_own()
        self.loaded = True
        self._log_change(before)

    def apply(self, events: list[Event], revision: int) -> None:
        before = self.read_only
        for event in events:
            if event.kv.mod_revision <= self.revision:
                continue  # already in the read that primed the mirror
            if event.type is EventType.DELETE:
                self._values.pop(event.kv.key, None)
            else:
                self._values[event.kv.key] = event.kv.value
        self.revision = max(self.revision, revision)
        self._keep_own()
        self._log_change(before)

    def _keep_own(self) -> None:
        for key, (written, value) in list(self._own.items()):
            if written <= self.revision:
                del self._own[key]  # the mirror has it (or what came after it)
            else:
                self._values[key] = value

    def lost(self) -> None:
        """Nothing to do: the values stay as last seen until the listing that follows."""

    async def prime(self, limit: float = 2.0) -> None:
        """Read the settings once before serving (bounded; the reflector lists them again)."""
        if self.loaded:
            return
        try:
            async with asyncio.timeout(limit):
                await self.reflector.read([self])
        except (KVError, TimeoutError) as exc:
            log.warning("cluster settings not loaded yet: %s", exc or type(exc).__name__)

    def _log_change(self, before: bool) -> None:
        if self.read_only != before:
            log.warning(
                "registry is now %s",
                "read-only" if self.read_only else "writable",
                extra={"fields": self.describe()},
            )


class _Listing:
    """A listing for the settings, served once complete."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.values: dict[bytes, bytes] = {}

    def add(self, kvs: list[KeyValue]) -> None:
        self.values.update((kv.key, kv.value) for kv in kvs)

    def done(self, revision: int) -> None:
        self.settings.reset(self.values, revision)
