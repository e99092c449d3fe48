"""MQTT across the nodes of a cluster: client-id takeover and ``$share`` groups.

Active when the store is shared by the nodes (Redis: :attr:`Node.shared`); on
one node nothing here runs and the broker's own rules are the whole story.

What the nodes share (rosters: the store's presence entries, see
:meth:`Node.roster_put`):

* ``mqtt/nodes``: every MQTT node, refreshed every ``mqtt.cluster_ttl / 3``
  seconds; a node's entry vanishes ``cluster_ttl`` after it died.
* ``mqtt/owner/{client id}``: the node holding the client id's session, one
  entry per claim (``{node}#{n}``), written at CONNECT (or when a restarted
  node takes its sessions up again) and removed when the session ends or
  moves; not refreshed (a dead node's entry is skipped: it is not in
  ``mqtt/nodes``).
* ``mqtt/share/{group}/{filter}``: the nodes with connected members of a
  group, refreshed like ``mqtt/nodes``.

Nodes talk over the bus (:meth:`Node.signal`) on ``$tidings/mqtt/{node}``, a
topic no client may publish or subscribe to: JSON requests that the other
node answers with an ``ack`` carrying the request's ``id``.

**Takeover** [MQTT-3.1.4-2] across nodes, the newer CONNECT winning. The new
node (B) claims the client id; for each other live holder (A):

1. ``hold``: A checks the token's user owns the session (else B refuses the
   CONNECT: 0x87), starts noting the offset of each message it hands the
   session per topic, and answers with the session's filters.
2. B follows those filters with a :class:`Catcher`, which keeps what arrives
   with its offset.
3. ``release``: A closes its connection (5.0: DISCONNECT 0x8E Session taken
   over; 3.1.1: closed), moves what was unacknowledged or waiting into the
   store's queue, saves the session, stops following its filters, writes what
   arrived meanwhile to the queue and answers with the offsets it noted.
4. B reads the session and queue from the store, then replays what its
   catcher kept after those offsets (A handed the rest to the session
   already), then takes the filters over from the catcher.

So a QoS 1/2 message published at any point reaches the client once, in
order. Each ask waits ``mqtt.takeover_timeout`` seconds at most; a node that
does not answer (or died) leaves what it last saved, and what the catcher
kept is replayed whole (a message may come twice, never not at all). Two
CONNECTs with one client id on two nodes at the same instant may both stay
open (each asks the other while neither is open yet): a limit.

**$share** (5.0 section 4.8.2): every node with members follows the group's
filter and receives each message; the one that delivers it is the node at
``crc32(offset) % n`` of the group's roster (sorted; ``n`` its nodes), so each
message goes to one node, spread evenly over them, and there to one member.
Rosters are read every ``cluster_ttl / 3``: while a roster is stale (a node
joined or left in the last third, or died in the last ``cluster_ttl * 4/3``
seconds) a message may go to two nodes or to one that no longer has a
member (or is dead). A node that has members but no roster yet delivers
itself, as one node does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from ...errors import Forbidden, TidingsError
from ...node import Node
from ...types import Publication, parse_offset
from .session import WIRE, MqttSession, ShareGroup

if TYPE_CHECKING:
    from ...auth import Principal
    from .broker import MqttBroker

__all__ = ["Catcher", "Move", "MqttCluster"]

log = logging.getLogger("tidings.mqtt.cluster")

_OWNER_TTL = 86400.0 * 365  # an owner entry is removed when its session goes, not refreshed
_NODES = "mqtt/nodes"
_RESTORE_BATCH = 256  # owner lookups in flight at once when a node starts


def _owner_key(client_id: str) -> str:
    return f"mqtt/owner/{client_id}"


def _share_key(group: tuple[str, str]) -> str:
    return f"mqtt/share/{group[0]}/{group[1]}"


def control_topic(node: str) -> str:
    """The ``$`` topic a node hears its requests on (its name quoted: no wildcard)."""
    return "$tidings/mqtt/" + quote(node, safe="")


def _after(offset: str, seen: str | None) -> bool:
    """Whether ``offset`` is later than ``seen`` (same epoch); unknown: True."""
    if seen is None:
        return True
    a, b = parse_offset(offset), parse_offset(seen)
    return a is None or b is None or a[0] != b[0] or a[1] > b[1]


class Catcher:
    """Hub subscriber for a session on its way here: keeps what arrives, with its
    offset, until the old node says what it handed over (bounded: the rest is
    dropped and counted)."""

    wire = WIRE
    restricted = True  # the hub asks may_see: the new token's grants

    def __init__(self, broker: MqttBroker, principal: Principal, limit: int) -> None:
        self._broker = broker
        self._principal = principal
        self._limit = limit
        self.caught: list[tuple[Publication, Any]] = []

    def __hash__(self) -> int:
        return id(self)

    def may_see(self, topic: str) -> bool:
        return self._broker.acl.may_see(self._principal, topic)

    def deliver(self, publication: Publication, data: Any) -> None:
        if len(self.caught) >= self._limit:
            self._broker.metrics.inc("tidings_mqtt_dropped_total", reason="takeover")
            return
        self.caught.append((publication, data))


class Move:
    """A session moving here from other nodes: its catcher and what they handed over."""

    def __init__(self, broker: MqttBroker, principal: Principal) -> None:
        self._node = broker.node
        self.catcher = Catcher(broker, principal, 2 * broker.settings.mqtt.max_queued)
        self.filters: list[str] = []  # followed by the catcher
        self.seen: dict[str, str] = {}  # topic -> last offset the old node handled

    async def catch(self, filters: list[str]) -> None:
        for flt in filters:
            if flt not in self.filters and not flt.startswith("$share/"):
                self.filters.append(flt)
                await self._node.subscribe(flt, self.catcher)

    def replay(self, session: MqttSession) -> None:
        """Hand ``session`` what the catcher kept that the old node had not."""
        caught, self.catcher.caught = self.catcher.caught, []
        for pub, data in caught:
            if _after(pub.offset, self.seen.get(pub.topic)):
                session.deliver(pub, data)

    async def end(self) -> None:
        """Stop catching (idempotent). Once the session follows the same filters this
        does not wait: the node keeps the bus subscriptions."""
        filters, self.filters = self.filters, []
        for flt in filters:
            await self._node.unsubscribe(flt, self.catcher)


class _Inbox:
    """Hub subscriber of this node's control topic."""

    wire = WIRE
    restricted = False

    def __init__(self, cluster: MqttCluster) -> None:
        self._cluster = cluster

    def may_see(self, topic: str) -> bool:
        return True

    def deliver(self, publication: Publication, data: Any) -> None:
        self._cluster.received(publication.payload)


