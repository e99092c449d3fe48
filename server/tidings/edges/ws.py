"""The WebSocket edge: ``/ws`` on the edge port, the client protocol of DESIGN.md.

How the fast path coexists with the ``websockets`` library
-----------------------------------------------------------
``websockets``' sans-I/O ``ServerProtocol`` stays in charge of the opening
handshake (parsing, Origin check, subprotocol and extension negotiation,
the 101 response), of parsing every incoming frame (including the
``max_size`` check that fails the connection with 1009), of control frames
(it queues the pong for every ping) and of the closing handshake.
:class:`WsConnection` is our thin asyncio driver around it (as the
library's own asyncio layer is, minus a task, a receive queue and the
handshake headers per connection): it feeds received bytes in, writes what
the protocol wants sent, and hands whole messages to a :class:`WsSession`.

Everything *we* send (replies and pushes) goes through one bounded outbound
buffer per session. For an uncompressed connection a server frame is the
same bytes for every client (servers do not mask, RFC 6455 section 5.1), so
the hub builds the frame once and each session appends those bytes to its
buffer; the :class:`~tidings.hub.Flusher` then writes each buffer with one
``transport.writelines`` per loop iteration. These writes bypass
``Protocol.send_*`` but are always whole frames, and the protocol also
writes whole frames (pongs, close), so the byte stream stays a valid
sequence of frames. We never send fragmented messages, and we stop writing
as soon as the protocol leaves the OPEN state, so nothing follows a close
frame. A session that negotiated permessage-deflate gets payloads instead
of frames and flushes them through ``protocol.send_text`` / ``send_binary``
(compression is per connection), a slower path that does not slow the others.

If a session's unsent bytes (our buffer plus the transport's) would exceed
``ws.outbound_buffer``, it is closed with 4008 and counted; no one else waits.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import mimetypes
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import orjson
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ..auth import Acl, Principal, TokenAuthority
from ..config import Settings
from ..demo_files import demo_file
from ..errors import (
    CLOSE_BAD_REQUEST,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    CLOSE_RATE_LIMITED,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHORIZED,
    BadRequest,
    Forbidden,
    TidingsError,
    TooLarge,
    Unauthorized,
)
from ..hub import Flusher
from ..metrics import Metrics
from ..node import Node
from ..notify import Notifier
from ..presence import Presence
from ..protocol.frames import (
    Command,
    Encoding,
    decode_command,
    encode,
    encode_message,
    error_reply,
    ok_reply,
    push_fields,
    ws_frame,
)
from ..protocol.topics import TopicError, is_wildcard, matches, validate_filter, validate_topic
from ..store.base import events_topic, notifications_topic
from ..types import PayloadKind, Publication, UserId, is_cursor, parse_offset

__all__ = ["WsEdge", "WsSession"]

log = logging.getLogger("tidings.ws")

_MAX_MALFORMED = 10  # consecutive malformed frames before the stream counts as broken
_RECOVER_LIMIT = 1000  # notifications recovered at connect, at most (then bytes bound it)
_RECOVER_PAGE = 64  # messages read from history at once while recovering
_MAX_LISTED_IDS = 1000  # ids listed in a read-family reply's ``changed``
_ENCODINGS = frozenset(e.value for e in Encoding)
_MAX_QUEUED_COMMANDS = 64  # frames waiting for the worker before the socket is paused
_PIPELINE = 32  # publishes to distinct topics in flight per session
_PACE_CHUNK = 65536  # bytes of a paced burst written before waiting for the transport
_CLOSE_TIMEOUT = 2.0  # seconds a closing handshake may take before the transport is cut


def _wire(encoding: Encoding, framed: bool) -> str:
    return f"ws-{encoding.name.lower()}{'' if framed else '-payload'}"


def register_wires(node: Node) -> None:
    """Teach the hub how to encode a message for each WS wire form."""
    for enc in Encoding:
        node.hub.register_wire(_wire(enc, False), functools.partial(encode_message,
                                                                    encoding=enc))
        node.hub.register_wire(_wire(enc, True), functools.partial(_framed, encoding=enc))


def _framed(pub: Publication, encoding: Encoding) -> bytes:
    return ws_frame(encode_message(pub, encoding), text=encoding is Encoding.JSON)


class WsSession:
    """One WebSocket connection after the handshake."""

    __slots__ = (
        "__weakref__",
        "_closing",
        "_connect_timer",
        "_connected",
        "_dirty",
        "_expiry",
        "_hold",
        "_inbox",
        "_limit",
        "_malformed",
        "_pending",
        "_pending_size",
        "_ping",
        "_refill",
        "_streams",
        "_text",
        "_tokens",
        "_worker",
        "conn",
        "device",
        "edge",
        "encoding",
        "framed",
        "principal",
        "subscriptions",
        "user",
        "wire",
    )

    def __init__(self, edge: WsEdge, conn: WsConnection, encoding: Encoding) -> None:
        self.edge = edge
        self.conn = conn
        self.encoding = encoding
        self.framed = conn.protocol.extensions == []
        self.wire = _wire(encoding, self.framed)
        self.user: UserId | None = None
        self.principal: Principal | None = None
        self.device = ""
        self.subscriptions: set[str] = set()
        self._streams: tuple[str, ...] = ()  # the user's own stream topics, followed at connect
        self._text = encoding is Encoding.JSON
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._dirty = False
        self._closing = False
        self._hold: list[tuple[Publication, bytes]] | None = None
        self._limit = edge.settings.ws.outbound_buffer
        self._tokens = float(edge.settings.ws.commands_burst)
        self._refill = time.monotonic()
        self._expiry: asyncio.TimerHandle | None = None
        self._ping: bytes | None = None  # the keepalive ping still waiting for its pong
        self._inbox: list[bytes] = []  # frames waiting for the worker (a few at most)
        self._worker: asyncio.Task[None] | None = None
        self._connected = False
        self._malformed = 0
        self._connect_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            edge.settings.ws.connect_timeout, self._connect_timeout)

    # -- outbound ---------------------------------------------------------------

    def may_see(self, topic: str) -> bool:
        """Hub callback: whether this session may be handed a message on ``topic``."""
        p = self.principal
        return p is not None and self.edge.acl.may_see(p, topic)

    def deliver(self, publication: Publication, data: bytes) -> None:
        """Hub callback: ``data`` is already this session's wire form (the hot path)."""
        if self._hold is not None:
            self._hold.append((publication, data))
        else:
            self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        if self._closing:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > self._limit:
            self._overflow()
        elif not self._dirty:
            self._dirty = True
            self.edge.flusher.mark(self)

    def _overflow(self) -> None:
        self.edge.metrics.inc("tidings_slow_consumers_total")
        log.warning("slow consumer %s (%s): over %d queued bytes, closing",
                    self.device, self.user, self._limit)
        self._pending = []
        self._pending_size = 0
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def flush(self) -> None:
        """Write everything queued since the last pass with one system call.

        The bound counts what the transport still holds too: checked here,
        once per pass, rather than per message on the hot path.
        """
        self._dirty = False
        chunks = self._pending
        if not chunks:
            return
        size = self._pending_size
        self._pending = []
        self._pending_size = 0
        conn = self.conn
        if conn.protocol.state is not State.OPEN or self._closing:
            return
        transport = conn.transport
        assert transport is not None
        if size + transport.get_write_buffer_size() > self._limit:
            self._overflow()
            return
        self.edge.frames_out += len(chunks)
        if self.framed:
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        else:  # permessage-deflate: the protocol compresses each message
            send = conn.protocol.send_text if self._text else conn.protocol.send_binary
            for payload in chunks:
                send(payload)
            conn.send_data()

    def send(self, obj: dict[str, Any]) -> None:
        payload = encode(obj, self.encoding)
        self._enqueue(ws_frame(payload, text=self._text) if self.framed else payload)

    def close(self, code: int, reason: str) -> None:
        """Flush what is queued, then close with ``code``. Idempotent, never blocks."""
        if self._closing:
            return
        if self._dirty:
            self.flush()
        self._closing = True
        self._inbox.clear()
        self.conn.close(code, reason)

    # -- inbound ----------------------------------------------------------------

    def _rate_ok(self) -> bool:
        ws = self.edge.settings.ws
        now = time.monotonic()
        self._tokens = min(float(ws.commands_burst),
                           self._tokens + (now - self._refill) * ws.commands_per_second)
        self._refill = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def on_message(self, data: bytes, text: bool) -> None:
        """A whole message from the client (driver callback, never blocks).

        Commands are handled in order by one worker task that exists only
        while there is work, so an idle connection costs no task. A client
        that sends faster than its commands complete is paused at the socket.
        """
        if self._closing:
            return  # keep reading until the peer's close frame: the handshake ends at once
        if text != self._text:
            kind = "text" if text else "binary"
            self.close(CLOSE_BAD_REQUEST, f"{kind} frame on {self.encoding.value}")
            return
        if not self._rate_ok():
            self.edge.metrics.inc("tidings_errors_total", code="rate_limited")
            self.close(CLOSE_RATE_LIMITED, "rate limited")
            return
        self._inbox.append(data)
        if len(self._inbox) > _MAX_QUEUED_COMMANDS:
            self.conn.pause_reading()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _connect_timeout(self) -> None:
        self._connect_timer = None
        if not self._connected and not self._inbox and self._worker is None:
            self.close(CLOSE_POLICY, "connect timeout")

    async def _work(self) -> None:
        """Commands in order. ``publish`` commands to different topics are pipelined
        (up to ``_PIPELINE`` at once), so a backend publishing to many personal
        topics shares one store commit between them; any other command, or a
        publish to a topic already in flight, first waits for those in flight."""
        inflight: list[tuple[str, asyncio.Task[None]]] = []
        loop = asyncio.get_running_loop()
        try:
            while self._inbox and not self._closing:
                raw = self._inbox.pop(0)
                if not self._connected:
                    await self._first(raw)
                    continue
                cmd = self._decode(raw)
                if cmd is not None:
                    topic = cmd.args.get("topic") if cmd.op == "publish" else None
                    if not isinstance(topic, str) or any(t == topic for t, _ in inflight):
                        await _drain(inflight)
                    if isinstance(topic, str):
                        inflight.append((topic, loop.create_task(self._run(cmd))))
                        if len(inflight) >= _PIPELINE:
                            await inflight.pop(0)[1]
                    else:
                        await self._run(cmd)
                if len(self._inbox) <= _MAX_QUEUED_COMMANDS // 2:
                    self.conn.resume_reading()
            await _drain(inflight)
        finally:
            for _, task in inflight:
                task.cancel()
            self._worker = None  # an idle session holds no task

    def _decode(self, raw: bytes) -> Command | None:
        try:
            cmd = decode_command(raw, self.encoding)
        except TidingsError as e:
            self._failed(e)
            return None
        self._malformed = 0
        return cmd

    async def _run(self, cmd: Command) -> None:
        try:
            await self._dispatch(cmd)
        except TidingsError as e:
            self._failed(e)
        except Exception:
            log.exception("command handling failed")
            self.edge.metrics.inc("tidings_errors_total", code="internal")
            self.send(error_reply(cmd.id, "internal", "internal error"))

    def _failed(self, e: TidingsError) -> None:
        if e.code in ("malformed", "unknown_op", "bad_request"):
            self._malformed += 1
        self._reply_error(e.request_id, e)
        if self._malformed >= _MAX_MALFORMED:
            self.close(CLOSE_BAD_REQUEST, "too many malformed frames")

    async def _first(self, raw: bytes) -> None:
        """The first frame must be ``connect``; anything else ends the connection."""
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        rid: int | None = None
        try:
            cmd = decode_command(raw, self.encoding)
            rid = cmd.id
            if cmd.op != "connect":
                raise BadRequest("the first frame must be connect", code="connect_required")
            await self._connect(cmd)
            self._connected = True
        except TidingsError as e:
            self._reply_error(e.request_id if e.request_id is not None else rid, e)
            close_code = e.close_code if isinstance(e, Unauthorized) else CLOSE_BAD_REQUEST
            self.close(close_code, e.code)
        except Exception:  # our bug: the client still gets an answer and a close
            log.exception("connect handling failed")
            self.edge.metrics.inc("tidings_errors_total", code="internal")
            self.send(error_reply(rid, "internal", "internal error"))
            self.close(1011, "internal")

    def _reply_error(self, rid: int | None, e: TidingsError) -> None:
        self.edge.metrics.inc("tidings_errors_total", code=e.code)
        self.send(error_reply(rid, e.code, e.message))

    async def _dispatch(self, cmd: Command) -> None:
        try:
            if cmd.op == "connect":
                raise BadRequest("already connected")
            handler = getattr(self, f"_op_{cmd.op}", None)
            if handler is None:
                raise BadRequest(f"{cmd.op} is not available on this server",
                                 code="unsupported")
            await handler(cmd)
        except TidingsError as e:
            e.request_id = cmd.id
            raise

    # -- ops ----------------------------------------------------------------------

    async def _connect(self, cmd: Command) -> None:
        token = cmd.args.get("token")
        edge = self.edge
        if token is None and edge.settings.auth.allow_anonymous:
            principal = Principal(None)
        else:
            try:
                principal = edge.tokens.verify(token)
            except Unauthorized as e:
                e.request_id = cmd.id
                raise
        self.principal = principal
        self.user = principal.user
        device = cmd.args.get("device")
        if device is not None and not (0 < len(device) <= 128 and device.isprintable()):
            raise BadRequest("connect: device must be 1-128 printable characters")
        self.device = device or secrets.token_hex(8)
        if principal.expires is not None:
            delay = max(0.0, principal.expires - time.time())
            self._expiry = asyncio.get_running_loop().call_later(
                delay, self.close, CLOSE_UNAUTHORIZED, "token expired")
        edge.sessions.add(self)
        if self.user is None:
            self.send(ok_reply(cmd.id, user=None, device=self.device, node=edge.node.name,
                               unread=0, offset=None, recovered=[], complete=True))
            return
        since = cmd.args.get("since")
        if since is not None and parse_offset(since) is None:
            raise BadRequest("connect: since is not an offset")
        edge.presence.online(self.user, self, self.device, "ws")
        await self._open_stream(cmd, since)

    async def _open_stream(self, cmd: Command, since: str | None) -> None:
        """Follow the user's notifications and events; reply with unread and what was missed."""
        assert self.user is not None
        store = self.edge.node.store
        topic = notifications_topic(self.user)
        self._hold = []
        try:
            for t in (topic, events_topic(self.user)):
                self._streams += (t,)
                await self.edge.node.subscribe(t, self)
            recovered: list[dict[str, Any]] = []
            complete = True
            more: dict[str, Any] = {}
            seen: dict[str, str] = {}
            if since is not None:
                page = await store.history(topic, since, _RECOVER_LIMIT)
                complete = page.complete
                states = await store.read_states(self.user, [str(p.data()["id"])
                                                             for p in page.items])
                budget = self.edge.settings.limits.max_reply_size
                for p in page.items:
                    fields = push_fields(p, self.encoding)
                    nid = fields.get("id")
                    if nid not in states:
                        continue  # archived, expired or collapsed since
                    fields["read"] = states[nid]
                    budget -= len(encode(fields, self.encoding))
                    if recovered and budget < 0:
                        # the rest does not fit one reply: the inbox has them all
                        complete = False
                        more = {"next": seen[topic]}
                        break
                    recovered.append(fields)
                    seen[topic] = p.offset
            offset = await store.latest(topic)
            unread = await store.unread(self.user)
        except BaseException:
            self._release_hold({})
            raise
        self.send(ok_reply(cmd.id, user=self.user, device=self.device,
                           node=self.edge.node.name, unread=unread, offset=offset,
                           recovered=recovered, complete=complete, **more))
        self._release_hold(seen)

    async def _op_ping(self, cmd: Command) -> None:
        self.send(ok_reply(cmd.id))

    def _filter(self, value: str) -> str:
        t = self.edge.settings.topics
        try:
            return validate_filter(value, max_length=t.max_length, max_depth=t.max_depth)
        except TopicError as e:
            raise BadRequest(f"topic: {e}", code="bad_topic") from None

    def _since_map(self, flt: str, since: Any) -> dict[str, str]:
        if isinstance(since, str):
            if is_wildcard(flt):
                raise BadRequest("subscribe: since for a wildcard filter must be an object "
                                 "mapping topics to offsets")
            since = {flt: since}
        most = self.edge.settings.limits.max_since_topics
        if len(since) > most:
            raise BadRequest(f"subscribe: since names more than {most} topics "
                             f"(limits.max_since_topics)")
        assert self.principal is not None
        for topic, offset in since.items():
            if not isinstance(offset, str) or parse_offset(offset) is None:
                raise BadRequest(f"subscribe: since[{topic[:64]!r}] is not an offset")
            if not matches(flt, topic):
                raise BadRequest(f"subscribe: since names {topic[:64]!r}, "
                                 f"which the filter does not match")
            # checked before any history is read: recovery hands out messages too
            if not self.edge.acl.may_see(self.principal, topic):
                raise Forbidden(f"not allowed to read {topic[:64]!r}")
        return dict(since)

    async def _op_subscribe(self, cmd: Command) -> None:
        edge = self.edge
        flt = self._filter(cmd.args["topic"])
        since = cmd.args.get("since")
        since_map = self._since_map(flt, since) if since is not None else {}
        assert self.principal is not None
        if not edge.acl.can_subscribe(self.principal, flt):
            raise Forbidden(f"not allowed to subscribe to {flt!r}")
        new = flt not in self.subscriptions and flt not in self._streams
        if new and len(self.subscriptions) >= edge.settings.ws.max_subscriptions:
            raise BadRequest(f"more than {edge.settings.ws.max_subscriptions} subscriptions",
                             code="too_many_subscriptions")
        tally = edge.node.user_subscriptions
        if new and self.user is not None and not tally.take(self.user):
            raise BadRequest(f"more than {tally.limit} subscriptions for this user on this "
                             "node", code="too_many_subscriptions")
        self._hold = []  # live messages wait until the reply and recovery are out
        try:
            if new:
                self.subscriptions.add(flt)
                await edge.node.subscribe(flt, self)
            store = edge.node.store
            recovered, complete, rest = await self._recover(since_map)
            offset_now = None if is_wildcard(flt) else await store.latest(flt)
            retained = await store.retained(flt) if since is None else []
        except BaseException:
            if new:
                self.subscriptions.discard(flt)
                self._give_back(1)
                await edge.node.unsubscribe(flt, self)
            self._release_hold({})
            raise
        seen: dict[str, str] = {}
        for pub, _ in recovered:
            seen[pub.topic] = pub.offset
        more = {"next": rest} if rest else {}
        self.send(ok_reply(cmd.id, offset=offset_now, complete=complete and not rest,
                           recovered=[fields for _, fields in recovered], **more))
        try:
            await self._push_paced(retained, seen)
        finally:
            self._release_hold(seen)

    async def _recover(self, since: dict[str, str]
                       ) -> tuple[list[tuple[Publication, dict[str, Any]]], bool, dict[str, str]]:
        """History after each ``since`` offset, at most ``limits.max_reply_size`` bytes
        of pushes (always at least one), read a page at a time so one request
        never loads more than that from the store.

        Returns (publications with their push fields, whether history reached
        back everywhere, ``next``: the since map to continue with, empty when
        everything was recovered).
        """
        budget = self.edge.settings.limits.max_reply_size
        store = self.edge.node.store
        got: list[tuple[Publication, dict[str, Any]]] = []
        used = 0
        complete = True
        rest: dict[str, str] = {}
        for topic, offset in since.items():
            cursor = offset
            first = True
            while True:
                if used >= budget:
                    rest[topic] = cursor
                    break
                page = await store.history(topic, cursor, _RECOVER_PAGE)
                items = page.items
                if first and not page.complete and not (items and _follows(cursor,
                                                                         items[0].offset)):
                    complete = False  # trimmed or expired: history no longer reaches back
                first = False
                full = False
                for pub in items:
                    fields = push_fields(pub, self.encoding)
                    size = len(encode(fields, self.encoding))
                    if got and used + size > budget:
                        full = True
                        break
                    got.append((pub, fields))
                    used += size
                    cursor = pub.offset
                if full:
                    rest[topic] = cursor
                    break
                if not items or items[-1].offset == page.offset:
                    break  # caught up with the topic's latest offset
        return got, complete, rest

    async def _push_paced(self, pubs: list[Publication], seen: dict[str, str]) -> None:
        """Push server-chosen bursts (retained messages) no faster than the client
        reads: after each ``_PACE_CHUNK`` bytes, flush and wait until the transport
        has drained, so the outbound bound only ever sees live traffic."""
        for pub in pubs:
            if self._closing:
                return
            if not self.may_see(pub.topic):  # a wildcard matches other users' topics too
                continue
            self._push_one(pub)
            seen[pub.topic] = pub.offset
            if self._pending_size >= _PACE_CHUNK:
                self.flush()
                await self.conn.drained()
                self._check_hold()

    def _push_one(self, pub: Publication) -> None:
        self.edge.metrics.inc("tidings_deliveries_total")
        self._enqueue(self.edge.node.hub.encode(self.wire, pub))

    def _check_hold(self) -> None:
        """Live messages held while a burst is paced count against the bound too."""
        if self._hold is not None and \
                sum(len(d) for _, d in self._hold) > self._limit:  # rare: only while pacing
            self._hold = []
            self._overflow()

    def _release_hold(self, seen: dict[str, str]) -> None:
        """Send what arrived while subscribing, minus what recovery already sent."""
        held, self._hold = self._hold or [], None
        for pub, data in held:
            last = seen.get(pub.topic)
            if last is not None:
                a, b = parse_offset(last), parse_offset(pub.offset)
                if a is not None and b is not None and a[0] == b[0] and b[1] <= a[1]:
                    continue
            self._enqueue(data)

    async def _op_unsubscribe(self, cmd: Command) -> None:
        flt = self._filter(cmd.args["topic"])
        if flt in self.subscriptions and flt not in self._streams:
            self.subscriptions.discard(flt)
            self._give_back(1)
            await self.edge.node.unsubscribe(flt, self)
        self.send(ok_reply(cmd.id))

    async def _op_publish(self, cmd: Command) -> None:
        edge = self.edge
        t = edge.settings.topics
        try:
            topic = validate_topic(cmd.args["topic"], max_length=t.max_length,
                                   max_depth=t.max_depth)
        except TopicError as e:
            raise BadRequest(f"topic: {e}", code="bad_topic") from None
        assert self.principal is not None
        if not edge.acl.can_publish(self.principal, topic):
            raise Forbidden(f"not allowed to publish to {topic!r}")
        payload, kind = payload_of(cmd.args["data"])
        if len(payload) > edge.settings.limits.max_message_size:
            raise TooLarge(f"data over limits.max_message_size "
                           f"({edge.settings.limits.max_message_size} bytes)")
        result = await edge.node.publish(topic, payload, kind,
                                         retain=bool(cmd.args.get("retain", False)))
        self.send(ok_reply(cmd.id, offset=result.publication.offset))

    def _me(self, op: str) -> UserId:
        if self.user is None:
            raise Forbidden(f"{op} needs a signed-in user")
        return self.user

    async def _op_inbox(self, cmd: Command) -> None:
        user = self._me("inbox")
        limit = cmd.args.get("limit", 20)
        if not 1 <= limit <= 100:
            raise BadRequest("inbox: limit must be between 1 and 100")
        before = cmd.args.get("before")
        if before is not None and not is_cursor(before):
            raise BadRequest("inbox: before must be a cursor from a previous page's next")
        store = self.edge.node.store
        unread_only = cmd.args.get("unread_only", False)
        page = await store.inbox(user, limit=limit, before=before, unread_only=unread_only)
        items = [i.to_dict() for i in page.items]
        fits = _fitting(items, self.edge.settings.limits.max_reply_size, self.encoding)
        if fits < len(items):
            # Over limits.max_reply_size: a shorter page, whose `next` continues
            # right after its last item (the store makes the cursor).
            page = await store.inbox(user, limit=fits, before=before, unread_only=unread_only)
            items = [i.to_dict() for i in page.items]
        self.send(ok_reply(cmd.id, items=items, unread=page.unread, next=page.next))

    async def _mark(self, cmd: Command) -> None:
        user = self._me(cmd.op)
        change = await self.edge.notifier.mark(user, cmd.op, cmd.args.get("ids"),  # type: ignore[arg-type]
                                               bool(cmd.args.get("all")), self.device)
        if len(change.changed) > _MAX_LISTED_IDS:
            # only `all: true` changes this many: the reply says all, not each id
            self.send(ok_reply(cmd.id, unread=change.unread, all=True))
            return
        self.send(ok_reply(cmd.id, unread=change.unread, changed=change.changed))

    _op_read = _op_unread = _op_archive = _mark

    async def _op_track(self, cmd: Command) -> None:
        user = self._me("track")
        recorded = await self.edge.notifier.track(user, cmd.args["notification"],
                                                  cmd.args["event"])
        self.send(ok_reply(cmd.id, recorded=recorded))

    async def _op_devices(self, cmd: Command) -> None:
        user = self._me("devices")
        self.send(ok_reply(cmd.id, devices=await self.edge.presence.devices(user)))

    # -- end ----------------------------------------------------------------------

    def on_close(self) -> None:
        """Driver callback: the connection is gone."""
        self._closing = True
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self.edge.spawn(self.cleanup())

    async def cleanup(self) -> None:
        self._closing = True
        if self._expiry is not None:
            self._expiry.cancel()
        if self in self.edge.sessions and self.user is not None:
            self.edge.presence.offline(self.user, self)
        self.edge.sessions.discard(self)
        subs = self.subscriptions | set(self._streams)
        self._give_back(len(self.subscriptions))
        self.subscriptions, self._streams = set(), ()
        for flt in subs:
            await self.edge.node.unsubscribe(flt, self)

    def _give_back(self, n: int) -> None:
        """Release ``n`` of this user's subscriptions (topics.max_user_subscriptions)."""
        if self.user is not None and n:
            self.edge.node.user_subscriptions.give(self.user, n)

    def keepalive(self) -> None:
        """Called by the edge's sweep: close if the previous ping got no pong, else ping.

        Never waits: the ping is queued behind whatever is unsent.
        """
        if self._closing or self.conn.protocol.state is not State.OPEN:
            return
        if self._ping is not None:
            self.edge.metrics.inc("tidings_errors_total", code="keepalive_timeout")
            self.close(1011, "keepalive ping timeout")
            return
        self._ping = secrets.token_bytes(4)
        self.conn.protocol.send_ping(self._ping)
        self.conn.send_data()

    def on_pong(self, data: bytes) -> None:
        if data == self._ping:
            self._ping = None

    def goodbye(self, reason: str) -> None:
        """Server going away: say so, then close 1001 so the client reconnects."""
        if self._closing:
            return
        self.send({"type": "disconnect", "reason": reason, "reconnect": True})
        self.close(CLOSE_GOING_AWAY, reason)


