"""Presence records users "seen" for segments' ``active_within`` (issue 12).

A device connecting (WS or MQTT) records its user in the store, so a segment
with ``active_within`` selects them; :class:`tidings.presence.Seen` bounds it
to one write per user per ``presence.seen_interval`` on a node (the time is a
fake clock moved by hand), in batches, and with interval 0 records nothing; a
device still connected is recorded again every ``presence.seen_refresh``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conftest import MakeNode, Node
from support.mqtt import clients, paho, wait_until
from tidings.errors import Unavailable
from tidings.metrics import Metrics
from tidings.presence import Seen

__all__ = ["clients"]  # the fixture, imported by name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Writes:
    """What Seen hands its writer, batch by batch; fails while ``down``."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.down = False

    async def __call__(self, users: Sequence[str]) -> None:
        if self.down:
            raise Unavailable("store down")
        self.batches.append(list(users))

    @property
    def users(self) -> list[str]:
        return [u for b in self.batches for u in b]


async def count(node: Node, name: str) -> int:
    status, body = await node.api("GET", f"/v1/segments/{name}/count")
    assert status == 200, body
    return int(body["count"])


async def test_ws_and_mqtt_devices_make_their_users_active(node: Node,
                                                           clients: list[Any]) -> None:
    status, _ = await node.api("PUT", "/v1/segments/active", {"active_within": "1h"})
    assert status == 201
    assert await count(node, "active") == 0
    await node.client("alice")
    await wait_until(lambda: count(node, "active"), what="alice seen")
    await paho(clients, node.app.mqtt_port, "dev", token=node.token("bob"))

    async def both() -> bool:
        status, body = await node.api("GET", "/v1/segments/active/users")
        return status == 200 and body["users"] == ["alice", "bob"]

    await wait_until(both, what="bob seen")


async def test_no_record_with_interval_zero(make_node: MakeNode) -> None:
    node = await make_node(presence__seen_interval=0.0)
    await node.api("PUT", "/v1/segments/active", {"active_within": "1h"})
    tab = await node.client("alice")
    assert (await tab.request("ping"))["ok"]  # connected and answering
    await tab.close()
    status, _ = await node.api("GET", "/v1/users/alice/unread")  # a round trip later
    assert status == 200
    assert await count(node, "active") == 0


async def test_once_per_user_per_interval_in_batches() -> None:
    clock, writes = Clock(), Writes()
    seen = Seen(writes, 60.0, Metrics(), clock=clock)
    for i in range(250):
        seen.note(f"u{i:03}")
        seen.note(f"u{i:03}")  # a second device of the same user
    await wait_until(lambda: len(writes.users) == 250, what="all written")
    assert writes.users == [f"u{i:03}" for i in range(250)]
    assert max(len(b) for b in writes.batches) <= 100
    clock.now += 59.0
    seen.note("u000")  # within the interval: nothing
    clock.now += 1.0
    seen.note("u001")  # a full interval later: recorded again
    await wait_until(lambda: len(writes.users) == 251, what="the repeat written")
    assert writes.users[-1] == "u001"
    await seen.close()


async def test_a_failed_write_is_tried_again_at_the_next_note() -> None:
    clock, writes = Clock(), Writes()
    metrics = Metrics()
    seen = Seen(writes, 60.0, metrics, clock=clock)
    writes.down = True
    seen.note("alice")
    await wait_until(lambda: metrics.get("tidings_errors_total",
                                           code="seen_unavailable") == 1, what="counted")
    writes.down = False
    seen.note("alice")  # not held back by the interval: the last record failed
    await wait_until(lambda: writes.users == ["alice"], what="written")
    await seen.close()


async def test_a_device_still_connected_is_seen_again(make_node: MakeNode) -> None:
    """``presence.seen_refresh``: a user whose device stays connected is recorded
    again, so a long-lived connection keeps them in ``active_within`` segments."""
    node = await make_node(presence__seen_interval=0.05, presence__seen_refresh=0.1)
    store = node.app.node.store
    await node.client("alice")
    await wait_until(lambda: store.last_seen("alice"), what="seen at connect")
    first = await store.last_seen("alice")
    assert first is not None

    async def again() -> bool:
        last = await store.last_seen("alice")
        return last is not None and last > first

    await wait_until(again, what="seen again while connected")
