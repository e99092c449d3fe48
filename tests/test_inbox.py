"""The per-user inbox end to end (issue 3): real node, real WS clients, real HTTP.

Alice has three devices (laptop, phone, tablet), Bob one. Each test names
the behaviour a user relies on (DESIGN.md "The path of a notification and of
a read", "WebSocket protocol", "HTTP API", "Guarantees").

Negative checks ("this device got nothing") are deterministic: after the
step under test a *marker* notification goes to the same user, and since one
node delivers each user's stream in order, a device whose next push is the
marker got nothing before it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import API_KEY, WAIT, Client, MakeNode, Node, ServerProcess, start_node, stop_node

NOTIFICATION_FIELDS = {"type", "id", "offset", "title", "body", "data", "category", "priority",
                       "media", "ts", "unread"}


# -- helpers ---------------------------------------------------------------------------



async def notify(node: Node, users: list[str], *, key: str | None = None,
                 **fields: Any) -> dict[str, Any]:
    """POST /v1/notify; return ``{id, targets}``."""
    headers = {"Idempotency-Key": key} if key is not None else None
    status, body = await node.api("POST", "/v1/notify", {"users": users, **fields},
                                  headers=headers)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def unread(node: Node, user: str) -> int:
    status, body = await node.api("GET", f"/v1/users/{user}/unread")
    assert status == 200, body
    return int(body["unread"])


async def inbox(node: Node, user: str, query: str = "") -> dict[str, Any]:
    status, body = await node.api("GET", f"/v1/users/{user}/inbox{query}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def alice_and_bob(node: Node) -> tuple[Client, Client, Client, Client]:
    laptop = await node.client("alice", device="laptop")
    phone = await node.client("alice", device="phone")
    tablet = await node.client("alice", device="tablet")
    bob = await node.client("bob", device="bob-phone")
    return laptop, phone, tablet, bob


async def nothing_before_marker(node: Node, user: str, *clients: Client) -> None:
    """Each client's next push is a fresh marker notification: nothing came before it."""
    marker = await notify(node, [user], title="marker")
    for c in clients:
        got = await c.push()
        assert got["type"] == "notification" and got["id"] == marker["id"], got


