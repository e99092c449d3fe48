"""The event log on Redis and Redis Cluster (contract in contracts/events.py):
one stream, ``P{ev}:log``, in one slot; the cursor is the stream entry id.

Entry ids carry the store's clock (``<ms>-*``, never below the last entry's,
so a node whose clock is behind still appends after the others), and appends
trim by ``MINID`` (entries older than the retention), approximately (``~``),
which Redis does cheaply per whole node of the stream. One script per append:
the id choice, the entries and the trim are one step."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from ..errors import BadRequest
from .contracts.events import EventStore

__all__ = ["RedisEvents"]

# KEYS[1] the stream; ARGV now_ms, floor_ms, event JSON...
_APPEND = """
local ms = tonumber(ARGV[1])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local last_ms = tonumber(string.match(last[1][1], '^(%d+)-'))
  if last_ms > ms then ms = last_ms end
end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], ms .. '-*', 'e', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[2])
return 1
"""
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisEvents(EventStore):
    _io: Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]
    _now_ms: Callable[[], int]
    _p: str

    def _log_key(self) -> str:
        return self._p + "{ev}:log"

    async def events_append(self, events: Sequence[Mapping[str, Any]], *, keep: float) -> None:
        if not events:
            return
        key = self._log_key()
        floor = max(0, self._now_ms() - int(keep * 1000))

        blobs = [orjson.dumps(dict(e)) for e in events]
        await self._io(lambda c: c.eval(_APPEND, 1, key, self._now_ms(), floor, *blobs))

    async def events_since(self, cursor: str | None, *, limit: int
                           ) -> tuple[list[dict[str, Any]], str | None]:
        if cursor is not None and not _STREAM_ID.fullmatch(cursor):
            raise BadRequest("since: not a cursor this server gave")
        start = "-" if cursor is None else "(" + cursor
        rows = await self._io(lambda c: c.xrange(self._log_key(), min=start, max="+",
                                                 count=limit))
        if not rows:
            return [], cursor
        return [orjson.loads(fields[b"e"] if b"e" in fields else fields["e"])
                for _, fields in rows], _text(rows[-1][0])
