"""The stored MQTT session state (``MqttSessionState``) reads what older servers wrote.

The state used to travel as a plain ``dict``; it is now a dataclass, stored in
the same JSON form. These tests write literal JSON as an older server did,
straight into SQLite's table and Redis's hash (the key layout documented in
``store/redis.py``), and read it back through the store; and check that what
the store writes now is that same JSON. The last test resumes such a session
from an MQTT client on a node.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from conftest import start_node, stop_node
from support.mqtt import Paho, broker, clients, wait_until
from tidings.store.base import MqttSessionState, MqttSubscription, Store
from tidings.store.redis import RedisStore
from tidings.store.sqlite import SqliteStore

pytest_plugins = ["support.redis_servers"]

__all__: list[str] = []
_FIXTURES = (clients,)  # re-exported fixture from test_mqtt

# What MqttSession.state() returned (and the stores wrote) before the dataclass.
OLD_STATE: dict[str, Any] = {
    "user": "alice",
    "subscribe": ["users/alice/#", "home/#"],
    "publish": None,
    "expiry": 3600,
    "disconnected_at": 1_700_000_000.5,
    "subs": {"home/#": [1, False, True, 5], "$share/g/home/+": [2, False, False, None]},
    "awaiting_pubrel": [4, 9],
}
OLD_STATE_TYPED = MqttSessionState(
    user="alice", subscribe=("users/alice/#", "home/#"), publish=None, expiry=3600,
    disconnected_at=1_700_000_000.5,
    subs={"home/#": MqttSubscription(1, False, True, 5),
          "$share/g/home/+": MqttSubscription(2, False, False, None)},
    awaiting_pubrel=(4, 9))
# An older form still: no QoS 2 state yet, no grants, an anonymous session.
OLDER_STATE: dict[str, Any] = {"user": None, "expiry": 60, "disconnected_at": None,
                               "subs": {"a/b": [0, True, False, None]}}


def _redis_state_key(client_id: str) -> str:
    """``P {ms:<bucket>}:state`` with the default prefix (store/redis.py key layout)."""
    return "tidings:{ms:" + str(zlib.crc32(client_id.encode()) % 64) + "}:state"


class Backend:
    """A store plus raw access to where it keeps session state."""

    def __init__(self, store: Store, put: Any, get: Any) -> None:
        self.store, self.put, self.get = store, put, get


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        sq = SqliteStore(tmp_path / "store")
        await sq.open()

        def put(client_id: str, raw: bytes) -> None:
            with sqlite3.connect(sq.path) as db:
                db.execute("INSERT OR REPLACE INTO mqtt_sessions (client_id, state) "
                           "VALUES (?, ?)", (client_id, raw))

        def get(client_id: str) -> bytes:
            with sqlite3.connect(sq.path) as db:
                row = db.execute("SELECT state FROM mqtt_sessions WHERE client_id = ?",
                                 (client_id,)).fetchone()
            return bytes(row[0])

        yield Backend(sq, put, get)
        await sq.close()
        return
    server = request.getfixturevalue("redis_server")
    server.flushall()
    rs = RedisStore(server.url)
    await rs.open()
    raw_client = redis.Redis.from_url(server.url)

    def rput(client_id: str, raw: bytes) -> None:
        raw_client.hset(_redis_state_key(client_id), client_id, raw)

    def rget(client_id: str) -> bytes:
        value = raw_client.hget(_redis_state_key(client_id), client_id)
        assert isinstance(value, bytes)
        return value

    yield Backend(rs, rput, rget)
    raw_client.close()
    await rs.close()


async def test_a_session_saved_in_the_old_format_loads(backend: Backend) -> None:
    backend.put("legacy", orjson.dumps(OLD_STATE))
    backend.put("older", orjson.dumps(OLDER_STATE))
    got = await backend.store.mqtt_session("legacy")
    assert got == (OLD_STATE_TYPED, [])
    older = await backend.store.mqtt_session("older")
    assert older == (MqttSessionState(user=None, expiry=60,
                                      subs={"a/b": MqttSubscription(0, True, False, None)}),
                     [])
    listed = dict(await backend.store.mqtt_sessions())
    assert listed == {"legacy": OLD_STATE_TYPED, "older": older[0]}


async def test_the_stored_format_is_unchanged(backend: Backend) -> None:
    """What the store writes now is what an older server wrote (and so could read)."""
    await backend.store.mqtt_save("legacy", OLD_STATE_TYPED)
    assert orjson.loads(backend.get("legacy")) == OLD_STATE


def test_empty_grants_stay_empty() -> None:
    """A token that granted no topics is not read back as one without a claim (None)."""
    state = MqttSessionState.from_json({**OLD_STATE, "subscribe": [], "publish": []})
    assert (state.subscribe, state.publish) == ((), ())


async def test_a_node_resumes_an_old_format_session(tmp_path: Path,
                                                    clients: list[Any]) -> None:
    """A session another server version left in the store (SQLite here) is resumed:
    session present, and its stored subscription delivers."""
    store = SqliteStore(tmp_path / "data")
    await store.open()
    await store.close()
    old = {**OLD_STATE, "disconnected_at": None, "subscribe": ["home/#"],
           "subs": {"home/#": [1, False, False, None]}, "awaiting_pubrel": []}
    with sqlite3.connect(store.path) as db:
        db.execute("INSERT INTO mqtt_sessions (client_id, state) VALUES (?, ?)",
                   ("legacy", orjson.dumps(old)))
    node = await start_node(tmp_path)
    try:
        await wait_until(lambda: "legacy" in broker(node).sessions,
                         what="the stored session registered")
        c = Paho(node.app.mqtt_port, "legacy", token=node.token("alice"), clean=False)
        clients.append(c)
        assert (await c.connack()).session_present
        await node.publish("home/hall", "on")
        assert orjson.loads((await c.message()).payload) == "on"
    finally:
        for cl in clients:
            await asyncio.to_thread(cl.close)
        clients.clear()
        await stop_node(node)
