"""The embedded store: one SQLite file (WAL) under the data folder.

All SQL runs on one dedicated thread, so the event loop never blocks on the
disk and every call is one transaction (the atomicity the contract asks for).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..errors import Unavailable
from ..protocol.topics import is_wildcard, matches
from ..types import Offset, PayloadKind, Publication, format_offset, parse_offset
from .base import HistoryPage, HistoryPolicy, PublishResult, Store

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (topic, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT PRIMARY KEY,
    offset TEXT NOT NULL,
    ts INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    payload BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    offset TEXT NOT NULL,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires);
"""


class SqliteStore(Store):
    def __init__(
        self,
        folder: str | Path,
        *,
        idempotency_ttl: float = 86400.0,
        clock: Callable[[], float] = time.time,
        filename: str = "tidings.sqlite3",
    ) -> None:
        self.path = Path(folder) / filename
        self._idempotency_ttl = idempotency_ttl
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- plumbing -------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db, executor = self._db, self._executor
        if db is None or executor is None:
            raise Unavailable("store is closed")

        def job() -> T:
            try:
                with db:  # one transaction: commit, or roll back on error
                    return fn(db)
            except sqlite3.OperationalError as e:
                raise Unavailable("store unavailable") from e

        return await asyncio.get_running_loop().run_in_executor(executor, job)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite")

        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            db.isolation_level = ""  # 'with db' opens a transaction per call
            return db

        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if db is None or executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._run(lambda db: db.execute("SELECT 1").fetchone() == (1,))
        except Unavailable:
            return False

    # -- topics ---------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        kind: PayloadKind,
        *,
        retain: bool,
        policy: HistoryPolicy,
        idempotency_key: str | None = None,
    ) -> PublishResult:
        now = self._now_ms()

        def tx(db: sqlite3.Connection) -> PublishResult:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT topic, offset FROM idempotency WHERE key = ? AND expires > ?",
                    (idempotency_key, now),
                ).fetchone()
                if row is not None:
                    return PublishResult(self._find(db, row[0], row[1], payload, kind),
                                         duplicate=True)
            row = db.execute("SELECT epoch, seq FROM topics WHERE topic = ?",
                             (topic,)).fetchone()
            if row is None:
                epoch, seq = secrets.token_hex(4), 1
                db.execute("INSERT INTO topics (topic, epoch, seq) VALUES (?, ?, 1)",
                           (topic, epoch))
            else:
                epoch, seq = row[0], row[1] + 1
                db.execute("UPDATE topics SET seq = ? WHERE topic = ?", (seq, topic))
            offset = format_offset(epoch, seq)
            if policy.size > 0:
                db.execute(
                    "INSERT INTO history (topic, seq, ts, expires, kind, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, seq, now, now + int(policy.ttl * 1000), int(kind), payload),
                )
            db.execute("DELETE FROM history WHERE topic = ? AND (seq <= ? OR expires <= ?)",
                       (topic, seq - policy.size, now))
            if retain:
                if payload:
                    db.execute(
                        "INSERT OR REPLACE INTO retained (topic, offset, ts, kind, payload)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (topic, offset, now, int(kind), payload),
                    )
                else:
                    db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
            if idempotency_key is not None:
                db.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
                db.execute(
                    "INSERT INTO idempotency (key, topic, offset, expires) VALUES (?, ?, ?, ?)",
                    (idempotency_key, topic, offset,
                     now + int(self._idempotency_ttl * 1000)),
                )
            return PublishResult(Publication(topic, offset, payload, kind, now))

        return await self._run(tx)

    @staticmethod
    def _find(db: sqlite3.Connection, topic: str, offset: str, payload: bytes,
              kind: PayloadKind) -> Publication:
        """The publication an idempotency key points at (payload from history if kept)."""
        parsed = parse_offset(offset)
        assert parsed is not None
        row = db.execute("SELECT ts, kind, payload FROM history WHERE topic = ? AND seq = ?",
                         (topic, parsed[1])).fetchone()
        if row is None:
            return Publication(topic, Offset(offset), payload, kind, 0)
        return Publication(topic, Offset(offset), bytes(row[2]), PayloadKind(row[1]), row[0])

    async def history(self, topic: str, since: str | None, limit: int) -> HistoryPage:
        now = self._now_ms()

        def tx(db: sqlite3.Connection) -> HistoryPage:
            row = db.execute("SELECT epoch, seq FROM topics WHERE topic = ?",
                             (topic,)).fetchone()
            if row is None:
                # Never published: complete unless 'since' claims messages we never had.
                return HistoryPage([], None, since is None)
            epoch, last = row
            parsed = parse_offset(since) if since is not None else None
            same_epoch = parsed is not None and parsed[0] == epoch
            if since is None:
                rows = db.execute(
                    "SELECT seq, ts, kind, payload FROM history WHERE topic = ? AND expires > ?"
                    " ORDER BY seq DESC LIMIT ?", (topic, now, limit)).fetchall()
                rows.reverse()
                complete = bool(rows) and rows[0][0] == 1
            else:
                cutoff = parsed[1] if same_epoch and parsed is not None else 0
                rows = db.execute(
                    "SELECT seq, ts, kind, payload FROM history WHERE topic = ? AND seq > ?"
                    " AND expires > ? ORDER BY seq LIMIT ?",
                    (topic, cutoff, now, limit + 1)).fetchall()
                if not same_epoch:
                    complete = False
                elif cutoff >= last:
                    complete = True
                else:
                    complete = bool(rows) and rows[0][0] == cutoff + 1 and len(rows) <= limit
                rows = rows[:limit]
            items = [Publication(topic, format_offset(epoch, seq), bytes(p), PayloadKind(k), ts)
                     for seq, ts, k, p in rows]
            return HistoryPage(items, format_offset(epoch, last), complete)

        return await self._run(tx)

    async def latest(self, topic: str) -> Offset | None:
        def tx(db: sqlite3.Connection) -> Offset | None:
            row = db.execute("SELECT epoch, seq FROM topics WHERE topic = ?",
                             (topic,)).fetchone()
            return None if row is None else format_offset(row[0], row[1])

        return await self._run(tx)

    async def retained(self, flt: str) -> list[Publication]:
        def tx(db: sqlite3.Connection) -> list[Publication]:
            if not is_wildcard(flt):
                rows = db.execute("SELECT topic, offset, ts, kind, payload FROM retained "
                                  "WHERE topic = ?", (flt,)).fetchall()
            else:
                prefix = flt.split("+", 1)[0].split("#", 1)[0]
                rows = db.execute(
                    "SELECT topic, offset, ts, kind, payload FROM retained "
                    "WHERE substr(topic, 1, ?) = ? ORDER BY topic",
                    (len(prefix), prefix)).fetchall()
            return [Publication(t, Offset(o), bytes(p), PayloadKind(k), ts, retained=True)
                    for t, o, ts, k, p in rows if matches(flt, t)]

        return await self._run(tx)
