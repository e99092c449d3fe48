"""MQTT headline: a device gets notifications and unread; WS <-> MQTT share topics."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from conftest import WAIT, Node


class Device:
    """A real paho-mqtt client on its own network thread; messages land in a queue."""

    def __init__(self, port: int, client_id: str, *, token: str | None,
                 version: int = mqtt.MQTTv311, clean: bool = True) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected: queue.Queue[Any] = queue.Queue()
        kw: dict[str, Any] = {"protocol": version}
        if version != mqtt.MQTTv5:
            kw["clean_session"] = clean
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, **kw)
        if token is not None:
            self.c.username_pw_set("device", token)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_connect = lambda c, u, f, rc, p: self.connected.put(rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.connected.put(rcs)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    async def get(self, q: queue.Queue[Any]) -> Any:
        return await asyncio.to_thread(q.get, True, WAIT)

    async def message(self) -> mqtt.MQTTMessage:
        message: mqtt.MQTTMessage = await self.get(self.messages)
        return message

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def test_device_gets_notifications_unread_and_reads(node: Node) -> None:
    port = node.app.mqtt_port
    tab = await node.client("alice", device="tab")
    d = Device(port, "kitchen", token=node.token("alice"))
    try:
        rc = await d.get(d.connected)
        assert rc == 0
        d.c.subscribe([("users/alice/notifications", 1), ("users/alice/unread", 1)])
        codes = await d.get(d.connected)
        assert [int(c.value) if hasattr(c, "value") else c for c in codes] == [1, 1]
        status, body = await node.api("POST", "/v1/notify", {"users": ["alice"], "title": "hi"})
        assert status == 200
        got = {}
        for _ in range(2):
            m = await d.message()
            got[m.topic] = orjson.loads(m.payload)
        assert got["users/alice/notifications"]["id"] == body["id"]
        assert got["users/alice/unread"] == {"count": 1}
        await tab.push()
        d.c.publish("users/alice/read", orjson.dumps({"ids": [body["id"]]}), qos=1)
        ev = await tab.push()
        assert ev["type"] == "read" and ev["unread"] == 0 and ev["device"] == "kitchen"
    finally:
        d.close()


async def test_sensor_to_browser_and_back(node: Node) -> None:
    port = node.app.mqtt_port
    browser = await node.client("alice")
    await browser.request("subscribe", topic="home/+/temp")
    sensor = Device(port, "sensor-1", token=node.token("alice", publish=["home/#"]))
    try:
        assert await sensor.get(sensor.connected) == 0
        sensor.c.publish("home/kitchen/temp", b"21.5", qos=1)
        m = await browser.push()
        assert m["topic"] == "home/kitchen/temp" and m["data"] == 21.5
        sensor.c.subscribe("news/#", qos=0)
        await sensor.get(sensor.connected)
        await node.publish("news/sports", {"score": "2-1"})
        got = await sensor.message()
        assert got.topic == "news/sports" and orjson.loads(got.payload) == {"score": "2-1"}
    finally:
        sensor.close()


async def test_a_huge_connect_is_refused_before_authentication(node: Node) -> None:
    """An unauthenticated peer cannot make the broker buffer a large packet: a CONNECT
    announcing more than 64 KiB is refused from its fixed header alone."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.app.mqtt_port)
    writer.write(bytes.fromhex("10f0ffff7f") + b"\x00" * 1024)  # remaining length ~256 MiB
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed, nothing buffered
    writer.close()


async def test_a_qos0_retained_message_is_not_upgraded(node: Node) -> None:
    """[MQTT-3.8.4-8]: delivered at the lower of its own QoS and the granted one."""
    port = node.app.mqtt_port
    token = node.token("alice", publish=["keep/#"])
    pub = Device(port, "ret-pub", token=token)
    sub = None
    try:
        assert await pub.get(pub.connected) == 0
        info = pub.c.publish("keep/zero", b"z", qos=0, retain=True)
        info.wait_for_publish(WAIT)
        _, hist = await node.api("GET", "/v1/topics/keep/zero/history")
        for _ in range(50):  # QoS 0 has no ack: wait until it is stored
            if hist.get("items"):
                break
            await asyncio.sleep(0.05)
            _, hist = await node.api("GET", "/v1/topics/keep/zero/history")
        sub = Device(port, "ret-sub", token=token)
        assert await sub.get(sub.connected) == 0
        sub.c.subscribe("keep/zero", qos=1)
        await sub.get(sub.connected)
        m = await sub.message()
        assert (m.topic, m.retain, m.qos) == ("keep/zero", True, 0)
    finally:
        pub.close()
        if sub is not None:
            sub.close()
