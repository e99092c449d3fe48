"""The bus contract: carries publications between the nodes of a cluster.

What every implementation promises (``tests/bus/test_bus_contract.py`` runs the
same suite on the memory bus and on the Redis bus, on one Redis and on a
Redis Cluster):

* **Delivery.** ``publish`` hands a publication (already stored, with its
  offset) to every node that subscribed to a filter its topic matches, this
  node included, by calling that node's ``deliver``. The publication that
  arrives equals the one published, except ``retained`` (a live message is
  never retained; a bus may drop the flag) and ``meta``, which crosses nodes
  only through the bus's meta codec (:class:`tidings.redis_wire.MetaCodec`).
* **A doorbell, not a log.** Delivery may drop (Redis pub/sub does, e.g.
  while a connection is down) and may repeat (an exact and a wildcard filter
  of one node both match). Offsets plus store history are the truth: the
  node delivers by offset, once, and fills a gap from history.
* **Order.** Publications of one topic, each ``publish`` awaited before the
  next, reach a node in the order published, through each filter that
  matches them.
* **Filters.** ``subscribe`` / ``unsubscribe`` take MQTT topic filters (exact
  topics, ``+``, ``#``). The node reference-counts them, so each filter is
  subscribed once per node. A bus may deliver more than was asked (a coarser
  channel); the hub filters locally.
* ``deliver``, given to ``start``, is called on the event loop, never awaits,
  and never raises into the bus. After ``close`` it is not called again.
* ``healthy`` is False while the bus cannot carry messages (for ``/readyz``),
  and after ``close``.
* Errors: ``publish`` raises :class:`~tidings.errors.Unavailable` when it
  cannot hand the publication on (not started, closed, backend down);
  ``subscribe`` and ``unsubscribe`` do not fail on a backend that is down
  (the bus is unhealthy and catches up when it reconnects).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

from ..types import Publication

__all__ = ["Bus", "Deliver"]

Deliver = Callable[[Publication], None]


class Bus(abc.ABC):
    on_resubscribed: Callable[[], None] | None = None
    """Set by the node: called after the bus (re)connected and subscribed every
    filter again, so the node can fill from history whatever was published
    meanwhile. A bus that cannot lose its connection never calls it."""

    local: bool = False
    """True for a bus whose only node is this one (the memory bus): a publication
    that no local subscriber follows reaches no one, so the node need not hand
    it over at all (see :meth:`tidings.node.Node.fan_out`)."""

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None:
        """Connect and begin calling ``deliver`` for every publication received.

        Waits a bounded time at most for a backend that is down, so the node
        still starts; ``healthy`` says when publications flow."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections. Idempotent: a second call
        does nothing. Afterwards ``deliver`` is not called, ``healthy`` is
        False and ``publish`` raises ``Unavailable``."""

    @abc.abstractmethod
    async def publish(self, publication: Publication, *, announced: bool = False) -> None:
        """Send to every subscribed node; raises ``Unavailable`` if it cannot.

        Returns once the publication is handed on, not once it is delivered.
        ``announced``: the store already sent it on the topic's own channel in
        its atomic step (``Store.announces``); the bus does only the rest, so
        wildcard filters still receive it.
        """

    async def publish_many(self, publications: Sequence[Publication], *,
                           announced: bool = False) -> None:
        """:meth:`publish` each, in order (a group the node stored in one call).
        A bus may send them in one round trip; if it raises, any of them may
        have gone. Per-topic order is as if each were awaited in turn."""
        for publication in publications:
            await self.publish(publication, announced=announced)

    @abc.abstractmethod
    async def subscribe(self, flt: str) -> None:
        """Receive publications whose topic matches ``flt``: once this returns on a
        healthy bus, every later publication that matches is delivered (barring
        a drop). While the bus is unhealthy the filter is kept and subscribed
        when it reconnects."""

    @abc.abstractmethod
    async def unsubscribe(self, flt: str) -> None:
        """``flt`` is no longer needed. Filters still subscribed keep receiving,
        whatever they share with ``flt``. The bus may keep delivering for a
        while (the Redis bus waits ``unsubscribe_delay`` so a client that comes
        straight back costs nothing); a ``subscribe`` of the same filter
        meanwhile keeps it. A filter that is not subscribed is ignored."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether publications flow now: started, connected, not closed."""
