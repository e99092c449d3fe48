"""MQTT reason codes come from the error catalogue, and only codes the packet may carry.

The probe: with the store down, a 5.0 client's QoS 1 PUBLISH was answered with
PUBACK 0x88 (Server unavailable), a code a PUBACK may not carry (5.0 section
3.4.2.1: a strict client takes the packet as malformed). Now the error's
reason code goes through the MQTT edge's one mapping (edges/mqtt/codes.py):
0x80 Unspecified error. 3.1.1 has no refusal in a PUBACK: the connection
closes and the client sends the message again.
"""

from __future__ import annotations

from typing import Any

import pytest

from support.mqtt import PUBACK, Raw, clients, pub_token, publish_packet
from tidings.protocol.mqtt.reason_codes import VALID_REASON_CODES

pytest_plugins = ["support.redis_servers"]
_FIXTURES = (clients,)  # re-exported fixture from test_mqtt


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_publish_while_the_store_is_down(make_node: Any, redis_factory: Any,
                                               clients: list[Any], v5: bool) -> None:
    server = redis_factory.server()
    n = await make_node(store__backend="redis", redis__url=server.url)
    r, _ = await Raw.connect(n.app.mqtt_port, f"down-{v5}", v5=v5, username="d",
                             password=pub_token(n))
    clients.append(r)
    await r.send(publish_packet("t/up", b"1", qos=1, pid=1, v5=v5))
    ack = await r.recv()
    assert (ack.type, ack.reason) == (PUBACK, 0)  # the store takes it
    server.stop()
    try:
        await r.send(publish_packet("t/down", b"2", qos=1, pid=2, v5=v5))
        if v5:
            ack = await r.recv()
            assert ack.type == PUBACK
            assert ack.reason == 0x80 and ack.reason in VALID_REASON_CODES[PUBACK]
        else:
            assert await r.closed() == []  # no refusal to send: closed, the client retries
    finally:
        server.start()