def _fitting(items: list[dict[str, Any]], budget: int, encoding: Encoding) -> int:
    """How many of ``items`` (at least one) fit in ``budget`` bytes once encoded."""
    for n, item in enumerate(items):
        budget -= len(encode(item, encoding))
        if budget < 0:
            return max(1, n)
    return len(items)


def _follows(before: str, offset: str) -> bool:
    """Whether ``offset`` is the one right after ``before`` (same epoch, next sequence)."""
    a, b = parse_offset(before), parse_offset(offset)
    return a is not None and b is not None and a[0] == b[0] and b[1] == a[1] + 1


async def _drain(inflight: list[tuple[str, asyncio.Task[None]]]) -> None:
    while inflight:
        await inflight.pop(0)[1]


def payload_of(data: Any) -> tuple[bytes, PayloadKind]:
    """A client's ``data`` as stored bytes: JSON values as JSON, raw bytes (msgpack) as is."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), PayloadKind.BINARY
    try:
        return orjson.dumps(data), PayloadKind.JSON
    except TypeError:
        raise BadRequest("data must be a JSON value") from None


class Handler(Protocol):
    """What a :class:`WsConnection` drives after the handshake (a session, or MQTT)."""

    def on_message(self, data: bytes, text: bool) -> None: ...
    def on_pong(self, data: bytes) -> None: ...
    def on_close(self) -> None: ...


class WsConnection(asyncio.Protocol):
    """The asyncio driver of one connection over websockets' sans-I/O ``ServerProtocol``.

    The library parses the handshake and every frame, answers pings, runs the
    closing handshake and enforces ``max_size`` (1009); this class only moves
    bytes and hands whole messages to its :class:`Handler`. Compared with the
    library's own asyncio connection it keeps no task, no receive queue and no
    handshake headers per connection, which is most of an idle connection's memory.
    """

    __slots__ = ("_counted", "_frames", "_frames_text", "_gate", "_path", "_paused", "_timer",
                 "edge", "handler", "ip", "protocol", "transport")

    def __init__(self, edge: WsEdge) -> None:
        ws = edge.settings.ws
        self.edge = edge
        self.protocol = ServerProtocol(
            origins=edge.origins,  # type: ignore[arg-type]
            extensions=[ServerPerMessageDeflateFactory()] if ws.compression else None,
            subprotocols=[Subprotocol(e.value) for e in Encoding] + [Subprotocol("mqtt")],
            # the library binds this to the protocol, so it gets (protocol, offered)
            select_subprotocol=lambda _protocol, offered: self._select(offered),
            max_size=ws.max_message_size,
        )
        self.transport: asyncio.Transport | None = None
        self.handler: Handler | None = None
        self.ip = ""
        self._path = ""
        self._frames: list[bytes] | None = None  # a fragmented message being assembled
        self._frames_text = False
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._paused = False
        self._gate: asyncio.Future[None] | None = None  # set while the transport is full

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = t.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else ""
        self.edge.connections_open.add(self)
        self._timer = asyncio.get_running_loop().call_later(
            self.edge.settings.ws.connect_timeout, t.abort)  # handshake deadline

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, Frame):
                self._on_frame(event)
        self.send_data()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self.send_data()
        return None  # the closing handshake never needs to write after EOF

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: paced senders wait."""
        if self._gate is None:
            self._gate = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and not gate.done():
            gate.set_result(None)
        writable = getattr(self.handler, "on_writable", None)  # MQTT over WebSocket
        if writable is not None:
            writable()

    async def drained(self) -> None:
        """Return once the transport's buffer is below its low-water mark (or gone)."""
        if self._gate is not None:
            await asyncio.shield(self._gate)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()  # wake paced senders: they see the session closing
        if self._timer is not None:
            self._timer.cancel()
        self.edge.connections_open.discard(self)
        if self._counted:
            self.edge.release(self.ip)
        if self.handler is not None:
            handler, self.handler = self.handler, None
            handler.on_close()

    # -- handshake ---------------------------------------------------------------------

    def _select(self, offered: Any) -> Any:
        if self.edge.is_mqtt(self._path):
            # MQTT over WebSocket: the subprotocol is "mqtt" [MQTT-6.0.0-3]
            return Subprotocol("mqtt") if "mqtt" in offered else None
        for e in Encoding:
            if e.value in offered:
                return Subprotocol(e.value)
        return None  # none offered (or none of ours): JSON, the default

    def _on_request(self, request: Request) -> None:
        self._path = request.path.split("?", 1)[0]
        response = self.edge.process_request(self, request)
        if response is None:
            response = self.protocol.accept(request)
        self.protocol.send_response(response)
        # The library's parser keeps the request alive for the connection's
        # life: drop its headers, which we no longer need (about 1 KiB).
        request.headers.clear()
        if response.status_code != 101:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.edge.admit(self.ip)
        self._counted = True
        if self.edge.is_mqtt(self._path):
            assert self.edge.mqtt_handler is not None
            self.handler = self.edge.mqtt_handler(self)
            return
        sub = self.protocol.subprotocol
        encoding = Encoding(sub) if sub in _ENCODINGS else Encoding.JSON
        self.handler = WsSession(self.edge, self, encoding)

    # -- frames --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self._frames, self._frames_text = [bytes(frame.data)], opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            if self._frames is not None:
                self._frames.append(bytes(frame.data))
                if frame.fin:
                    data, self._frames = b"".join(self._frames), None
                    self._message(data, self._frames_text)
        elif opcode is Opcode.PONG and self.handler is not None:
            self.handler.on_pong(bytes(frame.data))

    def _message(self, data: bytes, text: bool) -> None:
        if self.handler is None or self.protocol.state is not State.OPEN:
            return  # nothing is handled once the closing handshake has begun
        if text:
            # The library checks UTF-8 only in its own receive path, which we bypass:
            # "MUST _Fail the WebSocket Connection_" with 1007 (RFC 6455 sections 8.1, 7.4.1)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.close(CLOSE_INVALID_DATA, "invalid UTF-8 in a text frame")
                return
        self.handler.on_message(data, text)

    # -- writing and closing --------------------------------------------------------------

    def send_data(self) -> None:
        """Write what the protocol produced (handshake, pongs, close frames)."""
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()  # half-close; the peer closes the TCP connection
            else:
                transport.close()
        if self.protocol.close_expected() and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                _CLOSE_TIMEOUT, transport.abort)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the transport is cut if it has not ended in time
        (a peer that stopped reading never answers)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
        self.send_data()
        if self._timer is None and self.transport is not None:
            self._timer = asyncio.get_running_loop().call_later(
                _CLOSE_TIMEOUT, self.transport.abort)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()


