"""The presence webhook, received by a real local HTTP server (issue 3, item 5;
since issue 13 one subscriber of the node's event stream).

A backend learns when a user's first device comes online and when the last
one has been gone for ``presence.debounce`` seconds, so it can fall back to
e-mail or mobile push while the user is away. Events are signed
(``X-Tidings-Signature: sha256=<hmac of the raw body>``), retried with
backoff, and never hold up delivery.

"Nothing was sent" checks are deterministic: the webhook worker posts events
one at a time in the order they happen, so after the step under test another
user ("carol", the *marker*) comes online, and the next event the server
receives must be hers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from conftest import WAIT, MakeNode, Node, stop_node

SECRET = "webhook-secret-0123456789"


@dataclass
class Received:
    raw: bytes
    headers: dict[str, str]

    @property
    def event(self) -> dict[str, Any]:
        return orjson.loads(self.raw)  # type: ignore[no-any-return]


@dataclass
class Hook:
    """A real webhook receiver on a loopback port.

    ``fail`` statuses are answered first, one per request; ``hang`` (when set
    and not yet released) keeps each request waiting until the test releases it.
    """

    url: str = ""
    attempts: list[Received] = field(default_factory=list)
    delivered: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    fail: list[int] = field(default_factory=list)
    hang: asyncio.Event | None = None
    _seen: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        got = Received(await request.read(), dict(request.headers))
        async with self._seen:
            self.attempts.append(got)
            self._seen.notify_all()
        if self.hang is not None:
            await self.hang.wait()
        if self.fail:
            return web.Response(status=self.fail.pop(0))
        await self.delivered.put(got)
        return web.Response(status=204)

    async def next(self) -> Received:
        """The next event answered with success (bounded wait)."""
        return await asyncio.wait_for(self.delivered.get(), WAIT)

    async def attempted(self, n: int) -> None:
        """Wait (bounded) until ``n`` requests have arrived, answered or not."""
        async with self._seen:
            await asyncio.wait_for(self._seen.wait_for(lambda: len(self.attempts) >= n), WAIT)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/presence", h.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    h.url = f"http://127.0.0.1:{port}/presence"
    try:
        yield h
    finally:
        if h.hang is not None:
            h.hang.set()
        await runner.cleanup()


@pytest.fixture
async def make_node(hook: Hook, make_node: MakeNode) -> MakeNode:
    """Nodes whose presence webhook is ``hook``. ``hook`` is set up first, so the
    nodes stop before the hook server."""

    async def make(**overrides: Any) -> Node:
        return await make_node(**{"presence__webhook": hook.url,
                                  "presence__webhook_secret": SECRET,
                                  "presence__debounce": 0.3, "presence__retries": 3,
                                  **overrides})

    return make


def assert_signed(r: Received, secret: str = SECRET) -> None:
    want = "sha256=" + hmac.new(secret.encode(), r.raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(r.headers.get("X-Tidings-Signature", ""), want), r.headers


def assert_event(r: Received, event: str, user: str) -> None:
    body = r.event
    assert (body["event"], body["user"], body["node"]) == (event, user, "test-node"), body
    assert abs(body["ts"] - time.time()) < 60
    assert r.headers["Content-Type"].startswith("application/json")
    assert_signed(r)


async def marker(node: Node, hook: Hook) -> None:
    """Carol comes online; her event must be the next one (nothing came before it)."""
    carol = await node.client("carol", device="carol-phone")
    assert_event(await hook.next(), "online", "carol")
    await carol.close()


async def devices_of(node: Node, user: str) -> list[str]:
    status, body = await node.api("GET", f"/v1/users/{user}/devices")
    assert status == 200
    return sorted(d["device"] for d in body["devices"])


async def until_no_devices(node: Node, user: str) -> None:
    deadline = time.monotonic() + WAIT
    while await devices_of(node, user):
        assert time.monotonic() < deadline, f"{user}'s devices never left"
        await asyncio.sleep(0.01)


# -- online / offline --------------------------------------------------------------------


async def test_first_device_online_sends_one_signed_event(make_node: MakeNode,
                                                          hook: Hook) -> None:
    node = await make_node()
    laptop = await node.client("alice", device="laptop")
    assert_event(await hook.next(), "online", "alice")
    phone = await node.client("alice", device="phone")
    assert await devices_of(node, "alice") == ["laptop", "phone"]
    await marker(node, hook)  # the second device sent nothing
    assert len(hook.attempts) == 2
    await laptop.close()
    await phone.close()


async def test_offline_once_after_the_debounce(make_node: MakeNode, hook: Hook) -> None:
    node = await make_node(presence__debounce=0.3)
    laptop = await node.client("alice", device="laptop")
    phone = await node.client("alice", device="phone")
    assert_event(await hook.next(), "online", "alice")
    await laptop.close()  # one device left: still online
    await phone.close()
    gone = time.monotonic()
    offline = await hook.next()
    assert time.monotonic() - gone >= 0.3 * 0.9, "offline came before the debounce"
    assert_event(offline, "offline", "alice")
    await marker(node, hook)  # exactly one offline
    # Back again: a new online event.
    again = await node.client("alice", device="tablet")
    assert_event(await hook.next(), "online", "alice")
    await again.close()


async def test_reconnect_inside_the_debounce_sends_nothing(make_node: MakeNode,
                                                           hook: Hook) -> None:
    node = await make_node(presence__debounce=1.0)
    phone = await node.client("alice", device="phone")
    assert_event(await hook.next(), "online", "alice")
    await phone.close()
    closed = time.monotonic()
    await until_no_devices(node, "alice")  # the server has seen the last device go
    phone = await node.client("alice", device="phone")
    assert time.monotonic() - closed < 1.0, "too slow to reconnect inside the debounce"
    # Carol comes and goes; her offline is due after alice's would have been.
    carol = await node.client("carol", device="carol-phone")
    assert_event(await hook.next(), "online", "carol")
    await carol.close()
    assert_event(await hook.next(), "offline", "carol")
    assert [r.event["user"] for r in hook.attempts] == ["alice", "carol", "carol"]
    await phone.close()


async def test_shutdown_reports_its_users_offline(make_node: MakeNode, hook: Hook) -> None:
    """A stopping node cannot see its users come back: it says they left, not nothing."""
    node = await make_node(presence__debounce=5.0)
    await node.client("alice", device="phone")
    await node.client("bob", device="bob-phone")
    assert {(await hook.next()).event["user"] for _ in range(2)} == {"alice", "bob"}
    await stop_node(node)
    events = [hook.delivered.get_nowait() for _ in range(hook.delivered.qsize())]
    assert sorted((r.event["event"], r.event["user"]) for r in events) == [
        ("offline", "alice"), ("offline", "bob")]
    for r in events:
        assert_signed(r)


async def test_unsigned_without_a_secret(make_node: MakeNode, hook: Hook) -> None:
    node = await make_node(presence__webhook_secret="")
    phone = await node.client("alice", device="phone")
    r = await hook.next()
    assert r.event["event"] == "online" and "X-Tidings-Signature" not in r.headers
    await phone.close()


async def test_anonymous_sessions_are_not_announced(make_node: MakeNode, hook: Hook) -> None:
    node = await make_node(auth__allow_anonymous=True)
    anon = await node.client(None)
    await anon.close()
    await marker(node, hook)


# -- retries and isolation from delivery --------------------------------------------------


async def test_failed_posts_are_retried_until_delivered(make_node: MakeNode,
                                                        hook: Hook) -> None:
    hook.fail = [500, 500]
    node = await make_node(presence__retries=3)
    phone = await node.client("alice", device="phone")
    r = await hook.next()
    assert_event(r, "online", "alice")
    assert len(hook.attempts) == 3
    assert all(a.raw == r.raw for a in hook.attempts)  # the same signed event each time
    for a in hook.attempts:
        assert_signed(a)
    await phone.close()


async def test_gives_up_after_the_retries_and_goes_on(make_node: MakeNode, hook: Hook) -> None:
    hook.fail = [503, 503]
    node = await make_node(presence__retries=1)
    phone = await node.client("alice", device="phone")
    await hook.attempted(2)  # first try and one retry, both failed: alice's event is dropped
    await marker(node, hook)  # the next event still goes out
    assert [r.event["user"] for r in hook.attempts] == ["alice", "alice", "carol"]
    await phone.close()


async def test_a_webhook_that_never_answers_does_not_delay_delivery(
        make_node: MakeNode, hook: Hook) -> None:
    hook.hang = asyncio.Event()
    node = await make_node()
    laptop = await node.client("alice", device="laptop")
    await hook.attempted(1)  # the online event is stuck in the webhook
    phone = await node.client("alice", device="phone")
    bob = await node.client("bob", device="bob-phone")  # queued behind alice's event
    status, sent = await node.api("POST", "/v1/notify", {"users": ["alice", "bob"],
                                                         "title": "hi"})
    assert status == 200
    for c in (laptop, phone, bob):
        p = await c.push()
        assert p["id"] == sent["id"]
    r = await phone.request("read", ids=[sent["id"]])
    assert r["ok"] and (await laptop.push())["type"] == "read"
    assert not hook.hang.is_set() and len(hook.attempts) == 1  # still stuck meanwhile
    hook.hang.set()
    events = [(await hook.next()).event for _ in range(2)]
    assert [(e["event"], e["user"]) for e in events] == [("online", "alice"), ("online", "bob")]


# -- one stream: the webhook and the pull API agree (issue 13) -----------------------------


async def test_the_webhook_and_the_pull_api_carry_the_same_presence_events(
        make_node: MakeNode, hook: Hook) -> None:
    """The presence webhook is a subscriber of the event stream: each request is
    one ``online`` / ``offline`` event that ``GET /v1/events`` also lists, with
    the same id, time and node; other events (engagement) never reach it."""
    node = await make_node(presence__debounce=0.0)
    phone = await node.client("alice", device="phone")
    posted = [await hook.next()]
    status, sent = await node.api("POST", "/v1/notify", {"users": ["alice"], "title": "hi"})
    assert status == 200
    await phone.push()
    assert (await phone.request("track", notification=sent["id"], event="opened"))["recorded"]
    await phone.close()
    posted.append(await hook.next())
    await marker(node, hook)  # nothing else came between: not the "opened" event
    for r in posted:
        assert r.headers["X-Tidings-Delivery"] == r.event["id"]
    assert node.app.node.events is not None
    await node.app.node.events.flushed()
    status, page = await node.api("GET", "/v1/events?limit=100")
    assert status == 200
    pulled = {e["id"]: e for e in page["events"] if e["type"] in ("online", "offline")
              and e["user"] == "alice"}
    assert [r.event["id"] for r in posted] == sorted(pulled)
    for r in posted:
        e = pulled[r.event["id"]]
        assert (e["type"], e["user"], e["node"], e["ts"]) == (
            r.event["event"], r.event["user"], r.event["node"], r.event["ts"])
    assert [r.event["event"] for r in posted] == ["online", "offline"]
    assert any(e["type"] == "opened" for e in page["events"])  # in the stream, not the hook
