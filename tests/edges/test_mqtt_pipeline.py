"""PUBLISH packets a client sends back to back are stored in groups, yet each is
acknowledged in the order sent, only once stored, and each topic keeps its order."""

from __future__ import annotations

from typing import Any

import pytest

from support.mqtt import (
    PUBACK,
    SUBACK,
    NodeMaker,
    clients,
    make_node,
    metric,
    pub_token,
    publish_packet,
    raw,
    subscribe_packet,
)

_FIXTURES = (clients, make_node)  # fixtures from support.mqtt, used by name below

NOT_AUTHORIZED = 0x87


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_pipelined_publishes_are_acknowledged_in_order(
        make_node: NodeMaker, clients: list[Any], v5: bool) -> None:
    """60 QoS 1 PUBLISH packets to three topics (one refused by the ACL in the
    middle) in one write: 60 PUBACKs in packet order (5.0: the refused one says
    so in its turn; 3.1.1 acknowledges and drops it), the subscriber gets the
    others in order, and the node stored them in groups."""
    n = await make_node()
    port = n.app.mqtt_port
    watcher = await raw(clients, port, "watcher", v5=v5, username="d",
                        password=n.token("bob"))
    await watcher.send(subscribe_packet(1, ("m/#", 0), v5=v5))
    assert (await watcher.recv()).type == SUBACK
    burst = await raw(clients, port, "burst", v5=v5, username="d", password=pub_token(n))
    count, refused = 60, 30
    groups0 = await metric(n, "tidings_publish_group_size_count")
    packets = [publish_packet("users/someone/x" if i == refused else f"m/{i % 3}",
                              b"%d" % i, qos=1, pid=i, v5=v5) for i in range(1, count + 1)]
    await burst.send(b"".join(packets))
    acks = [await burst.recv() for _ in range(count)]
    assert [(a.type, a.pid) for a in acks] == [(PUBACK, i) for i in range(1, count + 1)]
    if v5:
        assert [a.reason for a in acks] == [NOT_AUTHORIZED if i == refused else 0
                                           for i in range(1, count + 1)]
    got = [(await watcher.recv_publish()).publish() for _ in range(count - 1)]
    for t in range(3):
        assert [int(p[1]) for p in got if p[0] == f"m/{t}"] == \
            [i for i in range(1, count + 1) if i % 3 == t and i != refused]
    groups = await metric(n, "tidings_publish_group_size_count") - groups0
    assert groups <= count / 2, groups
