"""MQTT test helpers: real clients for the broker and the bytes they exchange.

``Paho`` is paho-mqtt (3.1.1 and 5.0) on its own network thread, its callbacks
landing in queues a test awaits with bounded timeouts; ``Raw`` writes literal
packets over a real TCP socket and parses what comes back (for the tests where
the exact bytes matter: the QoS 2 flow, DUP, reason codes, malformed input).
The fixtures (``clients``, ``make_node``, ``open_broker``) are imported by name
by the modules that use them. Used by ``edges/test_mqtt*.py``, ``hostile/`` and
``cluster/``.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from conftest import API_KEY, JWT_SECRET, WAIT, Node, make_settings, start_with, stop_node
from tidings import config
from tidings.config import AclRule
from tidings.edges.mqtt import MqttBroker

QUIET = min(0.5, WAIT / 10)  # how long a negative check listens


# --- waiting ---------------------------------------------------------------------

async def wait_until(check: Any, limit: float = WAIT, what: str = "condition") -> None:
    """Poll ``check()`` (sync or async) until true, at most ``limit`` seconds."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def metric(node: Node, name: str, **labels: str) -> float:
    """One sample of ``GET /metrics`` (0 when the series is absent)."""
    status, text = await node.api("GET", "/metrics")
    assert status == 200
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                   if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- raw packets ---------------------------------------------------------------------
# Builders for the packets a test needs in many shapes. Tests whose subject is
# the bytes themselves write them out literally instead.

