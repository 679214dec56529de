"""Identifier generation as an injected dependency (random in production, seeded in the simulator)."""

from __future__ import annotations

import random
import uuid
from typing import Protocol


class IdSource(Protocol):
    def new_id(self) -> str:
        """A fresh identifier: a UUID in canonical text form."""
        ...


class RandomIds:
    """UUID4s from the operating system's randomness."""

    def new_id(self) -> str:
        return str(uuid.uuid4())


class SeededIds:
    """UUID4-shaped ids from a seeded generator (deterministic runs)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