class MqttCluster:
    """This node's side of the MQTT rules that span nodes (see the module doc)."""

    def __init__(self, broker: MqttBroker, node: Node) -> None:
        s = broker.settings.mqtt
        self.broker = broker
        self.node = node
        self.enabled = node.shared
        self.me = node.name
        self.ttl = s.cluster_ttl
        self.timeout = s.takeover_timeout
        self.alive: set[str] = set()  # nodes in mqtt/nodes at the last refresh
        self.shares: dict[tuple[str, str], list[str]] = {}  # group -> its nodes, sorted
        self._joined: set[tuple[str, str]] = set()  # groups whose roster has this node
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._claims: dict[str, str] = {}  # client id -> this node's owner entry for it
        self._ids = itertools.count(1)
        self._inbox = _Inbox(self)
        self._task: asyncio.Task[None] | None = None
        broker.metrics.gauge(
            "tidings_mqtt_share_nodes",
            "nodes with connected members, summed over the $share groups followed here "
            "(as this node last read their rosters; cluster only)",
            lambda: float(sum(len(v) for v in self.shares.values())))

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        await self.node.subscribe(control_topic(self.me), self._inbox)
        with contextlib.suppress(TidingsError):
            await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Leave the rosters now (the others stop choosing this node at their next
        refresh, not ``cluster_ttl`` later)."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        with contextlib.suppress(TidingsError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                for key in list(self._joined):
                    await self.node.roster_remove(_share_key(key), self.me)
                await self.node.roster_remove(_NODES, self.me)
        self._joined.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.refresh()
            except TidingsError:
                log.debug("mqtt cluster: rosters unavailable; keeping the last view")

    async def refresh(self) -> None:
        """Renew this node's entries and read the rosters of the groups followed here."""
        await self.node.roster_put(_NODES, self.me, {"node": self.me}, self.ttl)
        self.alive = {str(e.get("node")) for e in await self.node.roster_list(_NODES)}
        groups = self.broker.groups
        for key in list(self._joined):
            if key not in groups:
                await self.node.roster_remove(_share_key(key), self.me)
                self._joined.discard(key)
        for key in list(self.shares):
            if key not in groups:
                del self.shares[key]
        await asyncio.gather(*(self._refresh_group(key, g) for key, g in list(groups.items())))

    async def _refresh_group(self, key: tuple[str, str], group: ShareGroup) -> None:
        rkey = _share_key(key)
        if any(m.conn is not None for m in group.members):
            await self.node.roster_put(rkey, self.me, {"node": self.me}, self.ttl)
            self._joined.add(key)
        elif key in self._joined:
            await self.node.roster_remove(rkey, self.me)
            self._joined.discard(key)
        self.shares[key] = sorted({str(e.get("node")) for e in
                                   await self.node.roster_list(rkey)})

    def joined(self, key: tuple[str, str]) -> None:
        """A member subscribed here: enter the group's roster now, not at the next refresh."""
        if self.enabled and key not in self._joined:
            group = self.broker.groups.get(key)
            if group is not None:
                self.broker.spawn(self._join(key, group))

    async def _join(self, key: tuple[str, str], group: ShareGroup) -> None:
        with contextlib.suppress(TidingsError):
            await self._refresh_group(key, group)

    # -- $share ---------------------------------------------------------------------------

    def route(self, group: ShareGroup, pub: Publication) -> bool:
        """Whether this node delivers ``pub`` to ``group`` (one node of its roster)."""
        nodes = self.shares.get((group.name, group.filter))
        if not nodes:
            return True
        return nodes[zlib.crc32(pub.offset.encode()) % len(nodes)] == self.me

    # -- takeover: the new node ------------------------------------------------------------

    async def take(self, client_id: str, principal: Principal, *, resume: bool
                   ) -> Move | None:
        """Claim ``client_id`` for this node and have every other live holder hand it
        over; the move (None: nobody else held it). Raises ``Forbidden`` when the
        session is another user's."""
        if not self.enabled:
            return None
        key = _owner_key(client_id)
        # one entry per claim, so the end of an earlier session here (its removal
        # may run late) never drops the claim of the one that follows it
        mine = f"{self.me}#{next(self._ids)}"
        self._claims[client_id] = mine
        try:
            if await self.node.roster_put(key, mine, {"node": self.me, "entry": mine},
                                          _OWNER_TTL) == 1:
                return None  # the usual case: no other node holds it (one round trip)
            entries = await self.node.roster_list(key)
        except TidingsError:
            log.warning("mqtt cluster: cannot claim a client id (store unavailable)")
            return None
        stale = {str(e.get("entry")): str(e.get("node")) for e in entries
                 if e.get("entry") != mine}
        others = set(stale.values()) - {self.me}
        if others - self.alive:  # dead, or joined since the last refresh: ask now
            with contextlib.suppress(TidingsError):
                self.alive = {str(e.get("node")) for e in await self.node.roster_list(_NODES)}
        move: Move | None = None
        for other in sorted(others):
            if other in self.alive:
                move = move or Move(self.broker, principal)
                try:
                    await self._take_from(other, client_id, principal, resume, move)
                except Forbidden:
                    await move.end()
                    self.disown(client_id)  # claimed just now, refused: not ours
                    raise
        for entry in stale:  # handed over, a dead node's, or an old one of ours
            with contextlib.suppress(TidingsError):
                await self.node.roster_remove(key, entry)
        return move

    async def _take_from(self, other: str, client_id: str, principal: Principal,
                         resume: bool, move: Move) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout
        held = await self._ask(other, {"op": "hold", "client": client_id,
                                       "user": principal.user}, deadline)
        if held is not None and held.get("refused"):
            raise Forbidden("the client id is another user's session")
        if held is not None and not held.get("held"):
            return  # not there (any more)
        if resume and held is not None:
            await move.catch([str(f) for f in held.get("subs", ())])
        released = await self._ask(other, {"op": "release", "client": client_id,
                                           "resume": resume}, deadline)
        if released is None:
            log.warning("mqtt cluster: node %s did not hand a session over in time", other)
            return
        self.broker.metrics.inc("tidings_mqtt_cluster_takeovers_total")
        seen = released.get("seen")
        if isinstance(seen, dict):
            move.seen.update({str(t): str(o) for t, o in seen.items()})

    async def _ask(self, other: str, request: dict[str, Any], deadline: float
                   ) -> dict[str, Any] | None:
        """Send ``request`` to ``other``; its answer, or None past ``deadline``."""
        rid = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = answer
        try:
            await self._send(other, {**request, "id": rid, "from": self.me})
            async with asyncio.timeout_at(deadline):
                return await answer
        except (TimeoutError, TidingsError):
            return None
        finally:
            self._waiting.pop(rid, None)

    async def _send(self, other: str, message: dict[str, Any]) -> None:
        await self.node.signal(control_topic(other), orjson.dumps(message))

    def disown(self, client_id: str) -> None:
        """The session ended (or left) here: drop this node's claim on its client id."""
        entry = self._claims.pop(client_id, None)
        if entry is not None:
            self.broker.spawn(self._disown(client_id, entry))

    async def _disown(self, client_id: str, entry: str) -> None:
        with contextlib.suppress(TidingsError):
            await self.node.roster_remove(_owner_key(client_id), entry)

    # -- takeover: the old node -------------------------------------------------------------

    def received(self, payload: bytes) -> None:
        """A control message for this node (from the bus; never raises)."""
        try:
            message = orjson.loads(payload)
            op, rid = message["op"], int(message["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("mqtt cluster: an undecodable control message")
            return
        if op == "ack":
            answer = self._waiting.pop(rid, None)
            if answer is not None and not answer.done():
                answer.set_result(message)
        elif op in ("hold", "release"):
            self.broker.spawn(self._serve(message))

    async def _serve(self, request: dict[str, Any]) -> None:
        client_id = str(request.get("client"))
        reply: dict[str, Any] = {"op": "ack", "id": request["id"]}
        try:
            if request["op"] == "hold":
                user = request.get("user")
                subs = self.broker.hold(client_id, None if user is None else str(user))
                reply.update(held=subs is not None, subs=subs or [])
            else:
                seen = await self.broker.hand_over(client_id, bool(request.get("resume")))
                reply["seen"] = seen
        except Forbidden:
            reply["refused"] = True
        except TidingsError:
            log.warning("mqtt cluster: could not hand a session over (store unavailable)")
            return  # the asking node times out and resumes what the store has
        with contextlib.suppress(TidingsError):
            await self._send(str(request.get("from")), reply)

    async def owned(self, client_ids: list[str]) -> set[str]:
        """Those of the stored sessions ``client_ids`` this node is to restore after a
        restart (and claims): it held them, or no live node does. One node: all."""
        if not self.enabled:
            return set(client_ids)

        async def mine(client_id: str) -> bool:
            key = _owner_key(client_id)
            try:
                entries = await self.node.roster_list(key)
                ours = [str(e.get("entry")) for e in entries if e.get("node") == self.me]
                if ours:
                    self._claims[client_id] = ours[0]  # removed when the session ends
                    return True
                if {str(e.get("node")) for e in entries} & self.alive:
                    return False
                entry = self._claims[client_id] = f"{self.me}#{next(self._ids)}"
                await self.node.roster_put(key, entry, {"node": self.me, "entry": entry},
                                           _OWNER_TTL)
            except TidingsError:
                pass  # restored unclaimed: as on one node
            return True

        out: set[str] = set()
        for i in range(0, len(client_ids), _RESTORE_BATCH):
            batch = client_ids[i:i + _RESTORE_BATCH]
            out.update(c for c, ok in zip(batch, await asyncio.gather(*map(mine, batch)),
                                          strict=True) if ok)
        return out
