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
from typing import Any, Protocol, cast

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

    # A subscriber of a *joinable* wire (Hub.register_wire) also has
    # deliver_many(publications, parts, joined): a run of messages of one topic,
    # oldest first, ``parts`` their wire forms and ``joined`` those concatenated;
    # the same as ``deliver`` of each.


Encoder = Callable[[Publication], Any]  # bytes (WS frames) or a template (MQTT)


class Hub:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._trie: Trie[Subscriber] = Trie()
        self._encoders: dict[str, Encoder] = {}
        self._joinable: set[str] = set()
        self._metrics = metrics
        # wire -> the series its refusals are counted in (labelled by the wire's edge)
        self._series: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}

    def register_wire(self, wire: str, encoder: Encoder, *, joinable: bool = False,
                      edge: str | None = None) -> None:
        """How to encode for ``wire``. ``joinable``: the encoder makes bytes that may
        be written back to back as one (whole WebSocket frames), and every
        subscriber of this wire has ``deliver_many``: :meth:`deliver_many` then
        hands each one run at once. ``edge`` (default: the wire's name) labels the
        messages the ACL keeps from its subscribers in ``/metrics``."""
        self._encoders[wire] = encoder
        if joinable:
            self._joinable.add(wire)
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
        return self.deliver_many([pub])

    def deliver_many(self, run: list[Publication]) -> int:
        """Hand a run of publications of one topic (oldest first) to every matching
        local subscriber; return how many deliveries that made.

        The topic is matched and each subscriber asked once for the whole run,
        each message encoded once per wire form; a subscriber of a joinable wire
        gets a run of several in one call (one append to its outbox), any other
        one message at a time. What a group of publishes costs per subscriber is
        then one call, not one per message."""
        topic = run[0].topic
        subs = self._trie.match(topic)
        if not subs:
            return 0
        ask_all = guarded(topic)  # else only restricted subscribers can be refused
        encoded: dict[str, tuple[list[Any], bytes | None]] = {}
        n, size = 0, len(run)
        for sub in subs:
            if (ask_all or sub.restricted) and not sub.may_see(topic):
                self._denied(sub, size)
                continue
            wire = sub.wire
            forms = encoded.get(wire)
            if forms is None:
                forms = encoded[wire] = self._encode(wire, run)
            parts, joined = forms
            if joined is not None:
                cast(Any, sub).deliver_many(run, parts, joined)
            else:
                for pub, data in zip(run, parts, strict=True):
                    sub.deliver(pub, data)
            n += size
        return n

    def _denied(self, sub: Subscriber, n: int) -> None:
        """Count ``n`` messages the ACL kept from ``sub`` (off the hot path: refusals only)."""
        if self._metrics is not None:
            self._metrics.add(self._series[sub.wire], n)

    def fitting(self, run: list[Publication], budget: int) -> tuple[int, int]:
        """How many of ``run`` (one topic, oldest first) to hand over now so that
        about ``budget`` subscriber calls are made (one at least), and how many
        calls that is: a subscriber of a joinable wire takes a run in one call,
        any other one call per message."""
        subs = self._trie.match(run[0].topic)
        joinable = self._joinable
        others = sum(1 for sub in subs if sub.wire not in joinable)
        if not others:
            return len(run), len(subs)
        k = max(1, min(len(run), (budget - (len(subs) - others)) // others))
        return k, len(subs) - others + others * k

    def _encode(self, wire: str, run: list[Publication]) -> tuple[list[Any], bytes | None]:
        """The run in ``wire``'s form, each message once; joined too where the wire
        is joinable and the run holds more than one."""
        encoder = self._encoders[wire]
        parts = [encoder(pub) for pub in run]
        joinable = len(parts) > 1 and wire in self._joinable
        return parts, b"".join(parts) if joinable else None

    def __len__(self) -> int:
        return len(self._trie)
