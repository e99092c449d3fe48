"""Random interleavings of notify / read / unread / archive keep every badge right.

Issue 3, item 6: for random programs of steps (notify with or without a
collapse key, an idempotent retry, read / unread / archive by ids or ``all``
from any of three WS devices or the HTTP API, bursts of such steps sent
concurrently, devices going offline and coming back with ``since``), after
*every* step

* every online device's last seen unread count (from the replies and pushes
  it received, applied in arrival order) equals the store's truth
  (``GET /v1/users/{uid}/unread``) and a simple model (the number of unread,
  non-archived items);
* every device got exactly the pushes the model predicts (ids, ``replaces``,
  changed ids, count, the acting device), in the same order on each device;
* a device coming back gets exactly the notifications it missed that are
  still in the inbox, with the model's read flags.

A burst is checked for linearizability: some serial order of its steps must
explain every reply and the push sequence; the model then adopts that order.

One node serves the whole test; each example uses a fresh user id.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import WAIT, Node, start_node, stop_node

DEVICES = 3
ACTIONS = ("read", "unread", "archive")
ACTORS = (0, 1, 2, "api")
KEYS = (None, "a", "a", "b")

# -- the model --------------------------------------------------------------------------


@dataclass
class Item:
    id: str
    key: str | None
    read: bool = False
    archived: bool = False


@dataclass
class Model:
    """The inbox as the spec describes it, with none of the server's code."""

    items: dict[str, Item] = field(default_factory=dict)  # in the inbox (maybe archived)
    stream: list[str] = field(default_factory=list)  # every id notified, in order

    def copy(self) -> Model:
        return Model({k: Item(i.id, i.key, i.read, i.archived) for k, i in self.items.items()},
                     list(self.stream))

    @property
    def count(self) -> int:
        return sum(1 for i in self.items.values() if not i.read and not i.archived)

    def notify(self, nid: str, key: str | None) -> list[str]:
        """Add ``nid``; return the ids it replaces (same key, unread, not archived)."""
        replaced = [i.id for i in self.items.values()
                    if key is not None and i.key == key and not i.read and not i.archived]
        for r in replaced:
            del self.items[r]
        self.items[nid] = Item(nid, key)
        self.stream.append(nid)
        return replaced

    def mark(self, action: str, ids: list[str] | None) -> set[str]:
        """Apply ``action`` to ``ids`` (None: all); return the ids that changed."""
        changed: set[str] = set()
        for item in self.items.values():
            if item.archived or (ids is not None and item.id not in ids):
                continue
            if action == "read" and not item.read:
                item.read = True
            elif action == "unread" and item.read:
                item.read = False
            elif action == "archive":
                item.archived = True
            else:
                continue
            changed.add(item.id)
        return changed


# -- a device that records every frame in arrival order ---------------------------------