async def poll(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded by WAIT) until ``check()`` holds."""
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


# -- delivery and isolation --------------------------------------------------------------


async def test_every_device_of_the_user_gets_the_notification(node: Node) -> None:
    laptop, phone, tablet, bob = await alice_and_bob(node)
    media = {"image": "https://img.example/a.png", "audio": "http://s.example/a.mp3"}
    sent = await notify(node, ["alice"], title="Your order shipped", body="Track it",
                        category="orders", data={"order": 42}, priority="high", media=media)
    assert sent["targets"] == 1 and sent["id"]
    pushes = [await c.push() for c in (laptop, phone, tablet)]
    for p in pushes:
        assert set(p) == NOTIFICATION_FIELDS, p
        assert p["type"] == "notification" and p["id"] == sent["id"]
        assert (p["title"], p["body"], p["category"], p["priority"]) == (
            "Your order shipped", "Track it", "orders", "high")
        assert p["data"] == {"order": 42} and p["media"] == media and p["unread"] == 1
        assert isinstance(p["ts"], int) and abs(p["ts"] / 1000 - time.time()) < 60
    assert len({p["offset"] for p in pushes}) == 1
    await nothing_before_marker(node, "bob", bob)


async def test_defaults_for_optional_fields(node: Node) -> None:
    phone = await node.client("alice", device="phone")
    await notify(node, ["alice"])
    p = await phone.push()
    assert (p["title"], p["body"], p["data"], p["category"], p["priority"], p["media"]) == (
        "", "", None, "general", "normal", None)


async def test_a_notification_to_several_users_reaches_each(node: Node) -> None:
    laptop, phone, tablet, bob = await alice_and_bob(node)
    sent = await notify(node, ["alice", "bob", "alice"], title="Maintenance tonight")
    assert sent["targets"] == 2  # duplicates count once
    for c in (laptop, phone, tablet, bob):
        p = await c.push()
        assert p["id"] == sent["id"] and p["unread"] == 1
    assert (await inbox(node, "alice"))["items"][0]["id"] == sent["id"]
    assert (await inbox(node, "bob"))["items"][0]["id"] == sent["id"]


async def test_bob_never_sees_alices_notifications_or_events(node: Node) -> None:
    laptop, phone, tablet, bob = await alice_and_bob(node)
    n1 = await notify(node, ["alice"], title="for alice")
    for c in (laptop, phone, tablet):
        assert (await c.push())["id"] == n1["id"]
    r = await phone.request("read", ids=[n1["id"]])
    assert r["ok"] and r["unread"] == 0
    r = await phone.request("archive", ids=[n1["id"]])
    assert r["ok"]
    await nothing_before_marker(node, "bob", bob)
    # Bob cannot follow Alice's private stream, exactly or by wildcard.
    for topic in ("users/alice/notifications", "users/alice/events", "users/+/notifications",
                  "users/alice/#"):
        r = await bob.request("subscribe", topic=topic)
        assert not r["ok"] and r["error"]["code"] == "forbidden", (topic, r)


async def test_ids_of_another_user_change_nothing(node: Node) -> None:
    laptop, phone, tablet, bob = await alice_and_bob(node)
    n1 = await notify(node, ["alice"])
    for c in (laptop, phone, tablet):
        await c.push()
    for op in ("read", "archive", "unread"):
        r = await bob.request(op, ids=[n1["id"]])
        assert r["ok"] and r["unread"] == 0 and r["changed"] == [], r
    # Over HTTP the path names the user: bob's path with alice's id changes nothing either.
    status, body = await node.api("POST", "/v1/users/bob/archive", {"ids": [n1["id"]]})
    assert status == 200 and body["changed"] == []
    assert await unread(node, "alice") == 1
    page = await inbox(node, "alice")
    assert [(i["id"], i["read"]) for i in page["items"]] == [(n1["id"], False)]
    await nothing_before_marker(node, "alice", laptop, phone, tablet)
    await nothing_before_marker(node, "bob", bob)


# -- read sync ----------------------------------------------------------------------------


async def test_read_on_one_device_syncs_the_others(node: Node) -> None:
    laptop, phone, tablet, bob = await alice_and_bob(node)
    n1 = await notify(node, ["alice"], title="one")
    n2 = await notify(node, ["alice"], title="two")
    for c in (laptop, phone, tablet):
        assert [(await c.push())["unread"] for _ in range(2)] == [1, 2]
    r = await phone.request("read", ids=[n1["id"]])
    assert r["ok"] and r["unread"] == 1 and r["changed"] == [n1["id"]]
    events = [await c.push() for c in (laptop, tablet, phone)]
    for ev in events:
        assert ev["type"] == "read" and ev["ids"] == [n1["id"]], ev
        assert ev["unread"] == 1 and ev["device"] == "phone" and "all" not in ev
        assert isinstance(ev["offset"], str)
    assert len({ev["offset"] for ev in events}) == 1
    assert await unread(node, "alice") == 1
    items = {i["id"]: i["read"] for i in (await inbox(node, "alice"))["items"]}
    assert items == {n1["id"]: True, n2["id"]: False}
    await nothing_before_marker(node, "bob", bob)


async def test_reading_again_sends_no_event(node: Node) -> None:
    laptop = await node.client("alice", device="laptop")
    phone = await node.client("alice", device="phone")
    n1 = await notify(node, ["alice"])
    await laptop.push()
    await phone.push()
    assert (await phone.request("read", ids=[n1["id"]]))["unread"] == 0
    assert (await laptop.push())["type"] == "read"
    await phone.push()
    r = await laptop.request("read", ids=[n1["id"], "n_unknown"])
    assert r["ok"] and r["unread"] == 0 and r["changed"] == []
    await nothing_before_marker(node, "alice", laptop, phone)


async def test_read_over_http_syncs_every_device(node: Node) -> None:
    laptop, phone, tablet, _ = await alice_and_bob(node)
    n1 = await notify(node, ["alice"])
    for c in (laptop, phone, tablet):
        await c.push()
    status, body = await node.api("POST", "/v1/users/alice/read", {"ids": [n1["id"]]})
    assert status == 200 and body == {"unread": 0, "changed": [n1["id"]]}
    for c in (laptop, phone, tablet):
        ev = await c.push()
        assert (ev["type"], ev["unread"], ev["device"]) == ("read", 0, "api")


async def test_mark_all_read(node: Node) -> None:
    laptop, phone, tablet, bob = await alice_and_bob(node)
    ids = [(await notify(node, ["alice"]))["id"] for _ in range(3)]
    bobs = await notify(node, ["bob"])
    for c in (laptop, phone, tablet):
        assert [(await c.push())["unread"] for _ in range(3)] == [1, 2, 3]
    assert (await bob.push())["id"] == bobs["id"]
    r = await laptop.request("read", all=True)
    assert r["ok"] and r["unread"] == 0 and sorted(r["changed"]) == sorted(ids)
    for c in (laptop, phone, tablet):
        ev = await c.push()
        assert ev["type"] == "read" and ev["all"] is True and ev["unread"] == 0
        assert sorted(ev["ids"]) == sorted(ids) and ev["device"] == "laptop"
    assert await unread(node, "alice") == 0 and await unread(node, "bob") == 1
    assert all(i["read"] for i in (await inbox(node, "alice"))["items"])
    # Nothing left to read: no event.
    assert (await phone.request("read", all=True))["changed"] == []
    await nothing_before_marker(node, "alice", laptop, phone, tablet)
    await nothing_before_marker(node, "bob", bob)


async def test_unread_op_and_its_push(node: Node) -> None:
    laptop, phone, tablet, _ = await alice_and_bob(node)
    n1 = await notify(node, ["alice"])
    for c in (laptop, phone, tablet):
        await c.push()
    await phone.request("read", ids=[n1["id"]])
    for c in (laptop, phone, tablet):
        assert (await c.push())["unread"] == 0
    r = await tablet.request("unread", ids=[n1["id"]])
    assert r["ok"] and r["unread"] == 1 and r["changed"] == [n1["id"]]
    for c in (laptop, phone, tablet):
        ev = await c.push()
        assert (ev["type"], ev["ids"], ev["unread"], ev["device"]) == (
            "unread", [n1["id"]], 1, "tablet")
    assert await unread(node, "alice") == 1
    r = await laptop.request("unread", all=True)  # already unread: nothing to do
    assert r["changed"] == [] and r["unread"] == 1


async def test_archive_op_and_its_push(node: Node) -> None:
    laptop, phone, tablet, _ = await alice_and_bob(node)
    n1 = await notify(node, ["alice"])
    n2 = await notify(node, ["alice"])
    n3 = await notify(node, ["alice"])
    for c in (laptop, phone, tablet):
        for _ in range(3):
            await c.push()
    await phone.request("read", ids=[n2["id"]])
    for c in (laptop, phone, tablet):
        await c.push()
    r = await laptop.request("archive", ids=[n1["id"], n2["id"]])
    assert r["ok"] and r["unread"] == 1 and sorted(r["changed"]) == sorted([n1["id"], n2["id"]])
    for c in (laptop, phone, tablet):
        ev = await c.push()
        assert ev["type"] == "archive" and ev["unread"] == 1 and ev["device"] == "laptop"
        assert sorted(ev["ids"]) == sorted([n1["id"], n2["id"]])
    page = await inbox(node, "alice")
    assert [i["id"] for i in page["items"]] == [n3["id"]] and page["unread"] == 1
    r = await phone.request("inbox")
    assert [i["id"] for i in r["items"]] == [n3["id"]] and r["unread"] == 1
    # Archived items cannot be read or made unread again.
    r = await phone.request("unread", ids=[n2["id"]])
    assert r["changed"] == [] and r["unread"] == 1
    r = await tablet.request("archive", all=True)
    assert r["changed"] == [n3["id"]] and r["unread"] == 0
    for c in (laptop, phone, tablet):
        ev = await c.push()
        assert ev["type"] == "archive" and ev["all"] is True and ev["unread"] == 0
    assert (await inbox(node, "alice"))["items"] == []


async def test_mark_needs_ids_or_all(node: Node) -> None:
    phone = await node.client("alice", device="phone")
    cases: list[dict[str, Any]] = [{}, {"ids": []}, {"ids": ["n_1"], "all": True},
                                   {"ids": [1]}, {"all": False}]
    for args in cases:
        r = await phone.request("read", **args)
        assert not r["ok"] and r["error"]["code"] == "bad_request", (args, r)
    r = await phone.request("archive", ids="n_1")
    assert not r["ok"] and r["error"]["code"] == "bad_request"


# -- inbox paging -------------------------------------------------------------------------


async def test_inbox_op_pages_newest_first(node: Node) -> None:
    phone = await node.client("alice", device="phone")
    ids = [(await notify(node, ["alice"], title=f"t{i}"))["id"] for i in range(5)]
    await phone.request("read", ids=[ids[4]])
    seen: list[str] = []
    before = None
    while True:
        args = {"limit": 2} if before is None else {"limit": 2, "before": before}
        r = await phone.request("inbox", **args)
        assert r["ok"] and r["unread"] == 4
        seen += [i["id"] for i in r["items"]]
        before = r["next"]
        if before is None:
            break
    assert seen == ids[::-1]
    r = await phone.request("inbox", unread_only=True)
    assert [i["id"] for i in r["items"]] == ids[3::-1]
    http = await inbox(node, "alice", "?limit=2")
    assert [i["id"] for i in http["items"]] == ids[:2:-1]
    http2 = await inbox(node, "alice", f"?limit=10&before={http['next']}")
    assert [i["id"] for i in http2["items"]] == ids[2::-1] and http2["next"] is None
    http3 = await inbox(node, "alice", "?unread_only=true")
    assert [i["id"] for i in http3["items"]] == ids[3::-1]
    for bad in (0, 101):
        r = await phone.request("inbox", limit=bad)
        assert not r["ok"] and r["error"]["code"] == "bad_request"


# -- collapse, ttl, idempotency -----------------------------------------------------------


async def test_collapse_key_replaces_the_older_unread_one(node: Node) -> None:
    laptop, phone, tablet, _ = await alice_and_bob(node)
    other = await notify(node, ["alice"], title="unrelated")
    old = await notify(node, ["alice"], title="1-0", collapse_key="match-7")
    new = await notify(node, ["alice"], title="2-0", collapse_key="match-7")
    for c in (laptop, phone, tablet):
        pushes = [await c.push() for _ in range(3)]
        assert [p["unread"] for p in pushes] == [1, 2, 2]
        assert "replaces" not in pushes[1]
        assert pushes[2]["id"] == new["id"] and pushes[2]["replaces"] == [old["id"]]
    page = await inbox(node, "alice")
    assert [i["id"] for i in page["items"]] == [new["id"], other["id"]]
    assert page["unread"] == 2 and await unread(node, "alice") == 2
    # Once read, an item with the key stays; the next one with the key is added beside it.
    await phone.request("read", ids=[new["id"]])
    newer = await notify(node, ["alice"], title="3-0", collapse_key="match-7")
    assert await unread(node, "alice") == 2
    page = await inbox(node, "alice")
    assert [i["id"] for i in page["items"]] == [newer["id"], new["id"], other["id"]]


async def test_ttl_expires_from_inbox_and_count(node: Node) -> None:
    phone = await node.client("alice", device="phone")
    short = await notify(node, ["alice"], title="flash sale", ttl=1)
    keep = await notify(node, ["alice"], title="receipt")
    assert (await phone.push())["unread"] == 1
    assert (await phone.push())["unread"] == 2

    async def expired() -> bool:
        return await unread(node, "alice") == 1

    await poll(expired, "the ttl=1 notification expired")
    page = await inbox(node, "alice")
    assert [i["id"] for i in page["items"]] == [keep["id"]] and page["unread"] == 1
    r = await phone.request("read", ids=[short["id"]])
    assert r["ok"] and r["changed"] == [] and r["unread"] == 1


async def test_idempotency_key_on_notify(node: Node) -> None:
    laptop = await node.client("alice", device="laptop")
    first = await notify(node, ["alice", "bob"], key="order-42-shipped", title="shipped")
    retry = await notify(node, ["alice", "bob"], key="order-42-shipped", title="shipped")
    assert retry == first and first["targets"] == 2
    page = await inbox(node, "alice")
    assert [i["id"] for i in page["items"]] == [first["id"]] and page["unread"] == 1
    assert await unread(node, "bob") == 1
    assert (await laptop.push())["id"] == first["id"]
    await nothing_before_marker(node, "alice", laptop)  # the retry pushed nothing
    other = await notify(node, ["alice"], key="order-43-shipped")
    assert other["id"] != first["id"]
    status, body = await node.api("POST", "/v1/notify", {"users": ["alice"]},
                                  headers={"Idempotency-Key": "x" * 256})
    assert status == 400 and body["error"]["code"] == "bad_request"


async def test_concurrent_retries_with_one_key_store_one_item(node: Node) -> None:
    phone = await node.client("alice", device="phone")
    answers = await asyncio.gather(*(notify(node, ["alice"], key="double-submit")
                                     for _ in range(5)))
    assert all(a == answers[0] for a in answers)
    page = await inbox(node, "alice")
    assert [i["id"] for i in page["items"]] == [answers[0]["id"]] and page["unread"] == 1
    assert (await phone.push())["id"] == answers[0]["id"]
    await nothing_before_marker(node, "alice", phone)


async def test_msgpack_devices_get_the_same_pushes(node: Node) -> None:
    json_dev = await node.client("alice", device="json")
    mp_dev = await node.client("alice", device="msgpack", encoding="msgpack")
    sent = await notify(node, ["alice"], data={"order": 42}, title="shipped")
    a, b = await json_dev.push(), await mp_dev.push()
    assert a == b and b["id"] == sent["id"] and b["data"] == {"order": 42}
    r = await mp_dev.request("read", ids=[sent["id"]])
    assert r["ok"] and r["unread"] == 0
    a, b = await json_dev.push(), await mp_dev.push()
    assert a == b and b["device"] == "msgpack" and b["type"] == "read"


# -- offline recovery and restart ---------------------------------------------------------


async def test_offline_device_recovers_what_it_missed(node: Node) -> None:
    laptop = await node.client("alice", device="laptop")
    tablet = await node.client("alice", device="tablet")
    last = tablet.hello["offset"]
    await tablet.close()
    missed = [await notify(node, ["alice"], title=f"missed {i}") for i in range(4)]
    for _ in missed:
        await laptop.push()
    await laptop.request("read", ids=[missed[0]["id"]])
    await laptop.request("archive", ids=[missed[1]["id"]])
    back = await node.client("alice", device="tablet", since=last)
    hello = back.hello
    # Exactly what it missed, oldest first, with read flags; archived ones are gone.
    got = [(n["id"], n["read"]) for n in hello["recovered"]]
    assert got == [(missed[0]["id"], True), (missed[2]["id"], False),
                   (missed[3]["id"], False)]
    assert hello["complete"] is True
    assert hello["unread"] == 2 == await unread(node, "alice")
    for n in hello["recovered"]:
        assert n["type"] == "notification" and isinstance(n["offset"], str)
        assert n["title"].startswith("missed")
    assert hello["offset"] == hello["recovered"][-1]["offset"]
    # Reconnecting from the newest offset recovers nothing; live pushes continue once.
    await back.close()
    again = await node.client("alice", device="tablet", since=hello["offset"])
    assert again.hello["recovered"] == [] and again.hello["complete"] is True
    live = await notify(node, ["alice"])
    assert (await again.push())["id"] == live["id"]
    await nothing_before_marker(node, "alice", again)


async def test_recovery_from_the_offset_of_the_last_push(node: Node) -> None:
    tablet = await node.client("alice", device="tablet")
    first = await notify(node, ["alice"])
    seen = await tablet.push()
    await tablet.close()
    second = await notify(node, ["alice"])
    back = await node.client("alice", device="tablet", since=seen["offset"])
    assert [n["id"] for n in back.hello["recovered"]] == [second["id"]]
    assert first["id"] != second["id"] and back.hello["unread"] == 2


async def test_recovery_from_a_trimmed_stream_says_incomplete(make_node: MakeNode) -> None:
    node = await make_node(history__size=2)
    tablet = await node.client("alice", device="tablet")
    last = tablet.hello["offset"]
    await tablet.close()
    sent = [(await notify(node, ["alice"]))["id"] for _ in range(4)]
    back = await node.client("alice", device="tablet", since=last)
    assert back.hello["complete"] is False
    assert [n["id"] for n in back.hello["recovered"]] == sent[2:]
    assert back.hello["unread"] == 4 == await unread(node, "alice")
    # The inbox itself is not trimmed: the device can page it to catch up.
    r = await back.request("inbox")
    assert [i["id"] for i in r["items"]] == sent[::-1]


async def test_restart_keeps_inbox_counts_and_offsets(tmp_path: Path) -> None:
    node = await start_node(tmp_path)
    try:
        phone = await node.client("alice", device="phone")
        ids = [(await notify(node, ["alice"], category="orders"))["id"] for _ in range(3)]
        await phone.request("read", ids=[ids[0]])
        await phone.request("archive", ids=[ids[1]])
        await phone.request("track", notification=ids[2], event="opened")
        offset = (await node.client("alice", device="probe")).hello["offset"]
    finally:
        await stop_node(node)
    node = await start_node(tmp_path)
    try:
        assert await unread(node, "alice") == 1
        page = await inbox(node, "alice")
        assert [(i["id"], i["read"]) for i in page["items"]] == [(ids[2], False), (ids[0], True)]
        phone = await node.client("alice", device="phone", since=offset)
        assert phone.hello["unread"] == 1 and phone.hello["offset"] == offset
        assert phone.hello["recovered"] == [] and phone.hello["complete"] is True
        status, stats = await node.api("GET", f"/v1/notifications/{ids[2]}/stats")
        assert status == 200 and stats["opened"] == 1 and stats["targets"] == 1
        n4 = await notify(node, ["alice"])
        p = await phone.push()
        assert p["id"] == n4["id"] and p["unread"] == 2
    finally:
        await stop_node(node)


async def test_a_killed_process_keeps_every_answered_notification(
        server_process: ServerProcess) -> None:
    """``kill -9`` right after the answers: what was acknowledged is in the inbox on restart."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    api = server_process.api_url
    server_process.start()
    async with aiohttp.ClientSession(headers=headers) as http:
        ids = []
        for i in range(3):
            async with http.post(f"{api}/v1/notify", json={"users": ["alice"],
                                                           "title": f"n{i}"}) as r:
                assert r.status == 200
                ids.append((await r.json())["id"])
        async with http.post(f"{api}/v1/users/alice/read", json={"ids": [ids[0]]}) as r:
            assert r.status == 200
        server_process.stop(signal.SIGKILL)
        server_process.start()
        try:
            async with http.get(f"{api}/v1/users/alice/inbox") as r:
                page = await r.json()
            assert [(i["id"], i["read"]) for i in page["items"]] == [
                (ids[2], False), (ids[1], False), (ids[0], True)]
            assert page["unread"] == 2
        finally:
            server_process.stop()


