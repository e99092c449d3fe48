"""Push endpoints on Redis and Redis Cluster (the contract in contracts/push.py).

Keys (``P`` the store's prefix)::

    P{u:<uid>}:push   hash   device -> JSON endpoint (kind, address, keys, topic, created)
    P{pa}:owner       hash   address -> JSON [user, device]
    P{n:<id>}:push    hash   outcome -> count of a notification's platform pushes

The counts sit in the notification's slot beside its stats record; who
reported a notification ``delivered`` is read from the set ``track`` keeps
there (``P{n:<id>}:tr``, members ``event\0user``).

A user's endpoints live in the user's slot, so registering (replace, add,
drop the oldest over the cap) is one script. The owner index has a slot of
its own: moving an address from one user to another is two steps, the new
owner first, so for a moment both may hold it; the send path looks the owner
up (:meth:`RedisPushEndpoints.push_endpoints_many` keeps only entries whose
address the index gives to that user and device), so the old user's sends
never reach it. A mixin of :class:`~tidings.store.redis.RedisStore`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from ..push.endpoints import Endpoint
from ..redis_wire import escape_tag
from .contracts.push import (
    PUSH_OUTCOMES,
    PushEndpointStore,
    Registered,
    endpoint_from_row,
    endpoint_row,
)

__all__ = ["RedisPushEndpoints"]

# KEYS[1] the user's hash; ARGV device, entry JSON, cap -> the addresses dropped
_REGISTER = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local cap = tonumber(ARGV[3])
local dropped = {}
while redis.call('HLEN', KEYS[1]) > cap do
  local all = redis.call('HGETALL', KEYS[1])
  local oldest, when, addr = nil, nil, nil
  for i = 1, #all, 2 do
    local e = cjson.decode(all[i + 1])
    if all[i] ~= ARGV[1] and (when == nil or e.created < when) then
      oldest, when, addr = all[i], e.created, e.address
    end
  end
  if oldest == nil then break end
  redis.call('HDEL', KEYS[1], oldest)
  dropped[#dropped + 1] = addr
end
return dropped
"""

