"""The MQTT sessions contract: persistent sessions and their offline queues.

A session that outlives its connection (MQTT 3.1.1 ``CleanSession=0``, 5.0
``Session Expiry Interval > 0`` [MQTT-3.1.2-4], [MQTT-4.1.0-1]) keeps its state
and the messages held for it in the store, so it survives a restart of the node
and can be taken over from another node. The rules every backend keeps
(``tests/store/test_mqtt_sessions_contract.py``):

* The state is a JSON-able dict, stored and returned as given; the store reads
  nothing in it.
* A queue is kept in order (oldest first) and each :class:`QueuedMessage`
  comes back equal to what was stored (binary payload, flags, properties).
* Each session's queue is bounded by the ``limit`` each enqueue passes: an
  append to a full queue drops the new message (and counts it); concurrent
  enqueues never take a queue past its limit.
* Sessions and queues survive a reopen; client ids are opaque (any characters)
  and never mix.
* Every call raises :class:`tidings.errors.Unavailable` when the backend cannot
  answer within its bound; none reports success for what was not stored.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MqttSessionState", "MqttSessionStore", "MqttSubscription", "QueuedMessage"]


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message held for an MQTT session: queued while offline, or in flight.

    ``packet_id`` is set once the message was sent (it is then resent with
    DUP on reconnect [MQTT-4.4.0-1]); ``pubrel`` marks an outgoing QoS 2
    message whose PUBREC arrived (resend PUBREL, not PUBLISH).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    packet_id: int | None = None
    pubrel: bool = False
    expires: int | None = None  # ms since the epoch (v5 message expiry)
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MqttSubscription:
    """One filter of an MQTT session and its options (5.0 section 3.8.3.1)."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    subscription_id: int | None = None


@dataclass(frozen=True, slots=True)
class MqttSessionState:
    """What a persistent MQTT session keeps between connections, besides its queue.

    ``subscribe`` / ``publish`` are the token's grants when the session was
    saved (None: no restriction, as in :class:`tidings.auth.Principal`);
    ``expiry`` the seconds it outlives its connection, from
    ``disconnected_at`` (seconds since the epoch; None while connected);
    ``awaiting_pubrel`` the inbound QoS 2 ids PUBRECed and not yet released
    [MQTT-4.3.3-10].

    Stored as JSON (:meth:`to_json`) in the format written before this class
    existed, so a session saved by an older server still loads
    (:meth:`from_json` takes a missing field as its default).
    """

    user: str | None = None
    subscribe: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None
    expiry: int = 0
    disconnected_at: float | None = None
    subs: dict[str, MqttSubscription] = field(default_factory=dict)
    awaiting_pubrel: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The stored form: a JSON object (``subs`` as ``{filter: [qos, no_local,
        retain_as_published, subscription_id]}``)."""
        return {
            "user": self.user,
            "subscribe": None if self.subscribe is None else list(self.subscribe),
            "publish": None if self.publish is None else list(self.publish),
            "expiry": self.expiry,
            "disconnected_at": self.disconnected_at,
            "subs": {f: [s.qos, s.no_local, s.retain_as_published, s.subscription_id]
                     for f, s in self.subs.items()},
            "awaiting_pubrel": sorted(self.awaiting_pubrel),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MqttSessionState:
        """Read the stored form; a field it lacks gets its default."""
        subscribe, publish = d.get("subscribe"), d.get("publish")
        return cls(
            user=d.get("user"),
            subscribe=None if subscribe is None else tuple(subscribe),
            publish=None if publish is None else tuple(publish),
            expiry=int(d.get("expiry") or 0),
            disconnected_at=d.get("disconnected_at"),
            subs={f: MqttSubscription(int(qos), bool(nl), bool(rap), sid)
                  for f, (qos, nl, rap, sid) in (d.get("subs") or {}).items()},
            awaiting_pubrel=tuple(d.get("awaiting_pubrel") or ()),
        )


class MqttSessionStore(abc.ABC):
    """Persistent MQTT sessions: their state and the queue held for each."""

    @abc.abstractmethod
    async def mqtt_session(self, client_id: str
                           ) -> tuple[MqttSessionState, list[QueuedMessage]] | None:
        """The persistent session's state and its queue (oldest first), or None.

        State and queue are read in one step (a concurrent save is seen whole
        or not at all)."""

    @abc.abstractmethod
    async def mqtt_save(self, client_id: str, state: MqttSessionState,
                        queue: list[QueuedMessage] | None = None) -> None:
        """Create or replace the session state; with ``queue``, replace its queue too.

        One atomic step. Without ``queue`` the stored queue is kept as it is."""

    @abc.abstractmethod
    async def mqtt_delete(self, client_id: str) -> None:
        """Forget the session and its queue, in one step. Deleting an unknown
        session is not an error."""

    @abc.abstractmethod
    async def mqtt_enqueue(self, items: Sequence[tuple[str, QueuedMessage]], limit: int
                           ) -> int:
        """Append to offline sessions' queues (one call for a batch of
        ``(client_id, message)``, in order). A queue at ``limit`` drops the new
        message; returns how many were dropped. Atomic per session (its limit
        holds against concurrent calls), not across sessions: an
        :class:`~tidings.errors.Unavailable` may leave some sessions' appends
        done."""

    @abc.abstractmethod
    async def mqtt_sessions(self) -> list[tuple[str, MqttSessionState]]:
        """Every stored session (client id, state), in no particular order, to
        re-register at start."""