# -- HTTP API and its errors -------------------------------------------------------------


BAD_NOTIFY = [
    ({}, "users missing"),
    ({"users": []}, "users empty"),
    ({"users": "alice"}, "users not a list"),
    ({"users": ["a/b"]}, "user id with a slash"),
    ({"users": [""]}, "empty user id"),
    ({"users": [7]}, "user id not a string"),
    ({"users": ["alice"], "priority": "critical"}, "bad priority"),
    ({"users": ["alice"], "media": {"image": "ftp://x.example/a.png"}}, "media not http"),
    ({"users": ["alice"], "media": {"image": "not a url"}}, "media not a URL"),
    ({"users": ["alice"], "media": {"document": "https://x.example/a.pdf"}}, "media kind"),
    ({"users": ["alice"], "media": "https://x.example/a.png"}, "media not an object"),
    ({"users": ["alice"], "ttl": 0}, "ttl zero"),
    ({"users": ["alice"], "ttl": -5}, "ttl negative"),
    ({"users": ["alice"], "ttl": "60"}, "ttl a string"),
    ({"users": ["alice"], "ttl": True}, "ttl a boolean"),
    ({"users": ["alice"], "title": 5}, "title not a string"),
    ({"users": ["alice"], "title": "x" * 257}, "title too long"),
    ({"users": ["alice"], "collapse_key": ["k"]}, "collapse_key not a string"),
]


