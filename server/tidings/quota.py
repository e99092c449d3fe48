"""Counts per key against a limit: what one user or one address may hold on this node.

A :class:`Tally` is how the edges bound what a single user (or client
address) can make the node keep in memory, whichever connection or protocol
it comes through: subscriptions per user over all its WebSocket and MQTT
sessions, persistent MQTT sessions per user, MQTT connections per address.
Counts are node-local (memory is node-local); nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Tally"]

K = TypeVar("K", bound=Hashable)


class Tally(Generic[K]):
    """How much each key holds, at most ``limit`` through :meth:`take`.

    Every successful ``take`` (and every ``force``) is matched by one ``give``
    of the same amount when the thing counted is released.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Counter[K] = Counter()

    def take(self, key: K, n: int = 1) -> bool:
        """Count ``n`` more for ``key`` if that stays within the limit; else False."""
        if self._counts[key] + n > self.limit:
            return False
        self._counts[key] += n
        return True

    def force(self, key: K, n: int = 1) -> None:
        """Count ``n`` more even over the limit (state restored from the store)."""
        self._counts[key] += n

    def give(self, key: K, n: int = 1) -> None:
        """Release ``n`` counted for ``key``."""
        left = self._counts[key] - n
        if left > 0:
            self._counts[key] = left
        else:
            del self._counts[key]

    def __getitem__(self, key: K) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        """How many keys hold something."""
        return len(self._counts)
