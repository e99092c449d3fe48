"""The bus contract: carries publications between the nodes of a cluster.

* ``publish`` hands a publication (already stored, with its offset) to every
  node subscribed to a channel it matches, this node included. Delivery is
  at most once and may drop (Redis pub/sub is a doorbell): offsets plus store
  history are the truth, and a node that notices a gap fills it from history.
* ``subscribe`` / ``unsubscribe`` take topic filters; the node reference-counts
  them, so each filter is subscribed once per node. A bus may deliver more
  than was asked (a coarser channel); the hub filters locally.
* ``deliver``, given to ``start``, is called on the event loop, never awaits,
  and never raises into the bus.
* ``healthy`` is False while the bus cannot carry messages (for ``/readyz``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from ..types import Publication

__all__ = ["Bus", "Deliver"]

Deliver = Callable[[Publication], None]


class Bus(abc.ABC):
    on_resubscribed: Callable[[], None] | None = None
    """Set by the node: called after the bus reconnected and resubscribed, so
    the node can fill from history whatever was published meanwhile."""

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect and begin calling ``deliver`` for every publication received."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections. Idempotent."""

    @abc.abstractmethod
    async def publish(self, publication: Publication, *, announced: bool = False) -> None:
        """Send to every subscribed node; raises ``Unavailable`` if it cannot.

        ``announced``: the store already sent it on the topic's own channel in
        its atomic step (``Store.announces``); the bus does only the rest.
        """

    @abc.abstractmethod
    async def subscribe(self, flt: str) -> None:
        """Receive publications whose topic matches ``flt``."""

    @abc.abstractmethod
    async def unsubscribe(self, flt: str) -> None:
        """Stop receiving for ``flt`` (other filters may still match)."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether publications flow now."""