# KEYS[1] the notification's counts; ARGV outcome, n, outcome, n ... (one step: they move together)
_TALLY = """
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: dict[Any, Any]) -> list[Registered]:
    out = []
    for device, blob in raw.items():
        e = orjson.loads(blob)
        out.append(Registered(_text(device), endpoint_from_row(e), e["created"] / 1000))
    out.sort(key=lambda r: (r.created, r.device))
    return out


class RedisPushEndpoints(PushEndpointStore):
    _io: Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]
    _uk: Callable[[str, str], str]
    _now_ms: Callable[[], int]
    _p: str

    def _owner_key(self) -> str:
        return self._p + "{pa}:owner"

    async def push_register(self, user: str, device: str, endpoint: Endpoint, *,
                            max_per_user: int) -> list[Registered]:
        owner = self._owner_key()
        mine = self._uk(user, ":push")
        entry = orjson.dumps({**endpoint_row(endpoint), "created": self._now_ms()})

        async def run(c: Any) -> None:
            before = await c.hget(owner, endpoint.address)
            previous = await c.hget(mine, device)
            await c.hset(owner, endpoint.address, orjson.dumps([user, device]))
            if before is not None:  # the address was another device's: take it away
                old_user, old_device = orjson.loads(before)
                if (old_user, old_device) != (user, device):
                    await self._drop_if(c, old_user, old_device, endpoint.address)
            dropped = await c.eval(_REGISTER, 1, mine, device, entry, max(1, max_per_user))
            if previous is not None:
                old = orjson.loads(previous)["address"]
                if old != endpoint.address:
                    dropped = [*dropped, old]
            for address in dropped:
                await self._unown(c, _text(address), user)

        await self._io(run)
        return await self.push_endpoints(user)

    async def _drop_if(self, c: Any, user: str, device: str, address: str) -> None:
        """Remove ``user``'s ``device`` entry if it still has ``address``."""
        key = self._uk(user, ":push")
        blob = await c.hget(key, device)
        if blob is not None and orjson.loads(blob)["address"] == address:
            await c.hdel(key, device)

    async def _unown(self, c: Any, address: str, user: str) -> None:
        """Drop ``address`` from the index if ``user`` owns it there."""
        owner = await c.hget(self._owner_key(), address)
        if owner is not None and orjson.loads(owner)[0] == user:
            await c.hdel(self._owner_key(), address)

    async def push_endpoints(self, user: str) -> list[Registered]:
        raw = await self._io(lambda c: c.hgetall(self._uk(user, ":push")))
        return _entries(raw)

    async def push_endpoints_many(self, users: Sequence[str]) -> dict[str, list[Registered]]:
        wanted = list(dict.fromkeys(users))
        if not wanted:
            return {}

        async def run(c: Any) -> list[Any]:
            pipe = c.pipeline(transaction=False)
            for u in wanted:
                pipe.hgetall(self._uk(u, ":push"))
            return list(await pipe.execute())

        found = {u: _entries(raw) for u, raw in zip(wanted, await self._io(run), strict=True)
                 if raw}
        if not found:
            return {}
        addresses = [r.endpoint.address for rs in found.values() for r in rs]
        owners = await self._io(lambda c: c.hmget(self._owner_key(), addresses))
        owned = {a: orjson.loads(o) for a, o in zip(addresses, owners, strict=True) if o}
        out: dict[str, list[Registered]] = {}
        for u, rs in found.items():
            keep = [r for r in rs if owned.get(r.endpoint.address) == [u, r.device]]
            if keep:
                out[u] = keep
        return out

    async def push_remove(self, user: str, *, device: str | None = None) -> int:
        key = self._uk(user, ":push")

        async def run(c: Any) -> int:
            if device is None:
                raw = await c.hgetall(key)
                await c.delete(key)
            else:
                blob = await c.hget(key, device)
                raw = {} if blob is None else {device: blob}
                if blob is not None:
                    await c.hdel(key, device)
            for blob in raw.values():
                await self._unown(c, orjson.loads(blob)["address"], user)
            return len(raw)

        result: int = await self._io(run)
        return result

    async def push_remove_address(self, address: str) -> bool:
        async def run(c: Any) -> bool:
            owner = await c.hget(self._owner_key(), address)
            if owner is None:
                return False
            user, device = orjson.loads(owner)
            await c.hdel(self._owner_key(), address)
            await self._drop_if(c, user, device, address)
            return True

        result: bool = await self._io(run)
        return result

    def _note_key(self, notification: str, suffix: str) -> str:
        """A key in the notification's slot (``{n:<id>}``): its stats record,
        tracked set, variants and push counts (the RedisStore's too)."""
        return self._p + "{n:" + escape_tag(notification) + "}" + suffix

    async def push_tally(self, notification: str, counts: Mapping[str, int]) -> None:
        adds = {k: n for k, n in counts.items() if n}
        if not adds:
            return
        key = self._note_key(notification, ":push")

        args = [x for k, n in adds.items() for x in (k, n)]
        await self._io(lambda c: c.eval(_TALLY, 1, key, *args))

    async def push_counts(self, notification: str) -> dict[str, int]:
        raw = await self._io(lambda c: c.hgetall(self._note_key(notification, ":push")))
        out = dict.fromkeys(PUSH_OUTCOMES, 0)
        for k, v in raw.items():
            if _text(k) in out:
                out[_text(k)] = int(v)
        return out

    async def push_acked(self, notification: str, users: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(users))
        if not wanted:
            return set()
        key = self._note_key(notification, ":tr")
        found = await self._io(lambda c: c.smismember(key, [f"delivered\0{u}" for u in wanted]))
        return {u for u, hit in zip(wanted, found, strict=True) if hit}
