"""The event log on the embedded store (contract in contracts/events.py): a
table keyed by an autoincrement position; the cursor is that position."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ..errors import BadRequest
from .contracts.events import EventStore

__all__ = ["EVENTS_SCHEMA", "SqliteEvents"]

EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
"""


def _position(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 19):
        raise BadRequest("since: not a cursor this server gave")
    return int(cursor)


class SqliteEvents(EventStore):
    _run: Callable[..., Any]
    _now_ms: Callable[[], int]

    async def events_append(self, events: Sequence[Mapping[str, Any]], *, keep: float) -> None:
        now = self._now_ms()
        rows = [(now, orjson.dumps(dict(e))) for e in events]

        def tx(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO events (at, body) VALUES (?, ?)", rows)
            db.execute("DELETE FROM events WHERE at < ?", (now - int(keep * 1000),))

        await self._run(tx)

    async def events_since(self, cursor: str | None, *, limit: int
                           ) -> tuple[list[dict[str, Any]], str | None]:
        after = _position(cursor)

        def tx(db: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return db.execute("SELECT pos, body FROM events WHERE pos > ? ORDER BY pos LIMIT ?",
                              (after, limit)).fetchall()

        rows: list[tuple[int, bytes]] = await self._run(tx)
        if not rows:
            return [], cursor
        return [orjson.loads(body) for _, body in rows], str(rows[-1][0])
