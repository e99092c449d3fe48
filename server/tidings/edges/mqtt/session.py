"""MQTT session state: what outlives one connection, and how it is stored.

:class:`MqttSession` is the hub's subscriber for one client id (its
subscriptions, the QoS 2 ids it PUBRECed, whether it is kept while offline);
:class:`ShareGroup` is the hub's subscriber for one ``$share/{group}/{filter}``.
A kept session is saved as a :class:`~tidings.store.base.MqttSessionState`
(:meth:`MqttSession.state`, :meth:`MqttSession.from_state`) and its messages
as :class:`~tidings.store.base.QueuedMessage`, whose 5.0 properties travel as
JSON (:func:`props_to_json`, :func:`props_from_json`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from ...auth import Principal, Screens
from ...protocol.frames import Encoding, push_fields
from ...protocol.mqtt import NO_PROPERTIES, Properties, PublishTemplate
from ...protocol.topics import matches
from ...store.base import MqttSessionState, MqttSubscription, QueuedMessage, routed_away
from ...types import Publication, UserId

if TYPE_CHECKING:
    from collections.abc import Callable

    from .broker import MqttBroker
    from .transport import MqttConnection

__all__ = ["WIRE", "MqttSession", "ShareGroup", "Sub", "expires_at", "inner_filter",
           "mqtt_payload", "props_from_json", "props_to_json", "retained_template", "template"]

WIRE = "mqtt"  # the hub's name for this edge's encoding (see Hub.register_wire)

Sub = MqttSubscription  # one filter's options, as the session keeps and stores them


_WIRE = "mqtt"
_VERSION = "tidings-0.1"
_PAUSE_EVENTS = 256  # inbound packets waiting for the worker before reading pauses
_MAX_CONNECT_SIZE = 65536  # bytes a packet may have before the client is authenticated
_PACE_CHUNK = 65536  # bytes of a paced burst (retained messages) queued before waiting


def mqtt_payload(pub: Publication) -> bytes:
    """What an MQTT subscriber receives: the payload, or for a user's stream
    topics the same JSON object a WS client gets as its push."""
    leaf = pub.topic.rpartition("/")[2] if pub.topic.startswith("users/") else ""
    if leaf in ("notifications", "events") and pub.topic.count("/") == 2:
        return orjson.dumps(push_fields(pub, Encoding.JSON))
    return pub.payload


def template(pub: Publication) -> PublishTemplate:
    props = pub.meta if isinstance(pub.meta, Properties) else NO_PROPERTIES
    return PublishTemplate(pub.topic, mqtt_payload(pub), props)


def retained_template(pub: Publication, now_ms: int) -> PublishTemplate | None:
    """A retained message as sent now: its properties as published, its Message
    Expiry Interval lowered by the time it has been kept [MQTT-3.3.2-6]; None
    once that has run out (it is no longer delivered [MQTT-3.3.2-5])."""
    props = pub.meta if isinstance(pub.meta, Properties) else NO_PROPERTIES
    interval = props.message_expiry_interval
    if interval is None:
        return PublishTemplate(pub.topic, mqtt_payload(pub), props)
    left_ms = interval * 1000 - max(0, now_ms - pub.ts)
    if left_ms <= 0:
        return None
    props = replace(props, message_expiry_interval=-(-left_ms // 1000))
    return PublishTemplate(pub.topic, mqtt_payload(pub), props)


@dataclass(eq=False, slots=True)
class MqttSession:
    """What outlives a connection; the hub's subscriber for this client."""

    broker: MqttBroker
    client_id: str
    principal: Principal
    persistent: bool = False
    expiry: int = 0  # seconds the session outlives its connection
    subs: dict[str, Sub] = field(default_factory=dict)
    conn: MqttConnection | None = None
    wire: str = WIRE
    disconnected_at: float | None = None
    expiry_timer: asyncio.TimerHandle | None = None
    # inbound QoS 2 ids PUBRECed but not yet released: session state (section 4.1),
    # so a PUBLISH resent after a reconnect is not delivered twice [MQTT-4.3.3-10]
    awaiting_pubrel: frozenset[int] = frozenset()  # replaced whole, never changed in place
    # While a SUBSCRIBE is being answered: the offset last delivered live per
    # topic, so a retained message read from the store just after is not sent
    # again (nor an older one after a newer live one).
    live_seen: dict[str, str] | None = None
    # the hub's shortcut (see may_see): a plain attribute read per delivery, kept
    # by _restrict wherever the principal or the screens change
    restricted: bool = field(default=True, init=False)
    screens: Screens = field(init=False, repr=False)  # the [[acl]] rules its filters reach

    def __post_init__(self) -> None:
        self.screens = Screens(self.broker.acl)
        self.act_for(self.principal)
    # whether the store may hold a record of this client id (saved, read back,
    # or found there at connect): a session that never was has nothing to delete
    stored: bool = True

    def __hash__(self) -> int:
        return id(self)

    @property
    def user(self) -> str | None:
        return self.principal.user

    def may_see(self, topic: str) -> bool:
        """Hub callback: whether this session may be handed a message on ``topic``,
        which one of its filters matches (:meth:`~tidings.auth.Screens.sees`)."""
        return self.screens.sees(topic)

    def act_for(self, principal: Principal) -> None:
        """Act for ``principal`` from now on (a resumed session takes the grants
        of the token presented now): every filter is screened anew for it."""
        self.principal = principal
        self.screens.reset(principal, ((flt, inner_filter(flt)) for flt in self.subs))
        self._restrict()

    def screen(self, flt: str) -> None:
        """Screen a granted filter, before the hub can hand it a message."""
        self.screens.add(flt, inner_filter(flt))
        self._restrict()

    def unscreen(self, flt: str) -> None:
        """Forget an ended filter's screen."""
        self.screens.discard(flt)
        self._restrict()

    def _restrict(self) -> None:
        """Copy the hub's shortcut from the screens (a plain attribute: read per delivery)."""
        self.restricted = self.screens.restricted

    def _grant(self, topic: str, origin: str | None) -> tuple[int, bool, tuple[int, ...]] | None:
        """(QoS, retain-as-published, subscription ids) over every matching
        subscription; None when only no-local ones match this client's own message."""
        if len(self.subs) == 1:  # the common case: the hub matched this one filter
            sub = next(iter(self.subs.values()))
            if sub.no_local and origin == self.client_id:
                return None  # [MQTT-3.8.3-3]
            sid = sub.subscription_id
            return sub.qos, sub.retain_as_published, (sid,) if sid is not None else ()
        best, rap, ids, any_match = -1, False, [], False
        for flt, sub in self.subs.items():
            if not matches(flt, topic):
                continue
            if sub.no_local and origin == self.client_id:
                continue  # [MQTT-3.8.3-3]
            any_match = True
            best = max(best, sub.qos)
            rap = rap or sub.retain_as_published
            if sub.subscription_id is not None:
                ids.append(sub.subscription_id)
        if not any_match:
            return None
        return best, rap, tuple(ids)

    def deliver(self, pub: Publication, template: Any) -> None:
        if routed_away(pub, WIRE):  # a notification this user gets on other edges only
            return
        grant = self._grant(pub.topic, pub.origin)
        if grant is None:
            return
        if self.live_seen is not None:
            self.live_seen[pub.topic] = pub.offset
        sub_qos, rap, ids = grant
        qos = min(sub_qos, pub.qos)
        retain = pub.published_retain and rap  # [MQTT-3.3.1-9], [MQTT-3.3.1-12]
        self.send(template, qos, retain, ids)

    def send(self, template: PublishTemplate, qos: int, retain: bool,
             ids: tuple[int, ...] = ()) -> None:
        conn = self.conn
        if conn is not None:
            conn.publish(template, qos, retain, ids)
        elif self.persistent and qos > 0:
            self.broker.enqueue_offline(self.client_id, QueuedMessage(
                template.topic, template.payload, qos, retain,
                expires=expires_at(template.properties),
                properties=props_to_json(template.properties, ids)))
        else:
            self.broker.metrics.inc("tidings_mqtt_dropped_total", reason="offline")

    def state(self) -> MqttSessionState:
        """What the store keeps of this session while it is offline (with its queue)."""
        p = self.principal
        return MqttSessionState(
            user=p.user, subscribe=p.subscribe, publish=p.publish, expiry=self.expiry,
            disconnected_at=self.disconnected_at, subs=dict(self.subs),
            awaiting_pubrel=tuple(sorted(self.awaiting_pubrel)))

    @classmethod
    def from_state(cls, broker: MqttBroker, client_id: str, state: MqttSessionState
                   ) -> MqttSession:
        """A kept session read back from the store (after a restart, or kept by
        another node); the grants are those saved until its client connects."""
        user = None if state.user is None else UserId(state.user)
        principal = Principal(user, state.subscribe, state.publish)
        return cls(broker, client_id, principal, persistent=True, expiry=state.expiry,
                   subs=dict(state.subs), awaiting_pubrel=frozenset(state.awaiting_pubrel))


