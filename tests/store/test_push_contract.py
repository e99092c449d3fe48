"""The push endpoint contract (``tidings.store.contracts.push``), per backend:
SQLite, Redis and Redis Cluster through the one ``store`` fixture."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.inbox import send
from support.stores import Clock
from tidings.push.endpoints import Endpoint, parse_endpoint
from tidings.store.base import Store
from tidings.store.contracts.push import PUSH_OUTCOMES

pytest_plugins = ["support.redis_servers"]  # session-wide redis-server / cluster fixtures

P256DH = base64.urlsafe_b64encode(ec.generate_private_key(ec.SECP256R1()).public_key(
).public_bytes(serialization.Encoding.X962,
               serialization.PublicFormat.UncompressedPoint)).decode().rstrip("=")


def web(n: int) -> Endpoint:
    return parse_endpoint({"kind": "webpush", "subscription": {
        "endpoint": f"https://push.example.net/s/{n}",
        "keys": {"p256dh": P256DH, "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}})


def fcm(token: str) -> Endpoint:
    return parse_endpoint({"kind": "fcm", "token": token})


async def test_register_list_and_replace_per_device(store: Store, clock: Clock) -> None:
    assert await store.push_endpoints("ann") == []
    await store.push_register("ann", "laptop", web(1), max_per_user=10)
    clock.advance(1)
    listed = await store.push_register("ann", "phone", fcm("tok-1"), max_per_user=10)
    assert [(r.device, r.endpoint) for r in listed] == [("laptop", web(1)), ("phone", fcm("tok-1"))]
    assert listed[0].endpoint.p256dh == P256DH  # the keys survive the round trip
    clock.advance(1)
    listed = await store.push_register("ann", "laptop", web(2), max_per_user=10)
    assert [(r.device, r.endpoint.address) for r in listed] == [
        ("phone", "tok-1"), ("laptop", web(2).address)]
    assert listed[1].to_dict()["subscription"]["endpoint"] == web(2).address


async def test_an_address_belongs_to_one_user(store: Store, clock: Clock) -> None:
    await store.push_register("ann", "laptop", web(7), max_per_user=10)
    clock.advance(1)
    await store.push_register("bob", "laptop", web(7), max_per_user=10)
    assert await store.push_endpoints("ann") == []
    assert [r.endpoint for r in await store.push_endpoints("bob")] == [web(7)]
    many = await store.push_endpoints_many(["ann", "bob", "cat"])
    assert list(many) == ["bob"]


async def test_the_oldest_goes_over_the_cap(store: Store, clock: Clock) -> None:
    for i in range(4):
        await store.push_register("ann", f"d{i}", fcm(f"t{i}"), max_per_user=3)
        clock.advance(1)
    assert [r.device for r in await store.push_endpoints("ann")] == ["d1", "d2", "d3"]
    # the dropped address is free for anyone
    await store.push_register("bob", "x", fcm("t0"), max_per_user=3)
    assert [r.endpoint.address for r in await store.push_endpoints("bob")] == ["t0"]


async def test_remove_by_device_all_and_address(store: Store, clock: Clock) -> None:
    for i, user in enumerate(["ann", "ann", "ann", "bob"]):
        await store.push_register(user, f"d{i}", fcm(f"t{i}"), max_per_user=10)
        clock.advance(1)
    assert await store.push_remove("ann", device="d0") == 1
    assert await store.push_remove("ann", device="d0") == 0
    assert await store.push_remove_address("t1") is True
    assert await store.push_remove_address("t1") is False
    assert [r.device for r in await store.push_endpoints("ann")] == ["d2"]
    assert await store.push_remove("ann") == 1
    assert await store.push_endpoints("ann") == []
    assert [r.device for r in await store.push_endpoints("bob")] == ["d3"]
    # a removed address can be registered again
    await store.push_register("ann", "d9", fcm("t1"), max_per_user=10)
    assert list(await store.push_endpoints_many(["ann"])) == ["ann"]


async def test_many_users_at_once(store: Store) -> None:
    users = [f"u{i}" for i in range(50)]
    for i, u in enumerate(users):
        if i % 2 == 0:
            await store.push_register(u, "d", fcm(f"tok{i}"), max_per_user=5)
    many = await store.push_endpoints_many(users)
    assert sorted(many) == sorted(users[::2])
    assert all(len(v) == 1 and v[0].endpoint.address == f"tok{users.index(u)}"
               for u, v in many.items())


async def test_push_outcomes_are_counted_per_notification(store: Store) -> None:
    assert await store.push_counts("n_none") == dict.fromkeys(PUSH_OUTCOMES, 0)
    await store.push_tally("n_1", {"pushed_webpush": 2, "endpoint_gone": 1})
    await store.push_tally("n_1", {"pushed_webpush": 1, "pushed_fcm": 1, "provider_failed": 0})
    await store.push_tally("n_2", {"pushed_apns": 5})
    await store.push_tally("n_2", {})
    assert await store.push_counts("n_1") == {**dict.fromkeys(PUSH_OUTCOMES, 0),
                                              "pushed_webpush": 3, "pushed_fcm": 1,
                                              "endpoint_gone": 1}
    assert (await store.push_counts("n_2"))["pushed_apns"] == 5


async def test_push_acked_names_the_users_who_reported_delivered(store: Store) -> None:
    result = await send(store, ["ann", "bob", "cat"])
    assert await store.push_acked(result.id, ["ann", "bob"]) == set()
    assert await store.track(result.id, "ann", "delivered")
    assert await store.track(result.id, "bob", "opened")  # not a delivery report
    assert await store.push_acked(result.id, ["ann", "bob", "cat", "ann"]) == {"ann"}
    assert await store.push_acked("n_other", ["ann"]) == set()
    assert await store.push_acked(result.id, []) == set()
