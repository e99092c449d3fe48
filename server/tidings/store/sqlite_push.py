"""Push endpoints on the embedded store (the contract in contracts/push.py).

One row per address (the primary key: an address belongs to one device), a
unique (user, device) pair, and the rows of a user ordered by creation. A
mixin of :class:`~tidings.store.sqlite.SqliteStore`, which creates
:data:`PUSH_SCHEMA` at open and runs the transactions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..push.endpoints import Endpoint
from .contracts.push import (
    PUSH_OUTCOMES,
    PushEndpointStore,
    Registered,
    endpoint_from_row,
    endpoint_row,
)
from .sqlite_in import select_in

__all__ = ["PUSH_SCHEMA", "SqlitePushEndpoints"]

T = TypeVar("T")

PUSH_SCHEMA = """
CREATE TABLE IF NOT EXISTS push_endpoints (
    address TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    p256dh TEXT NOT NULL DEFAULT '',
    auth TEXT NOT NULL DEFAULT '',
    topic TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,
    UNIQUE (user, device)
);
CREATE INDEX IF NOT EXISTS push_endpoints_user ON push_endpoints (user, created);
CREATE TABLE IF NOT EXISTS push_counts (
    id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (id, outcome)
) WITHOUT ROWID;
"""

_COLUMNS = "user, device, kind, address, p256dh, auth, topic, created"


def _registered(row: tuple[Any, ...]) -> Registered:
    _, device, kind, address, p256dh, auth, topic, created = row
    return Registered(device, endpoint_from_row({"kind": kind, "address": address,
                                                 "p256dh": p256dh, "auth": auth,
                                                 "topic": topic}), created / 1000)


def _of(db: sqlite3.Connection, user: str) -> list[Registered]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM push_endpoints WHERE user = ? "
                      "ORDER BY created, rowid", (user,)).fetchall()
    return [_registered(r) for r in rows]


class SqlitePushEndpoints(PushEndpointStore):
    _run: Callable[..., Any]
    _now_ms: Callable[[], int]

    async def push_register(self, user: str, device: str, endpoint: Endpoint, *,
                            max_per_user: int) -> list[Registered]:
        row = endpoint_row(endpoint)
        now = self._now_ms()

        def tx(db: sqlite3.Connection) -> list[Registered]:
            db.execute("DELETE FROM push_endpoints WHERE address = ? OR (user = ? AND device = ?)",
                       (endpoint.address, user, device))
            db.execute("INSERT INTO push_endpoints (user, device, kind, address, p256dh, auth, "
                       "topic, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (user, device, row["kind"], row["address"], row["p256dh"], row["auth"],
                        row["topic"], now))
            db.execute("DELETE FROM push_endpoints WHERE user = ? AND rowid NOT IN (SELECT rowid "
                       "FROM push_endpoints WHERE user = ? ORDER BY created DESC, rowid DESC "
                       "LIMIT ?)", (user, user, max(1, max_per_user)))
            return _of(db, user)

        result: list[Registered] = await self._run(tx)
        return result

    async def push_endpoints(self, user: str) -> list[Registered]:
        result: list[Registered] = await self._run(lambda db: _of(db, user))
        return result

    async def push_endpoints_many(self, users: Sequence[str]) -> dict[str, list[Registered]]:
        wanted = list(dict.fromkeys(users))

        def tx(db: sqlite3.Connection) -> dict[str, list[Registered]]:
            out: dict[str, list[Registered]] = {}
            for r in select_in(db, f"SELECT {_COLUMNS} FROM push_endpoints WHERE user IN"
                                   " ({marks}) ORDER BY created, rowid", wanted):
                out.setdefault(r[0], []).append(_registered(r))
            return out

        result: dict[str, list[Registered]] = await self._run(tx)
        return result

    async def push_remove(self, user: str, *, device: str | None = None) -> int:
        def tx(db: sqlite3.Connection) -> int:
            if device is None:
                return db.execute("DELETE FROM push_endpoints WHERE user = ?", (user,)).rowcount
            return db.execute("DELETE FROM push_endpoints WHERE user = ? AND device = ?",
                              (user, device)).rowcount

        result: int = await self._run(tx)
        return result

    async def push_remove_address(self, address: str) -> bool:
        result: int = await self._run(lambda db: db.execute(
            "DELETE FROM push_endpoints WHERE address = ?", (address,)).rowcount)
        return result > 0

    async def push_tally(self, notification: str, counts: Mapping[str, int]) -> None:
        rows = [(notification, k, n) for k, n in counts.items() if n]
        if not rows:
            return
        await self._run(lambda db: db.executemany(
            "INSERT INTO push_counts (id, outcome, n) VALUES (?, ?, ?) "
            "ON CONFLICT (id, outcome) DO UPDATE SET n = n + excluded.n", rows))

    async def push_counts(self, notification: str) -> dict[str, int]:
        rows = await self._run(lambda db: db.execute(
            "SELECT outcome, n FROM push_counts WHERE id = ?", (notification,)).fetchall())
        out = dict.fromkeys(PUSH_OUTCOMES, 0)
        out.update({k: n for k, n in rows if k in out})
        return out

    async def push_acked(self, notification: str, users: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(users))

        def tx(db: sqlite3.Connection) -> set[str]:
            return {u for (u,) in select_in(
                db, "SELECT user FROM tracks WHERE id = ? AND event = 'delivered'"
                " AND user IN ({marks})", wanted, (notification,))}

        result: set[str] = await self._run(tx)
        return result