@pytest.mark.parametrize("body,why", BAD_NOTIFY, ids=[w for _, w in BAD_NOTIFY])
async def test_notify_rejects_bad_requests(node: Node, body: dict[str, Any], why: str) -> None:
    status, reply = await node.api("POST", "/v1/notify", body)
    assert status == 400, (why, reply)
    assert reply["error"]["code"] in ("bad_request", "malformed") and reply["error"]["message"]
    assert await unread(node, "alice") == 0


async def test_notify_bounds_the_users_list(make_node: MakeNode) -> None:
    node = await make_node(notify__max_users=3)
    status, body = await node.api("POST", "/v1/notify", {"users": ["a", "b", "c", "d"]})
    assert status == 400 and "3" in body["error"]["message"]
    assert (await notify(node, ["a", "b", "c"]))["targets"] == 3


async def test_http_errors(node: Node) -> None:
    status, body = await node.api("POST", "/v1/notify", {"users": ["alice"]}, key=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _ = await node.api("GET", "/v1/users/alice/inbox", key="wrong-key-000000000")
    assert status == 401
    status, _ = await node.api("POST", "/v1/users/alice/read", {"all": True}, key=None)
    assert status == 401
    status, body = await node.api("GET", "/v1/notifications/n_missing/stats")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await node.api("POST", "/v1/notify", data=b"{not json")
    assert status == 400 and body["error"]["code"] == "malformed"
    status, body = await node.api("POST", "/v1/users/alice/read", {})
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await node.api("POST", "/v1/users/alice/read", {"ids": ["n_1"], "all": True})
    assert status == 400
    status, body = await node.api("POST", "/v1/users/alice/read", {"ids": "n_1"})
    assert status == 400
    status, body = await node.api("GET", "/v1/users/alice/inbox?limit=0")
    assert status == 400
    status, body = await node.api("GET", "/v1/users/alice/inbox?limit=lots")
    assert status == 400
    status, body = await node.api("POST", "/v1/users/alice/delete", {"all": True})
    assert status in (404, 405)


async def test_unread_endpoint(node: Node) -> None:
    await notify(node, ["alice"])
    status, body = await node.api("GET", "/v1/users/alice/unread")
    assert status == 200 and body == {"user": "alice", "unread": 1}
    status, body = await node.api("GET", "/v1/users/nobody-yet/unread")
    assert status == 200 and body["unread"] == 0


# -- stats ----------------------------------------------------------------------------------


async def test_track_a_batch_of_deliveries(node: Node) -> None:
    """``track`` with a ``notifications`` list (how the JS client reports
    ``delivered``): one command, the ids newly recorded, each counted once."""
    laptop, phone, _tablet, bob = await alice_and_bob(node)
    a = await notify(node, ["alice", "bob"])
    b = await notify(node, ["alice"])
    r = await laptop.request("track", notifications=[a["id"], b["id"], a["id"]],
                             event="delivered")
    assert r["ok"] and r["recorded"] == [a["id"], b["id"]]
    r = await phone.request("track", notifications=[a["id"], b["id"]], event="delivered")
    assert r["ok"] and r["recorded"] == []  # per user, once
    r = await bob.request("track", notifications=[b["id"], a["id"]], event="delivered")
    assert r["ok"] and r["recorded"] == [a["id"]]  # b is not in bob's inbox
    for sent, delivered in ((a, 2), (b, 1)):
        status, stats = await node.api("GET", f"/v1/notifications/{sent['id']}/stats")
        assert status == 200 and stats["delivered"] == delivered
    for args, says in (({}, "notification is required"),
                       ({"notification": None}, "notification is required"),
                       ({"notification": ""}, "must be a notification id"),
                       ({"notifications": []}, "1 to 100 ids"),
                       ({"notifications": [a["id"]] * 101}, "1 to 100 ids"),
                       ({"notifications": [a["id"], 7]}, "1 to 100 ids"),
                       ({"notifications": [a["id"]], "notification": a["id"]}, "not both")):
        r = await laptop.request("track", event="delivered", **args)
        assert not r["ok"] and r["error"]["code"] == "bad_request", args
        assert says in r["error"]["message"], (args, r)
    status, stats = await node.api("GET", f"/v1/notifications/{a['id']}/stats")
    assert stats["delivered"] == 2  # the refused ones changed nothing


async def test_track_and_stats(node: Node) -> None:
    laptop, phone, tablet, bob = await alice_and_bob(node)
    sent = await notify(node, ["alice", "bob"], category="orders")
    only_alice = await notify(node, ["alice"], category="news")
    status, stats = await node.api("GET", f"/v1/notifications/{sent['id']}/stats")
    assert status == 200
    assert {k: stats[k] for k in ("id", "category", "targets", "delivered", "opened",
                                  "clicked", "dismissed")} == {
        "id": sent["id"], "category": "orders", "targets": 2, "delivered": 0, "opened": 0,
        "clicked": 0, "dismissed": 0}
    # Each device reports delivery; per user it counts once.
    for c in (laptop, phone, tablet, bob):
        r = await c.request("track", notification=sent["id"], event="delivered")
        assert r["ok"]
    r = await laptop.request("track", notification=sent["id"], event="opened")
    assert r["ok"] and r["recorded"] is True
    r = await phone.request("track", notification=sent["id"], event="opened")
    assert r["ok"] and r["recorded"] is False
    assert (await phone.request("track", notification=sent["id"], event="clicked",
                                action="view"))["ok"]
    assert (await bob.request("track", notification=sent["id"], event="dismissed"))["ok"]
    # Bob cannot count events on a notification he never got.
    r = await bob.request("track", notification=only_alice["id"], event="opened")
    assert r["ok"] and r["recorded"] is False
    r = await bob.request("track", notification=sent["id"], event="liked")
    assert not r["ok"] and r["error"]["code"] == "bad_request"
    status, stats = await node.api("GET", f"/v1/notifications/{sent['id']}/stats")
    assert (stats["delivered"], stats["opened"], stats["clicked"], stats["dismissed"]) == (
        2, 1, 1, 1)
    status, other = await node.api("GET", f"/v1/notifications/{only_alice['id']}/stats")
    assert (other["targets"], other["opened"]) == (1, 0)
    status, cats = await node.api("GET", "/v1/stats/categories")
    assert status == 200
    orders = dict(cats["categories"]["orders"])
    rated = orders.pop("rates")  # of the delivered: 1 of 2 opened
    assert (rated["opened"]["rate"], rated["delivered"]["rate"]) == (0.5, 1.0)
    assert orders == {"notifications": 1, "targets": 2, "delivered": 2,
                      "opened": 1, "clicked": 1, "dismissed": 1, "feedback": 0}
    assert cats["categories"]["news"]["notifications"] == 1
    assert cats["categories"]["news"]["targets"] == 1


# -- devices and anonymous sessions --------------------------------------------------------


async def test_devices_op_and_endpoint(node: Node) -> None:
    laptop, _, tablet, _ = await alice_and_bob(node)
    r = await laptop.request("devices")
    assert r["ok"]
    assert sorted(d["device"] for d in r["devices"]) == ["laptop", "phone", "tablet"]
    for d in r["devices"]:
        assert d["edge"] == "ws" and d["node"] == "test-node"
        assert abs(d["since"] - time.time()) < 60
    status, body = await node.api("GET", "/v1/users/bob/devices")
    assert status == 200 and [d["device"] for d in body["devices"]] == ["bob-phone"]
    await tablet.close()

    async def tablet_gone() -> bool:
        _, body = await node.api("GET", "/v1/users/alice/devices")
        return sorted(d["device"] for d in body["devices"]) == ["laptop", "phone"]

    await poll(tablet_gone, "the closed tablet left the device list")
    status, body = await node.api("GET", "/v1/users/nobody/devices")
    assert status == 200 and body["devices"] == []


async def test_connect_reply_carries_unread_and_offset(node: Node) -> None:
    await notify(node, ["alice"])
    await notify(node, ["alice"])
    c = await node.client("alice", device="kitchen")
    assert c.hello["unread"] == 2 and c.hello["device"] == "kitchen"
    assert c.hello["user"] == "alice" and isinstance(c.hello["offset"], str)
    assert c.hello["recovered"] == [] and c.hello["complete"] is True


async def test_anonymous_sessions_have_no_inbox(make_node: MakeNode) -> None:
    node = await make_node(auth__allow_anonymous=True)
    anon = await node.client(None)
    assert anon.hello["user"] is None
    for op, args in (("inbox", {}), ("read", {"all": True}), ("unread", {"ids": ["n_1"]}),
                     ("archive", {"all": True}), ("devices", {}),
                     ("track", {"notification": "n_1", "event": "opened"})):
        r = await anon.request(op, **args)
        assert not r["ok"] and r["error"]["code"] == "forbidden", (op, r)
    # The session stays usable afterwards.
    assert (await anon.request("ping"))["ok"]


async def test_bad_since_on_connect_is_rejected(node: Node) -> None:
    c = await node.client("alice", connect=False)
    r = await c.request("connect", token=node.token("alice"), since="not-an-offset")
    assert not r["ok"] and r["error"]["code"] == "bad_request"


async def test_api_key_header_is_required_even_for_reads(node: Node) -> None:
    status, _ = await node.api("GET", "/v1/users/alice/unread", key=None)
    assert status == 401
    status, _ = await node.api("GET", "/v1/stats/categories",
                               headers={"Authorization": f"Basic {API_KEY}"}, key=None)
    assert status == 401


async def test_notification_data_is_bounded(tmp_path: Path) -> None:
    node = await start_node(tmp_path, notify__max_data_size=100)
    try:
        status, body = await node.api("POST", "/v1/notify",
                                      {"users": ["alice"], "data": {"x": "y" * 200}})
        assert status == 413 and body["error"]["code"] == "too_large"
        status, body = await node.api("GET", "/v1/users/alice/inbox")
        assert body["items"] == []
    finally:
        await stop_node(node)
