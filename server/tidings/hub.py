"""Node-local subscriptions and encode-once delivery.

The hub maps topic filters to local subscribers (a :class:`Trie`). To deliver
a publication it finds the matching subscribers, encodes the publication once
per *wire form* (e.g. "WS frame, JSON"), and hands the same bytes to each
subscriber's ``deliver``. It never awaits and never creates a task per
subscriber: subscribers append to a bounded outbound buffer
(:class:`tidings.plumbing.Outbox`) that is written out once per loop iteration.

Every matching subscriber that could be refused is asked
:meth:`Subscriber.may_see` before it gets a message, and answers as
:meth:`tidings.auth.Acl.may_see` does: private topics (``users/{uid}/...``)
reach only that user's subscribers, and a topic an ``[[acl]]`` rule denies
reaches no one, whatever filter matched them. A refusal is counted in
``tidings_acl_denied_messages_total`` by edge.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol

from .auth import guarded
from .metrics import Metrics
from .plumbing import Flushable, Flusher  # here for the edges that import them from the hub
from .protocol.topics import Trie
from .types import Publication

__all__ = ["Flushable", "Flusher", "Hub", "Subscriber"]


class Subscriber(Hashable, Protocol):
    """What the hub needs of a session."""

    @property
    def wire(self) -> str:
        """The key of the encoder that makes this subscriber's bytes."""

    def may_see(self, topic: str) -> bool:
        """Whether it may be handed a message on ``topic`` (the session's
        :meth:`~tidings.auth.Acl.may_see`; a share group asks its members)."""

    @property
    def restricted(self) -> bool:
        """False only where ``may_see`` is True for every topic that
        :func:`~tidings.auth.guarded` does not flag (the session's principal is
        not :meth:`~tidings.auth.Acl.restricts` and none of its filters' screens
        holds a deny); the hub then does not ask."""

    def deliver(self, publication: Publication, data: Any) -> None:
        """Queue ``data`` (pre-encoded for ``wire``); must not block or raise."""


Encoder = Callable[[Publication], Any]  # bytes (WS frames) or a template (MQTT)


class Hub:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._trie: Trie[Subscriber] = Trie()
        self._encoders: dict[str, Encoder] = {}
        self._metrics = metrics
        # wire -> the series its refusals are counted in (labelled by the wire's edge)
        self._series: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}

    def register_wire(self, wire: str, encoder: Encoder, *, edge: str | None = None) -> None:
        """How to encode for ``wire``; ``edge`` (default: the wire's name) labels
        the messages the ACL keeps from its subscribers in ``/metrics``."""
        self._encoders[wire] = encoder
        self._series[wire] = Metrics.series("tidings_acl_denied_messages_total",
                                           edge=edge or wire)

    def encode(self, wire: str, publication: Publication) -> Any:
        return self._encoders[wire](publication)

    def add(self, flt: str, sub: Subscriber) -> None:
        self._trie.add(flt, sub)

    def remove(self, flt: str, sub: Subscriber) -> None:
        self._trie.remove(flt, sub)

    def subscribers(self, topic: str) -> set[Subscriber]:
        return self._trie.match(topic)

    def deliver(self, pub: Publication) -> int:
        """Hand ``pub`` to every matching local subscriber; return how many."""
        subs = self._trie.match(pub.topic)
        if not subs:
            return 0
        topic = pub.topic
        ask_all = guarded(topic)  # else only restricted subscribers can be refused
        encoded: dict[str, Any] = {}
        encoders = self._encoders
        n = 0
        for sub in subs:
            if (ask_all or sub.restricted) and not sub.may_see(topic):
                self._denied(sub)
                continue
            wire = sub.wire
            data = encoded.get(wire)
            if data is None:
                data = encoded[wire] = encoders[wire](pub)
            sub.deliver(pub, data)
            n += 1
        return n

    def _denied(self, sub: Subscriber) -> None:
        """Count a message the ACL kept from ``sub`` (off the hot path: refusals only)."""
        if self._metrics is not None:
            self._metrics.add(self._series[sub.wire])

    def __len__(self) -> int:
        return len(self._trie)
