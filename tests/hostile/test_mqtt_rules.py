"""An MQTT will meets the rules of any PUBLISH: the session layer's, asked when it is due.

The probe: a will is a message the client hands over at CONNECT and the
server publishes later for it. It used to go to the node after an ACL check
only, so a device could have a message over ``limits.max_message_size`` or on
a topic over the ``topics.*`` limits published (and retained) by leaving
without DISCONNECT, though the same PUBLISH is refused. Now a will passes
``Operations.check_publish`` like every publish path; a refused one is
dropped and counted, and the client's other messages are unaffected.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from support.mqtt import QUIET, clients, metric, paho, pub_token

_FIXTURES = (clients,)  # re-exported fixture from test_mqtt

_LIMITS = {"limits__max_message_size": 64, "topics__max_length": 32}


@pytest.mark.parametrize(("what", "topic", "payload", "code"), [
    ("over limits.max_message_size", "wills/big", b"x" * 65, "too_large"),
    ("over topics.max_length", "wills/" + "t" * 40, b"gone", "bad_topic"),
], ids=["size", "topic"])
@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_a_will_breaking_the_publish_rules_is_dropped(
        make_node: Any, clients: list[Any], v5: bool, what: str, topic: str,
        payload: bytes, code: str) -> None:
    """A will over a publish limit (``what``) is not published, nor retained; a
    fitting one is, and the refusal is counted under its error code."""
    n = await make_node(**_LIMITS)
    port = n.app.mqtt_port
    watcher = await paho(clients, port, "watcher", token=n.token("alice"))
    assert await watcher.subscribe(("wills/#", 1)) == [1]
    bad = await paho(clients, port, "bad-will", token=pub_token(n), v5=v5,
                     will=(topic, payload, 1, True))
    good = await paho(clients, port, "good-will", token=pub_token(n), v5=v5,
                      will=("wills/good", b"gone", 1, False))
    await asyncio.to_thread(bad.drop)
    await asyncio.to_thread(good.drop)
    m = await watcher.message()  # the good will arrives; the bad one never does
    assert (m.topic, m.payload) == ("wills/good", b"gone")
    await watcher.no_message(QUIET)
    assert await metric(n, "tidings_errors_total", code=code) >= 1
    assert await metric(n, "tidings_mqtt_wills_total") == 1

    late = await paho(clients, port, "late", token=n.token("alice"), v5=v5)
    assert await late.subscribe(("wills/#", 1)) == [1]
    await late.no_message(QUIET)  # nothing was retained for the bad will either