def inner_filter(flt: str) -> str:
    """The filter a subscription matches topics with: a shared one's inner filter."""
    return flt.split("/", 2)[2] if flt.startswith("$share/") else flt


def expires_at(props: Properties) -> int | None:
    """When a message with 5.0 Message Expiry Interval runs out (ms since the epoch)."""
    interval = props.message_expiry_interval
    return None if interval is None else int(time.time() * 1000) + interval * 1000


def props_to_json(props: Properties, ids: tuple[int, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if props.content_type is not None:
        out["content_type"] = props.content_type
    if props.payload_format_indicator is not None:
        out["payload_format_indicator"] = props.payload_format_indicator
    if props.response_topic is not None:
        out["response_topic"] = props.response_topic
    if props.correlation_data is not None:
        out["correlation_data"] = props.correlation_data.hex()
    if props.user_properties:
        out["user_properties"] = [list(p) for p in props.user_properties]
    if ids:
        out["subscription_ids"] = list(ids)
    return out


def props_from_json(d: dict[str, Any]) -> tuple[Properties, tuple[int, ...]]:
    props = Properties(
        content_type=d.get("content_type"),
        payload_format_indicator=d.get("payload_format_indicator"),
        response_topic=d.get("response_topic"),
        correlation_data=bytes.fromhex(d["correlation_data"]) if "correlation_data" in d
        else None,
        user_properties=tuple((str(k), str(v)) for k, v in d.get("user_properties", ())),
    )
    return props, tuple(d.get("subscription_ids", ()))


class ShareGroup:
    """``$share/{group}/{filter}``: each message goes to one member (5.0 section 4.8.2),
    round robin, preferring connected members. In a cluster ``route`` says which
    messages are this node's to deliver (one node per message; see cluster.py)."""

    wire = WIRE

    def __init__(self, name: str, flt: str,
                 route: Callable[[ShareGroup, Publication], bool] | None = None) -> None:
        self.name = name
        self.filter = flt
        self.members: dict[MqttSession, Sub] = {}
        self.route = route
        self._next = 0

    def __hash__(self) -> int:
        return id(self)

    restricted = True  # the hub always asks: the group picks among the members who may see

    def may_see(self, topic: str) -> bool:
        """Whether any member may see ``topic``; :meth:`deliver` picks among those."""
        return any(m.may_see(topic) for m in self.members)

    def deliver(self, pub: Publication, template: Any) -> None:
        if self.route is not None and not self.route(self, pub):
            return  # another node's
        if routed_away(pub, WIRE):  # a notification this user gets on other edges only
            return
        allowed = [m for m in self.members if m.may_see(pub.topic)]
        members = [m for m in allowed if m.conn is not None] or [
            m for m in allowed if m.persistent]
        if not members:
            return
        self._next = (self._next + 1) % len(members)
        member = members[self._next]
        sub = self.members[member]
        ids = (sub.subscription_id,) if sub.subscription_id is not None else ()
        member.send(template, min(sub.qos, pub.qos),
                    pub.published_retain and sub.retain_as_published, ids)


