"""The cluster read-only switch as etcd holds it, and the guard that makes it
linearizable: a compare that every write transaction carries.

The switch is one key, ``<p>/c/read-only``, holding a small JSON document.
Replicas learn of a change through a watch, which lags; so refusing writes by
a replica's own view alone lets a write through just after the switch was
acknowledged elsewhere.  Instead each write transaction compares the key's
mod_revision with the one it last read while the switch was off: any change
of the switch fails the write, which then reads the key again and is refused
if the switch is on.  A write therefore commits either before the switch (and
the switch's acknowledgement) or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hareg.kv.base import KV, Compare
from hareg.metadata.keys import Keys

READ_ONLY = "read-only"


@dataclass(frozen=True, slots=True)
class Switch:
    """A cluster switch's value and when (and through which replica) it was last set."""

    on: bool
    changed_at: str
    replica: str

    def encode(self) -> bytes:
        return json.dumps(
            {"readOnly": self.on, "changedAt": self.changed_at, "replica": self.replica}
        ).encode()

    @staticmethod
    def decode(raw: bytes) -> Switch | None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("readOnly"), bool):
            return None
        return Switch(doc["readOnly"], str(doc.get("changedAt", "")), str(doc.get("replica", "")))


class WritesFrozen(Exception):
    """The cluster read-only switch is on: no write may commit."""

    def __init__(self) -> None:
        super().__init__("the registry is read-only (cluster switch)")


class ReadOnlyGuard:
    """The compare on the read-only switch for write transactions (one per
    metadata store; it remembers the switch's last "off" revision so that a
    write costs no extra read while the switch stays put)."""

    def __init__(self, kv: KV, keys: Keys) -> None:
        self.kv = kv
        self.key = keys.setting(READ_ONLY)
        self._off_revision: int | None = None  # None: not known to be off

    async def compare(self) -> Compare:
        """The compare to add to a write: the switch is still off as last read.
        Raises WritesFrozen if the switch is on now."""
        if self._off_revision is None:
            await self.refresh()
        assert self._off_revision is not None
        return Compare.mod_revision_is(self.key, self._off_revision)

    async def refresh(self) -> None:
        """Read the switch again (after a write's compares failed): raises
        WritesFrozen if it is on, else the next compare uses what was read."""
        kv = await self.kv.get(self.key)
        switch = Switch.decode(kv.value) if kv is not None else None
        if switch is not None and switch.on:
            self._off_revision = None
            raise WritesFrozen
        self._off_revision = kv.mod_revision if kv is not None else 0
