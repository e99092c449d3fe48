"""One node: publish through store and bus, and route bus traffic to the hub."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from typing import Any

from .bus.base import Bus
from .config import HistorySettings
from .hub import Hub, Subscriber
from .metrics import Metrics
from .protocol.topics import matches
from .store.base import HistoryPolicy, PublishResult, Store
from .types import PayloadKind, Publication

__all__ = ["Node"]

log = logging.getLogger("tidings.node")
_NO_HISTORY = HistoryPolicy(0, 1.0)


class Node:
    """Owns the hub; the edges and the API talk to this, never to bus or store directly
    for topic traffic. Bus subscriptions are reference-counted per filter."""

    def __init__(self, name: str, store: Store, bus: Bus, history: HistorySettings,
                 metrics: Metrics) -> None:
        self.name = name
        self.store = store
        self.bus = bus
        self.hub = Hub()
        self.metrics = metrics
        self._history = history
        self._policies: dict[str, HistoryPolicy] = {}
        self._refs: Counter[str] = Counter()

    async def start(self) -> None:
        await self.store.open()
        await self.bus.start(self._on_bus)

    async def close(self) -> None:
        await self.bus.close()
        await self.store.close()

    def policy(self, topic: str) -> HistoryPolicy:
        """History bounds for ``topic``: the first matching ``[[history.rules]]``."""
        policy = self._policies.get(topic)
        if policy is None:
            policy = HistoryPolicy(self._history.size, self._history.ttl)
            if topic.startswith("$"):
                policy = _NO_HISTORY  # broker statistics: retained only
            for rule in self._history.rules:
                if matches(rule.pattern, topic):
                    policy = HistoryPolicy(rule.size, rule.ttl)
                    break
            if len(self._policies) > 65536:
                self._policies.clear()
            self._policies[topic] = policy
        return policy

    async def publish(self, topic: str, payload: bytes, kind: PayloadKind, *,
                      retain: bool = False, idempotency_key: str | None = None,
                      qos: int = 1, origin: str | None = None, meta: Any = None
                      ) -> PublishResult:
        """Store, then fan out. Raises ``Unavailable`` if either cannot take it."""
        result = await self.store.publish(topic, payload, kind, retain=retain,
                                          policy=self.policy(topic),
                                          idempotency_key=idempotency_key)
        if not result.duplicate:
            self.metrics.inc("tidings_messages_in_total")
            pub = result.publication
            if qos != 1 or retain or origin is not None or meta is not None:
                pub = replace(pub, qos=qos, published_retain=retain, origin=origin, meta=meta)
            await self.bus.publish(pub)
        return result

    async def fan_out(self, publications: list[Publication]) -> None:
        """Send already-stored publications (e.g. an inbox change) to every node."""
        for pub in publications:
            await self.bus.publish(pub)

    async def subscribe(self, flt: str, sub: Subscriber) -> None:
        """Route publications matching ``flt`` to ``sub`` from now on."""
        self.hub.add(flt, sub)
        self._refs[flt] += 1
        if self._refs[flt] == 1:
            await self.bus.subscribe(flt)

    async def unsubscribe(self, flt: str, sub: Subscriber) -> None:
        self.hub.remove(flt, sub)
        if self._refs[flt] <= 1:
            self._refs.pop(flt, None)
            await self.bus.unsubscribe(flt)
        else:
            self._refs[flt] -= 1

    def _on_bus(self, pub: Publication) -> None:
        try:
            n = self.hub.deliver(pub)
        except Exception:  # our bug: never let it kill the bus reader
            log.exception("delivery failed for a message on %r", pub.topic)
            self.metrics.inc("tidings_errors_total", code="internal")
            return
        self.metrics.inc("tidings_deliveries_total", n)
