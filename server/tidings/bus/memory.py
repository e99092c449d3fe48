"""The in-process bus of a single node: publish is a direct call."""

from __future__ import annotations

from ..errors import Unavailable
from ..types import Publication
from .base import Bus, Deliver

__all__ = ["MemoryBus"]


class MemoryBus(Bus):
    """Every publication goes straight to this node's ``deliver``.

    There is no other node, so subscriptions need no bookkeeping: the hub
    already filters by its own subscriptions.
    """

    local = True

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None

    async def publish(self, publication: Publication, *, announced: bool = False) -> None:
        if self._deliver is None:
            raise Unavailable("bus is closed")
        self._deliver(publication)

    async def subscribe(self, flt: str) -> None:
        return None

    async def unsubscribe(self, flt: str) -> None:
        return None

    @property
    def healthy(self) -> bool:
        return self._deliver is not None