def vbi(n: int) -> bytes:
    """A Variable Byte Integer (section 1.5.5)."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + vbi(len(body)) + body


def props(*items: bytes) -> bytes:
    """A 5.0 property block from encoded properties (see ``u16``/``u32``)."""
    body = b"".join(items)
    return vbi(len(body)) + body


def u16(pid: int, value: int) -> bytes:
    return bytes([pid]) + value.to_bytes(2, "big")


def u32(pid: int, value: int) -> bytes:
    return bytes([pid]) + value.to_bytes(4, "big")


SESSION_EXPIRY, WILL_DELAY, SERVER_KEEP_ALIVE = 0x11, 0x18, 0x13
RECEIVE_MAXIMUM, TOPIC_ALIAS, MAXIMUM_PACKET_SIZE = 0x21, 0x23, 0x27
CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 2, 3, 4, 5, 6, 7
SUBACK, UNSUBACK, PINGRESP, DISCONNECT = 9, 11, 13, 14


def connect_packet(client_id: str, *, v5: bool = False, keepalive: int = 60,
                   clean: bool = True, username: str | None = None,
                   password: str | None = None,
                   will: tuple[str, bytes, int, bool] | None = None,
                   properties: bytes = b"\x00", will_properties: bytes = b"\x00") -> bytes:
    flags = 0x02 if clean else 0
    payload = utf8(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
        payload += (will_properties if v5 else b"") + utf8(topic) + utf8(message)
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += utf8(password)
    var = utf8("MQTT") + bytes([5 if v5 else 4, flags]) + keepalive.to_bytes(2, "big")
    return frame(0x10, var + (properties if v5 else b"") + payload)


def subscribe_packet(pid: int, *filters: tuple[str, int], v5: bool = False,
                     properties: bytes = b"\x00") -> bytes:
    body = pid.to_bytes(2, "big") + (properties if v5 else b"")
    body += b"".join(utf8(f) + bytes([options]) for f, options in filters)
    return frame(0x82, body)


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, pid: int | None = None,
                   retain: bool = False, dup: bool = False, v5: bool = False,
                   properties: bytes = b"\x00") -> bytes:
    first = 0x30 | (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    body = utf8(topic) + (pid.to_bytes(2, "big") if qos and pid else b"")
    return frame(first, body + (properties if v5 else b"") + payload)


def ack_packet(ptype: int, pid: int) -> bytes:
    return frame(ptype << 4 | (0x02 if ptype == PUBREL else 0), pid.to_bytes(2, "big"))


def parse_props(data: bytes, pos: int) -> tuple[dict[int, list[Any]], int]:
    """Read a 5.0 property block at ``pos``; return ({id: [values]}, the position after)."""
    length, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    end = pos + length
    out: dict[int, list[Any]] = {}
    while pos < end:
        pid = data[pos]
        pos += 1
        value: Any
        if pid in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):
            value, pos = data[pos], pos + 1
        elif pid in (0x13, 0x21, 0x22, 0x23):
            value, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif pid in (0x02, 0x11, 0x18, 0x27):
            value, pos = int.from_bytes(data[pos:pos + 4], "big"), pos + 4
        elif pid == 0x0B:
            value, shift = 0, 0
            while True:
                byte = data[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
        elif pid == 0x26:
            n = int.from_bytes(data[pos:pos + 2], "big")
            k = data[pos + 2:pos + 2 + n].decode()
            pos += 2 + n
            m = int.from_bytes(data[pos:pos + 2], "big")
            value, pos = (k, data[pos + 2:pos + 2 + m].decode()), pos + 2 + m
        else:  # strings and binary data
            n = int.from_bytes(data[pos:pos + 2], "big")
            value, pos = data[pos + 2:pos + 2 + n], pos + 2 + n
        out.setdefault(pid, []).append(value)
    return out, end


@dataclass
class RawPacket:
    """One packet from the server, split by its fixed header."""

    type: int
    flags: int
    body: bytes
    v5: bool

    @property
    def reason(self) -> int:
        """The reason code of a 5.0 ack / DISCONNECT / CONNACK (return code in 3.1.1)."""
        if self.type == CONNACK:
            return self.body[1]
        if self.type == DISCONNECT:
            return self.body[0] if self.body else 0
        if self.type in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            return self.body[2] if len(self.body) > 2 else 0
        raise ValueError(f"packet type {self.type} has no single reason code")

    @property
    def pid(self) -> int:
        if self.type == PUBLISH:
            pid = self.publish()[4]
            assert pid is not None, "a QoS 0 PUBLISH has no packet id"
            return pid
        return int.from_bytes(self.body[:2], "big")

    @property
    def session_present(self) -> bool:
        assert self.type == CONNACK
        return bool(self.body[0] & 1)

    def properties(self) -> dict[int, list[Any]]:
        assert self.v5
        pos = {CONNACK: 2, SUBACK: 2, UNSUBACK: 2, DISCONNECT: 1}.get(self.type)
        if self.type == PUBLISH:
            return self.publish()[5]
        if pos is None or len(self.body) <= pos:
            return {}
        return parse_props(self.body, pos)[0]

    def codes(self) -> list[int]:
        """SUBACK / UNSUBACK reason codes."""
        pos = parse_props(self.body, 2)[1] if self.v5 else 2
        return list(self.body[pos:])

    def publish(self) -> tuple[str, bytes, int, bool, int | None, dict[int, list[Any]], bool]:
        """(topic, payload, qos, retain, packet id, properties, dup)."""
        assert self.type == PUBLISH
        n = int.from_bytes(self.body[:2], "big")
        topic = self.body[2:2 + n].decode()
        pos = 2 + n
        qos = (self.flags >> 1) & 3
        pid = None
        if qos:
            pid = int.from_bytes(self.body[pos:pos + 2], "big")
            pos += 2
        properties: dict[int, list[Any]] = {}
        if self.v5:
            properties, pos = parse_props(self.body, pos)
        return (topic, self.body[pos:], qos, bool(self.flags & 1), pid, properties,
                bool(self.flags & 8))


class Raw:
    """A hand-driven MQTT client over a real TCP socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 v5: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.v5 = v5

    @classmethod
    async def open(cls, port: int, *, v5: bool = False,
                   tls: ssl.SSLContext | None = None) -> Raw:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=tls), WAIT)
        return cls(reader, writer, v5)

    @classmethod
    async def connect(cls, port: int, client_id: str, *, v5: bool = False,
                      expect: int = 0, **kw: Any) -> tuple[Raw, RawPacket]:
        """Open, send CONNECT, read the CONNACK and check its code is ``expect``."""
        raw = await cls.open(port, v5=v5)
        await raw.send(connect_packet(client_id, v5=v5, **kw))
        ack = await raw.recv()
        assert ack.type == CONNACK and ack.reason == expect, ack
        return raw, ack

    async def send(self, *data: bytes) -> None:
        for d in data:
            self.writer.write(d)
        await self.writer.drain()

    async def recv(self, within: float = WAIT) -> RawPacket:
        async def read() -> RawPacket:
            first = (await self.reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                byte = (await self.reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = await self.reader.readexactly(length)
            return RawPacket(first >> 4, first & 0x0F, body, self.v5)

        return await asyncio.wait_for(read(), within)

    async def recv_publish(self, within: float = WAIT) -> RawPacket:
        p = await self.recv(within)
        assert p.type == PUBLISH, p
        return p

    async def closed(self, within: float = WAIT) -> list[RawPacket]:
        """Read until the server closes; return what came before the close."""
        got: list[RawPacket] = []
        try:
            while True:
                got.append(await self.recv(within))
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return got

    async def ending(self, within: float = WAIT) -> tuple[list[RawPacket], bool]:
        """Read until the connection ends: (the packets before the end, whether it
        ended in a reset rather than the server's orderly close)."""
        got: list[RawPacket] = []
        try:
            while True:
                got.append(await self.recv(within))
        except asyncio.IncompleteReadError:
            return got, False
        except (ConnectionResetError, ssl.SSLError):
            return got, True

    async def silent(self, within: float = QUIET) -> None:
        """Assert no packet arrives within ``within`` seconds (a bounded negative check)."""
        try:
            p = await self.recv(within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected packet {p!r}")

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (a network failure, for the server)."""
        self.writer.transport.abort()

    async def disconnect(self) -> None:
        await self.send(b"\xe0\x00")
        self.writer.close()


# --- paho ----------------------------------------------------------------------------

@dataclass
class Connacked:
    code: int
    session_present: bool
    properties: Any


class Paho:
    """A real paho-mqtt client on its own network thread; callbacks land in queues.

    It never reconnects on its own during a test (a reconnect would hide a
    takeover or a close the test is checking).
    """

    def __init__(self, port: int, client_id: str = "", *, token: str | None = None,
                 username: str = "device", v5: bool = False, clean: bool = True,
                 keepalive: int = 30, transport: str = "tcp", ws_path: str = "/mqtt",
                 will: tuple[str, bytes, int, bool] | None = None,
                 will_props: dict[str, Any] | None = None,
                 connect_props: dict[str, Any] | None = None, tls_ca: str | None = None,
                 max_inflight: int = 20) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connacks: queue.Queue[Connacked] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.disconnects: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.v5 = v5
        kw: dict[str, Any] = {"protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                              "transport": transport}
        if not v5:
            kw["clean_session"] = clean
        c = self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **kw)
        c.reconnect_delay_set(3600, 3600)
        c.max_inflight_messages_set(max_inflight)  # 0: past the server's Receive Maximum
        if transport == "websockets":
            c.ws_set_options(path=ws_path)
        if tls_ca is not None:
            c.tls_set(ca_certs=tls_ca)
        if token is not None:
            c.username_pw_set(username, token)
        if will is not None:
            c.will_set(*will, properties=_paho_props(PacketTypes.WILLMESSAGE, will_props))
        c.on_message = lambda _c, _u, m: self.messages.put(m)
        c.on_connect = lambda _c, _u, f, rc, p: self.connacks.put(
            Connacked(int(rc.value), bool(f.session_present), p))
        c.on_subscribe = lambda _c, _u, mid, rcs, p: self.subacks.put(
            [int(r.value) for r in rcs])
        c.on_publish = lambda _c, _u, mid, rc, p: self.acks.put((mid, int(rc.value)))
        c.on_disconnect = lambda _c, _u, f, rc, p: self.disconnects.put((int(rc.value), p))
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if v5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = _paho_props(PacketTypes.CONNECT, connect_props)
        c.connect_async("127.0.0.1", port, **kwargs)
        c.loop_start()

    @staticmethod
    async def get(q: queue.Queue[Any], within: float = WAIT) -> Any:
        try:
            return await asyncio.to_thread(q.get, True, within)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {within}s") from None

    @staticmethod
    async def nothing(q: queue.Queue[Any], within: float = QUIET) -> None:
        try:
            got = await asyncio.to_thread(q.get, True, within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected {got!r}")

    async def connack(self, expect: int = 0) -> Connacked:
        ack: Connacked = await self.get(self.connacks)
        assert ack.code == expect, ack
        return ack

    async def subscribe(self, *topics: tuple[str, int], props: dict[str, Any] | None = None,
                        options: Any = None) -> list[int]:
        if options is not None:
            self.c.subscribe([(t, options(q)) for t, q in topics],
                             properties=_paho_props(PacketTypes.SUBSCRIBE, props))
        else:
            self.c.subscribe(list(topics),
                             properties=_paho_props(PacketTypes.SUBSCRIBE, props))
        codes: list[int] = await self.get(self.subacks)
        return codes

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                      retain: bool = False, props: dict[str, Any] | None = None) -> int:
        """Publish; for QoS 1/2 wait for the flow to finish and return its reason code."""
        info = self.c.publish(topic, payload, qos, retain,
                              properties=_paho_props(PacketTypes.PUBLISH, props))
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        if qos == 0:
            return 0
        while True:
            mid, rc = await self.get(self.acks)
            if mid == info.mid:
                return int(rc)

    async def message(self, within: float = WAIT) -> mqtt.MQTTMessage:
        m: mqtt.MQTTMessage = await self.get(self.messages, within)
        return m

    async def no_message(self, within: float = QUIET) -> None:
        await self.nothing(self.messages, within)

    async def disconnected(self) -> tuple[int, Any]:
        got: tuple[int, Any] = await self.get(self.disconnects)
        return got

    def drop(self) -> None:
        """Lose the network: stop the thread and close the socket without DISCONNECT."""
        self.c.loop_stop()
        sock = self.c.socket()
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _paho_props(ptype: int, values: dict[str, Any] | None) -> PahoProperties | None:
    if not values:
        return None
    p = PahoProperties(ptype)  # type: ignore[no-untyped-call]
    for k, v in values.items():
        setattr(p, k, v)
    return p


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    """Closes every Paho / Raw client a test appends, even when it fails."""
    made: list[Any] = []
    yield made
    for c in made:
        if isinstance(c, Paho):
            await asyncio.to_thread(c.close)
        else:
            c.abort()


def broker(node: Node) -> MqttBroker:
    """The node's MQTT broker (for its session table)."""
    assert node.app.mqtt is not None
    return node.app.mqtt


async def offline(node: Node, client_id: str) -> None:
    """Wait until the broker has seen the client go (its session is then offline)."""
    def gone() -> bool:
        s = broker(node).sessions.get(client_id)
        return s is None or s.conn is None

    await wait_until(gone, what=f"{client_id} offline")


async def stop_all(node: Node, clients: list[Any]) -> None:
    """Close the test's clients, then stop ``node`` (a restart test's first life)."""
    for c in clients:
        if isinstance(c, Paho):
            await asyncio.to_thread(c.close)
        else:
            c.abort()
    clients.clear()
    await stop_node(node)


def prop(m: mqtt.MQTTMessage, name: str) -> Any:
    """A 5.0 property of a received message (paho keeps them as attributes)."""
    assert m.properties is not None
    return getattr(m.properties, name)


NodeMaker = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[NodeMaker]:
    """``await make_node(acl=[...], mqtt__max_queued=3, ...)``: a node with overrides,
    stopped at the end of the test (after the clients, when requested before them)."""
    made: list[Node] = []

    async def make(*, acl: list[AclRule] | None = None, **overrides: Any) -> Node:
        settings = make_settings(tmp_path, **overrides)
        if acl is not None:
            settings.acl = acl
        n = await start_with(settings)
        made.append(n)
        return n

    yield make
    for n in made:
        await stop_node(n)


OPEN_BROKER = Path(__file__).resolve().parents[2] / "config" / "open-broker.toml"


@pytest.fixture
async def open_broker(tmp_path: Path) -> AsyncIterator[Node]:
    """A node from ``config/open-broker.toml`` as shipped, moved to loopback ports and
    a temporary data folder by environment variables (as a deployment would)."""
    env = {
        "TIDINGS_WS_HOST": "127.0.0.1", "TIDINGS_WS_PORT": "0",
        "TIDINGS_API_HOST": "127.0.0.1", "TIDINGS_API_PORT": "0",
        "TIDINGS_MQTT_HOST": "127.0.0.1", "TIDINGS_MQTT_PORT": "0",
        "TIDINGS_STORE_PATH": str(tmp_path / "data"),
        "TIDINGS_AUTH_JWT_SECRET": JWT_SECRET, "TIDINGS_API_KEYS": API_KEY,
    }
    n = await start_with(config.load(OPEN_BROKER, env))
    try:
        yield n
    finally:
        await stop_node(n)


async def paho(clients: list[Any], port: int, client_id: str = "", *,
               expect: int = 0, **kw: Any) -> Paho:
    """A connected Paho client (CONNACK checked), closed at the end of the test."""
    p = Paho(port, client_id, **kw)
    clients.append(p)
    await p.connack(expect)
    return p


async def notifications_device(node: Node, user: str, clients: list[Any]) -> Paho:
    """``user``'s phone on MQTT (``<user>-phone``), subscribed at QoS 1 to their
    ``users/{uid}/notifications``; closed at the end of the test."""
    dev = await paho(clients, node.app.mqtt_port, f"{user}-phone", token=node.token(user))
    assert await dev.subscribe((f"users/{user}/notifications", 1)) == [1]
    return dev


async def raw(clients: list[Any], port: int, client_id: str, *, v5: bool = False,
              expect: int = 0, **kw: Any) -> Raw:
    r, _ = await Raw.connect(port, client_id, v5=v5, expect=expect, **kw)
    clients.append(r)
    return r


def pub_token(node: Node, user: str = "alice") -> str:
    """A token that may publish anywhere outside ``users/`` and ``$``."""
    return node.token(user, publish=["#"])

