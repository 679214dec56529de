"""Fixtures of the metadata tests: a MetadataStore on the session etcd, under a
key prefix no other test uses."""

from __future__ import annotations

import pytest

from hareg.clock import SystemClock
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.metadata.keys import Keys
from hareg.metadata.store import MetadataStore

from .support import REPLICA


@pytest.fixture
def keys(key_prefix: bytes) -> Keys:
    return Keys(key_prefix.decode())


@pytest.fixture
def meta(kv: EtcdKV, keys: Keys) -> MetadataStore:
    return MetadataStore(kv, keys, SystemClock(), RandomIds(), REPLICA)
