"""The MQTT sessions contract (``tidings.store.contracts.mqtt_sessions``), per backend.

Persistent sessions' state and offline queues, on SQLite, Redis and Redis
Cluster through the one ``store`` fixture (``support/stores.py``): round trips
keep every field of a queued message, queues keep their order and their limit
(also under concurrent enqueues), sessions outlive a reopen, and client ids
never mix whatever characters they hold.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from support.stores import OpenStore
from tidings.store.base import MqttSessionState, MqttSubscription, QueuedMessage, Store

pytest_plugins = ["support.redis_servers"]  # session-wide redis-server / cluster fixtures


def queued(n: int, **kw: Any) -> QueuedMessage:
    return QueuedMessage(f"dev/{n}", b"\x00payload %d\xff" % n, 1, **kw)


async def test_mqtt_session_state_and_queue_round_trip(store: Store) -> None:
    assert await store.mqtt_session("c1") is None
    state = MqttSessionState(user="alice", subscribe=("home/#",), publish=(),
                             subs={"home/#": MqttSubscription(1, True, False, 7)},
                             expiry=3600, awaiting_pubrel=(3, 9))
    await store.mqtt_save("c1", state)
    assert await store.mqtt_session("c1") == (state, [])
    inflight = queued(1, retain=True, packet_id=7, pubrel=True, expires=1_700_000_060_000,
                      properties={"content_type": "text/plain"})
    await store.mqtt_save("c1", state, [inflight, queued(2)])
    got = await store.mqtt_session("c1")
    assert got is not None and got[1] == [inflight, queued(2)]
    # saving the state alone keeps the queue; saving a queue replaces it
    await store.mqtt_save("c1", replace(state, expiry=60))
    got = await store.mqtt_session("c1")
    assert got == (replace(state, expiry=60), [inflight, queued(2)])
    await store.mqtt_save("c1", state, [])
    assert await store.mqtt_session("c1") == (state, [])


async def test_mqtt_enqueue_keeps_order_and_drops_over_the_limit(store: Store) -> None:
    for client_id in ("c1", "c2"):
        await store.mqtt_save(client_id, MqttSessionState(user=client_id))
    dropped = await store.mqtt_enqueue([("c1", queued(1)), ("c2", queued(2)),
                                        ("c1", queued(3)), ("c1", queued(4))], limit=2)
    assert dropped == 1  # c1's third: its queue was at the limit
    c1, c2 = await store.mqtt_session("c1"), await store.mqtt_session("c2")
    assert c1 is not None and c1[1] == [queued(1), queued(3)]
    assert c2 is not None and c2[1] == [queued(2)]
    assert await store.mqtt_enqueue([("c2", queued(5))], limit=2) == 0
    assert await store.mqtt_enqueue([("c2", queued(6))], limit=2) == 1
    assert await store.mqtt_enqueue([], limit=2) == 0


async def test_mqtt_delete_and_list_sessions(open_store: OpenStore) -> None:
    s1 = await open_store()
    assert await s1.mqtt_sessions() == []
    for i in range(5):
        await s1.mqtt_save(f"client-{i}", MqttSessionState(expiry=i), [queued(i)])
    await s1.mqtt_delete("client-3")
    await s1.mqtt_delete("never-saved")
    assert await s1.mqtt_session("client-3") is None
    await s1.close()
    s2 = await open_store()  # sessions outlive the process
    assert sorted(await s2.mqtt_sessions(), key=lambda cs: cs[0]) == [
        (f"client-{i}", MqttSessionState(expiry=i)) for i in (0, 1, 2, 4)]
    got = await s2.mqtt_session("client-4")
    assert got == (MqttSessionState(expiry=4), [queued(4)])


async def test_every_field_of_a_queued_message_round_trips(store: Store) -> None:
    """Binary payloads (empty, every byte value), QoS 0-2, flags, expiry and v5
    properties come back exactly as stored, through save and through enqueue."""
    messages = [
        QueuedMessage("a/b", b"", 0),
        QueuedMessage("a/b", bytes(range(256)), 2, retain=True, packet_id=65535, pubrel=True,
                      expires=1_700_000_000_123,
                      properties={"content_type": "application/octet-stream",
                                  "user_properties": [["k", "v"], ["k", "v2"]],
                                  "correlation_data": "0a0b", "payload_format": 0}),
        QueuedMessage("ünï/cødé/#x", "héllo".encode(), 1, packet_id=1),
    ]
    await store.mqtt_save("c1", MqttSessionState(expiry=1), messages)
    await store.mqtt_save("c2", MqttSessionState())
    assert await store.mqtt_enqueue([("c2", m) for m in messages], limit=10) == 0
    for client_id in ("c1", "c2"):
        got = await store.mqtt_session(client_id)
        assert got is not None and got[1] == messages


async def test_a_deleted_session_comes_back_empty(store: Store) -> None:
    """Delete forgets the queue with the state: a new session of that client id
    starts with nothing held for it."""
    await store.mqtt_save("c1", MqttSessionState(expiry=1), [queued(1), queued(2)])
    await store.mqtt_delete("c1")
    assert await store.mqtt_session("c1") is None
    assert ("c1", MqttSessionState(expiry=1)) not in await store.mqtt_sessions()
    await store.mqtt_save("c1", MqttSessionState(expiry=2))
    assert await store.mqtt_session("c1") == (MqttSessionState(expiry=2), [])


async def test_concurrent_enqueues_never_pass_the_limit(store: Store) -> None:
    """Atomic per session: racing batches fill the queue to exactly ``limit``, the
    rest is counted as dropped, and every kept message is one that was sent, once."""
    await store.mqtt_save("c1", MqttSessionState())
    await store.mqtt_save("c2", MqttSessionState())
    limit, batches = 7, 12
    results = await asyncio.gather(*(
        store.mqtt_enqueue([("c1", queued(b * 10 + i)) for i in range(3)]
                           + [("c2", queued(1000 + b))], limit=limit)
        for b in range(batches)))
    assert sum(results) == batches * 4 - 2 * limit
    c1, c2 = await store.mqtt_session("c1"), await store.mqtt_session("c2")
    assert c1 is not None and c2 is not None
    assert len(c1[1]) == limit and len(c2[1]) == limit
    kept = [m.topic for m in c1[1]]
    assert len(set(kept)) == limit
    assert all(m == queued(int(m.topic.split("/")[1])) for m in c1[1])  # as sent
    assert {m.topic for m in c1[1]} <= {f"dev/{b * 10 + i}" for b in range(batches)
                                        for i in range(3)}
    # one batch's messages to one session stay in the order it gave them
    for b in range(batches):
        mine = [int(t.split("/")[1]) for t in kept if int(t.split("/")[1]) // 10 == b]
        assert mine == sorted(mine)


async def test_client_ids_never_mix(store: Store) -> None:
    """Client ids are opaque: ids that look like key syntax or differ only by
    escaping keep their own state and queue."""
    ids = ["a", "a}b", "a%7Db", "{ms:0}", "ms:0", "a:queue", "", "ü/ß #+"]
    for n, client_id in enumerate(ids):
        await store.mqtt_save(client_id, MqttSessionState(expiry=n), [queued(n)])
    for n, client_id in enumerate(ids):
        assert await store.mqtt_session(client_id) == (MqttSessionState(expiry=n), [queued(n)])
    assert sorted(await store.mqtt_sessions(), key=lambda cs: cs[0]) == sorted(
        ((client_id, MqttSessionState(expiry=n)) for n, client_id in enumerate(ids)),
        key=lambda cs: cs[0])
    await store.mqtt_delete("a}b")
    assert await store.mqtt_session("a") == (MqttSessionState(expiry=0), [queued(0)])
    assert await store.mqtt_session("a%7Db") == (MqttSessionState(expiry=2), [queued(2)])