class Device:
    """A real WS client; ``count`` is the last ``unread`` it saw, reply or push."""

    def __init__(self, name: str, ws: Any) -> None:
        self.name = name
        self.ws = ws
        self.count: int | None = None
        self.pushes: list[dict[str, Any]] = []
        self.consumed = 0  # pushes already checked
        self.stream_offset: str | None = None  # newest notification offset seen
        self.replies: dict[int, dict[str, Any]] = {}
        self._next = 0
        self._cond = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                obj = orjson.loads(raw)
                if "unread" in obj:
                    self.count = obj["unread"]
                if "type" in obj:
                    self.pushes.append(obj)
                    if obj["type"] == "notification":
                        self.stream_offset = obj["offset"]
                else:
                    self.replies[obj["id"]] = obj
                async with self._cond:
                    self._cond.notify_all()
        except websockets.ConnectionClosed:
            pass

    async def send(self, op: str, **args: Any) -> int:
        self._next += 1
        await self.ws.send(orjson.dumps({"op": op, "id": self._next, **args}).decode())
        return self._next

    async def reply(self, rid: int) -> dict[str, Any]:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: rid in self.replies), WAIT)
        return self.replies.pop(rid)

    async def take(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` unchecked pushes (waiting for them, bounded)."""
        async with self._cond:
            await asyncio.wait_for(
                self._cond.wait_for(lambda: len(self.pushes) >= self.consumed + n), WAIT)
        got = self.pushes[self.consumed:self.consumed + n]
        self.consumed += n
        return got

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def connect(node: Node, user: str, name: str, since: str | None = None
                  ) -> tuple[Device, dict[str, Any]]:
    ws = await websockets.connect(node.ws_url, subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                                  open_timeout=WAIT)
    d = Device(name, ws)
    args: dict[str, Any] = {"token": node.token(user), "device": name}
    if since is not None:
        args["since"] = since
    hello = await d.reply(await d.send("connect", **args))
    assert hello["ok"], hello
    d.stream_offset = hello["offset"]
    return d, hello


# -- steps --------------------------------------------------------------------------------

ids_or_all = st.one_of(st.none(), st.lists(st.integers(-3, 20), min_size=1, max_size=3))
mark_step = st.tuples(st.just("mark"), st.sampled_from(ACTORS), st.sampled_from(ACTIONS),
                      ids_or_all, st.booleans())
notify_step = st.tuples(st.just("notify"), st.sampled_from(KEYS))
step = st.one_of(
    notify_step, notify_step, mark_step, mark_step, mark_step,
    st.just(("retry",)),
    st.tuples(st.just("toggle"), st.integers(0, DEVICES - 1)),
    st.tuples(st.just("burst"), st.lists(st.one_of(mark_step, notify_step),
                                         min_size=2, max_size=3)),
)


@dataclass
class Outcome:
    """What one notify or mark did, as observed (reply / HTTP answer)."""

    kind: str  # "notify" | "mark"
    action: str = ""
    ids: list[str] | None = None
    device: str = ""
    nid: str = ""  # notify: the new id
    key: str | None = None
    changed: set[str] = field(default_factory=set)  # mark: from the reply


class Run:
    """One hypothesis example: a fresh user, three devices, the model."""

    def __init__(self, node: Node, foreign_id: str) -> None:
        self.node = node
        self.user = "p" + secrets.token_hex(6)
        self.foreign_id = foreign_id
        self.model = Model()
        self.devices: list[Device | None] = [None] * DEVICES
        self.offline_since: dict[int, tuple[str | None, int]] = {}
        self.last_notify: tuple[dict[str, Any], str, dict[str, Any]] | None = None

    async def start(self) -> None:
        for i in range(DEVICES):
            self.devices[i], hello = await connect(self.node, self.user, f"dev{i}")
            assert hello["unread"] == 0

    async def stop(self) -> None:
        for d in self.devices:
            if d is not None:
                await d.close()

    def online(self) -> list[Device]:
        return [d for d in self.devices if d is not None]

    # -- issuing steps (not waiting for effects) --

    def resolve(self, picks: list[int] | None, foreign: bool) -> list[str] | None:
        if picks is None:
            return None
        stream = self.model.stream
        # Negative picks count from the newest: most marks hit recent items.
        ids = [stream[p % len(stream)] for p in picks] if stream else ["n_unknown"]
        return [*ids, self.foreign_id] if foreign else ids

    async def issue(self, s: tuple[Any, ...]) -> asyncio.Future[Outcome]:
        """Send one notify / mark; return a future of its observed outcome."""
        loop = asyncio.get_running_loop()
        if s[0] == "notify":
            body = {"users": [self.user], "title": "t"}
            if s[1] is not None:
                body["collapse_key"] = s[1]
            key = secrets.token_hex(8)
            return loop.create_task(self._notify(body, key))
        _, actor, action, picks, foreign = s
        ids = self.resolve(picks, foreign)
        device = self.devices[actor] if actor != "api" else None
        args: dict[str, Any] = {"all": True} if ids is None else {"ids": ids}
        if device is None:
            return loop.create_task(self._mark_http(action, ids, args))
        rid = await device.send(action, **args)
        return loop.create_task(self._mark_ws(device, rid, action, ids))

    async def _notify(self, body: dict[str, Any], key: str) -> Outcome:
        status, answer = await self.node.api("POST", "/v1/notify", body,
                                             headers={"Idempotency-Key": key})
        assert status == 200 and answer["targets"] == 1, answer
        self.last_notify = (body, key, answer)
        return Outcome("notify", nid=answer["id"], key=body.get("collapse_key"))

    async def _mark_http(self, action: str, ids: list[str] | None, args: dict[str, Any]
                         ) -> Outcome:
        status, answer = await self.node.api("POST", f"/v1/users/{self.user}/{action}", args)
        assert status == 200, answer
        return Outcome("mark", action, ids, "api", changed=set(answer["changed"]))

    async def _mark_ws(self, device: Device, rid: int, action: str, ids: list[str] | None
                       ) -> Outcome:
        r = await device.reply(rid)
        assert r["ok"], r
        return Outcome("mark", action, ids, device.name, changed=set(r["changed"]))

    # -- the model side --

    @staticmethod
    def expect(model: Model, o: Outcome) -> tuple[dict[str, Any] | None, bool]:
        """Apply ``o`` to ``model``; return (the push it causes or None, consistent)."""
        if o.kind == "notify":
            replaced = model.notify(o.nid, o.key)
            push = {"type": "notification", "id": o.nid, "unread": model.count}
            if replaced:
                push["replaces"] = sorted(replaced)
            return push, True
        changed = model.mark(o.action, o.ids)
        if changed != o.changed:
            return None, False
        if not changed:
            return None, True
        push = {"type": o.action, "ids": sorted(changed), "unread": model.count,
                "device": o.device}
        if o.ids is None:
            push["all"] = True
        return push, True

    @staticmethod
    def shape(p: dict[str, Any]) -> dict[str, Any]:
        """The parts of a push the model predicts."""
        if p["type"] == "notification":
            out = {"type": p["type"], "id": p["id"], "unread": p["unread"]}
            if "replaces" in p:
                out["replaces"] = sorted(p["replaces"])
            return out
        out = {"type": p["type"], "ids": sorted(p["ids"]), "unread": p["unread"],
               "device": p["device"]}
        if p.get("all"):
            out["all"] = True
        return out

    async def settle(self, outcomes: list[Outcome]) -> None:
        """Find the serial order explaining ``outcomes``; check pushes and counts."""
        devices = self.online()
        n_changes = sum(1 for o in outcomes if o.kind == "notify" or o.changed)
        seen = [[self.shape(p) for p in await d.take(n_changes)] for d in devices]
        for other in seen[1:]:
            assert other == seen[0], "devices saw different push sequences"
        for order in itertools.permutations(outcomes):
            model = self.model.copy()
            pushes: list[dict[str, Any]] = []
            for o in order:
                push, ok = self.expect(model, o)
                if not ok:
                    break
                if push is not None:
                    pushes.append(push)
            else:
                if not devices or pushes == seen[0]:
                    self.model = model
                    break
        else:
            raise AssertionError(f"no serial order explains {outcomes} and pushes {seen}")
        await self.check()

    async def check(self) -> None:
        status, body = await self.node.api("GET", f"/v1/users/{self.user}/unread")
        assert status == 200
        assert body["unread"] == self.model.count, (body, self.model)
        for d in self.online():
            assert d.count == self.model.count, (d.name, d.count, self.model.count)

    # -- the steps --

    async def run(self, s: tuple[Any, ...]) -> None:
        if s[0] in ("notify", "mark"):
            if s[0] == "mark" and s[1] != "api" and self.devices[s[1]] is None:
                s = ("mark", "api", *s[2:])
            await self.settle([await (await self.issue(s))])
        elif s[0] == "burst":
            parts = [p if p[0] != "mark" or p[1] == "api" or self.devices[p[1]] is not None
                     else ("mark", "api", *p[2:]) for p in s[1]]
            futures = [await self.issue(p) for p in parts]
            await self.settle(list(await asyncio.gather(*futures)))
        elif s[0] == "retry":
            await self.retry()
        else:
            await self.toggle(s[1])

    async def retry(self) -> None:
        """Repeat the last notify with its Idempotency-Key: same answer, nothing new."""
        if self.last_notify is None:
            return
        body, key, first = self.last_notify
        status, answer = await self.node.api("POST", "/v1/notify", body,
                                             headers={"Idempotency-Key": key})
        assert status == 200 and answer == first
        await self.check()

    async def toggle(self, i: int) -> None:
        d = self.devices[i]
        if d is not None and len(self.online()) == 1:
            return  # keep one device online: its pushes fix the order of a burst
        if d is not None:
            self.offline_since[i] = (d.stream_offset, len(self.model.stream))
            await d.close()
            self.devices[i] = None
            await self.check()
            return
        since, pos = self.offline_since.pop(i)
        d, hello = await connect(self.node, self.user, f"dev{i}", since)
        self.devices[i] = d
        missed = [(nid, self.model.items[nid].read) for nid in self.model.stream[pos:]
                  if nid in self.model.items and not self.model.items[nid].archived]
        assert [(n["id"], n["read"]) for n in hello["recovered"]] == missed
        assert hello["complete"] is True
        assert hello["unread"] == self.model.count
        await self.check()


# -- the test -----------------------------------------------------------------------------


@pytest.fixture
async def shared_node(tmp_path: Path) -> AsyncIterator[tuple[Node, str]]:
    """One node for all examples, plus a notification id that belongs to someone else."""
    node = await start_node(tmp_path, ws__commands_burst=10000)
    try:
        status, body = await node.api("POST", "/v1/notify", {"users": ["outsider"]})
        assert status == 200
        yield node, body["id"]
    finally:
        await stop_node(node)


@settings(max_examples=150, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=16))
async def test_every_device_count_matches_store_and_model(
        shared_node: tuple[Node, str], steps: list[tuple[Any, ...]]) -> None:
    node, foreign_id = shared_node
    run = Run(node, foreign_id)
    await run.start()
    try:
        for s in steps:
            await run.run(s)
        # A closing notify: nothing unexpected is still queued before it on any device.
        await run.run(("notify", None))
        _, outsider = await node.api("GET", "/v1/users/outsider/unread")
        assert outsider["unread"] == 1
    finally:
        await run.stop()