class WsEdge:
    def __init__(self, settings: Settings, node: Node, tokens: TokenAuthority, acl: Acl,
                 metrics: Metrics, notifier: Notifier, presence: Presence,
                 http_routes: Mapping[str, Callable[[Request], Response]] | None = None
                 ) -> None:
        self.settings = settings
        self.node = node
        self.notifier = notifier
        self.presence = presence
        self.tokens = tokens
        self.acl = acl
        self.metrics = metrics
        self.flusher = Flusher()
        self.sessions: set[WsSession] = set()
        self.connections = 0  # after the handshake (the gauge)
        self.frames_out = 0  # frames written by sessions (a plain int: hot path)
        self.connections_open: set[WsConnection] = set()  # every TCP connection
        self.origins: list[str | None] | None = None
        if settings.ws.origins:
            self.origins = [*settings.ws.origins, None]  # non-browser clients send no Origin
        self._per_ip: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        # MQTT over WebSocket (set by the app when the MQTT broker runs)
        self.mqtt_handler: Callable[[WsConnection], Handler] | None = None
        self._routes = http_routes or {}
        register_wires(node)
        metrics.gauge("tidings_ws_connections", "open WebSocket connections",
                      lambda: float(self.connections))

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, ssl: Any = None) -> None:
        ws = self.settings.ws
        self._server = await asyncio.get_running_loop().create_server(
            lambda: WsConnection(self), ws.host, ws.port, ssl=ssl, reuse_address=True,
            reuse_port=self.settings.node.reuse_port or None, backlog=4096)
        if ws.ping_interval:
            self._keepalive_task = asyncio.get_running_loop().create_task(
                self._keepalive(ws.ping_interval))

    async def _keepalive(self, interval: float) -> None:
        """Ping every session once per ``interval``; close those whose last ping
        went unanswered. One task for the node, none per connection."""
        while True:
            await asyncio.sleep(interval)
            for session in list(self.sessions):
                session.keepalive()

    def is_mqtt(self, path: str) -> bool:
        mqtt_path = self.settings.mqtt.websocket_path
        return bool(mqtt_path) and self.mqtt_handler is not None and path == mqtt_path

    def process_request(self, conn: WsConnection, request: Request) -> Response | None:
        """Our answer to a request before the upgrade; None lets the upgrade go on."""
        path = request.path.split("?", 1)[0]
        if path == self.settings.ws.path or self.is_mqtt(path):
            if self._per_ip[conn.ip] >= self.settings.ws.max_connections_per_ip:
                self.metrics.inc("tidings_errors_total", code="too_many_connections")
                return _plain(http.HTTPStatus.TOO_MANY_REQUESTS,
                              b"too many connections from this address\n")
            return None
        if self.settings.ws.demo_page:
            route = self._routes.get(path)  # the demo page's helpers (/dev/token)
            if route is not None:
                return route(request)
            return static_response(path)
        return _plain(http.HTTPStatus.NOT_FOUND, b"not found\n")

    def admit(self, ip: str) -> None:
        self._per_ip[ip] += 1
        self.connections += 1
        self.metrics.inc("tidings_connections_total", edge="ws")

    def release(self, ip: str) -> None:
        self.connections -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; tell every client to reconnect; close 1001; wait (bounded)."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for s in list(self.sessions):
            s.goodbye("shutdown")
        for conn in list(self.connections_open):
            if conn.handler is None or not isinstance(conn.handler, WsSession):
                conn.close(CLOSE_GOING_AWAY, "shutdown")
        deadline = time.monotonic() + timeout
        while self.connections_open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.connections_open:
            log.warning("connections still open after %.1fs; dropping them", timeout)
            for conn in list(self.connections_open):
                if conn.transport is not None:
                    conn.transport.abort()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)


def static_response(path: str) -> Response:
    """Files of the demo page and its JS client (:mod:`tidings.demo_files`)."""
    name = "index.html" if path in ("/", "") else path.lstrip("/")
    if ".." in name.split("/") or name.startswith("."):
        return _plain(http.HTTPStatus.NOT_FOUND, b"not found\n")
    body = demo_file(name)
    if body is None:
        return _plain(http.HTTPStatus.NOT_FOUND, b"not found\n")
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype == "application/javascript":
        ctype += "; charset=utf-8"
    return _plain(http.HTTPStatus.OK, body, ctype)


def _plain(status: http.HTTPStatus, body: bytes, ctype: str = "text/plain; charset=utf-8"
           ) -> Response:
    # The connection ends after this response (only an upgrade keeps it): say so,
    # or a client that pools connections reuses one the server has closed.
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
                       ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)
