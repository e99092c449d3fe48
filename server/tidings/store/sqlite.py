"""The embedded store: one SQLite file (WAL) under the data folder.

All SQL runs on one dedicated thread, so the event loop never blocks on the
disk and every call is one transaction (the atomicity the contract asks for).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import orjson

from ..errors import BadRequest, Unavailable
from ..health import StoreHealth
from ..protocol.topics import is_wildcard, matches
from ..redis_wire import MetaCodec
from ..types import (
    Offset,
    PayloadKind,
    Publication,
    format_offset,
    parse_offset,
    stored_publication,
)
from .base import (
    FEEDBACK_REASONS,
    JOB_STATUSES,
    MAX_EVENT_IDS,
    PRUNE_STEP,
    RECENT_KEPT,
    STAT_EVENTS,
    TRACK_EVENTS,
    DeliverResult,
    Delivery,
    DueEntry,
    HistoryPage,
    HistoryPolicy,
    InboxItem,
    InboxPage,
    Job,
    JobPage,
    JobStatus,
    MarkAction,
    MqttSessionState,
    NewJob,
    NotifyResult,
    PolicyFor,
    PublishRequest,
    PublishResult,
    QueuedMessage,
    Store,
    SweepResult,
    UserChange,
    events_topic,
    notifications_topic,
    unread_topic,
)
from .contracts.audience import (
    ENGAGEMENT_EVENTS,
    ENGAGEMENT_KEEP,
    AudiencePage,
    AudienceQuery,
    Profile,
    check_attribute_values,
)
from .sqlite_events import EVENTS_SCHEMA, SqliteEvents
from .sqlite_in import IN_SLICE, select_in
from .sqlite_push import PUSH_SCHEMA, SqlitePushEndpoints
from .sqlite_variants import VARIANTS_FILL, VARIANTS_SCHEMA, variant_counts

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
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL DEFAULT 1,
    meta BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    id TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER,
    read INTEGER NOT NULL DEFAULT 0,
    archived INTEGER NOT NULL DEFAULT 0,
    collapse_key TEXT,
    fields BLOB NOT NULL,
    UNIQUE (user, id)
);
CREATE INDEX IF NOT EXISTS inbox_user ON inbox (user, archived, read, seq);
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    targets INTEGER NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS notifications_created ON notifications (created);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mqtt_sessions (
    client_id TEXT PRIMARY KEY,
    state BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mqtt_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    message BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS mqtt_queue_client ON mqtt_queue (client_id, seq);
CREATE TABLE IF NOT EXISTS tracks (
    id TEXT NOT NULL,
    user TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (id, user, event)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires);
CREATE TABLE IF NOT EXISTS inbox_counts (
    user TEXT PRIMARY KEY,
    unread INTEGER NOT NULL,
    total INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_user_expires ON inbox (user, expires)
    WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_expires ON inbox (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS inbox_collapse ON inbox (user, collapse_key)
    WHERE collapse_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS history_expires ON history (expires);
CREATE TABLE IF NOT EXISTS audience_users (
    user TEXT PRIMARY KEY,
    attributes BLOB,
    seen INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_tags (
    tag TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (tag, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_tags_user ON user_tags (user);
CREATE TABLE IF NOT EXISTS segments (
    name TEXT PRIMARY KEY,
    definition BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS engagements (
    user TEXT NOT NULL,
    category TEXT NOT NULL,
    id TEXT NOT NULL,
    event TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (user, category, id, event)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS engagements_ts ON engagements (user, category, ts);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    category TEXT NOT NULL,
    request BLOB NOT NULL,
    targets INTEGER NOT NULL,
    created REAL NOT NULL,
    due REAL NOT NULL,
    expires_at REAL,
    cursor TEXT,
    lease_owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, due);
CREATE TABLE IF NOT EXISTS job_targets (
    id TEXT NOT NULL,
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    variant TEXT,
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_counts (
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (id, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS due_queue (
    id TEXT NOT NULL,
    user TEXT NOT NULL,
    due REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS due_queue_due ON due_queue (due);
CREATE TABLE IF NOT EXISTS pushes (
    user TEXT NOT NULL,
    category TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pushes_user ON pushes (user, category, ts);
CREATE INDEX IF NOT EXISTS pushes_ts ON pushes (ts);
CREATE TABLE IF NOT EXISTS user_preferences (
    user TEXT PRIMARY KEY,
    doc BLOB NOT NULL
) WITHOUT ROWID;
"""

# feedback: the reason and comment beside each 'feedback' event in tracks (issue 13)
_FEEDBACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT NOT NULL,
    user TEXT NOT NULL,
    reason TEXT NOT NULL,
    comment TEXT,
    ts INTEGER NOT NULL,
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
"""

# audience_users: one row per user the audience contract knows (tags, attributes,
# last seen or engagement), the candidates of a selection without tags.

# inbox_counts: per user, ``unread`` counts the unread, unarchived items still
# stored (expired ones too, until swept: reads subtract those, found through
# inbox_user_expires), ``total`` every stored item. A table added after the
# inbox: filled from it once when missing (_COUNTS_FILL).
_COUNTS_FILL = """
INSERT INTO inbox_counts (user, unread, total)
SELECT user, SUM(read = 0 AND archived = 0), COUNT(*) FROM inbox GROUP BY user
"""


_PROBE_SIZE = 65536  # bytes written by each ping (see SqliteStore.ping)
_CORRUPT = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


class SqliteStore(SqlitePushEndpoints, SqliteEvents, Store):
    def __init__(
        self,
        folder: str | Path,
        *,
        idempotency_ttl: float = 86400.0,
        clock: Callable[[], float] = time.time,
        filename: str = "tidings.sqlite3",
        max_inbox: int = 1000,
        meta_codec: MetaCodec | None = None,
    ) -> None:
        if max_inbox < 1:
            raise ValueError("max_inbox must be at least 1")
        self.path = Path(folder) / filename
        # a retained message's ``meta`` (MQTT 5.0 properties) is kept as the
        # codec's map, msgpacked; without a codec it is not kept
        self._meta_codec = meta_codec
        self._idempotency_ttl = idempotency_ttl
        self._max_inbox = max_inbox
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._epoch = ""  # made once per store: a wiped store gets a new one
        self._jobs: list[tuple[Any, Any]] = []  # calls waiting for the next group commit
        self._executor: ThreadPoolExecutor | None = None

    # -- plumbing -------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in the next group commit (see :meth:`_commit_batch`)."""
        if self._db is None or self._executor is None:
            raise Unavailable("store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if not self._jobs:
            loop.call_soon(self._submit)
        self._jobs.append((fn, fut))
        return await fut

    def _submit(self) -> None:
        jobs, self._jobs = self._jobs, []
        db, executor = self._db, self._executor
        if db is None or executor is None:
            for _, fut in jobs:
                if not fut.done():
                    fut.set_exception(Unavailable("store is closed"))
            return
        loop = asyncio.get_running_loop()
        executor.submit(self._commit_batch, db, jobs, loop, self.monitor)

    @staticmethod
    def _commit_batch(db: sqlite3.Connection, jobs: list[tuple[Any, Any]],
                      loop: asyncio.AbstractEventLoop, monitor: StoreHealth | None) -> None:
        """Group commit, on the store's thread: every call queued during one loop
        pass runs in one transaction, each in its own savepoint (a failing call
        rolls back alone), and all are answered after the single COMMIT. Under
        load this turns many small transactions into one, at no cost in
        durability: nobody hears "stored" before the commit. The ``monitor``
        hears how long it took, or that SQLite failed it (full disk, corrupt page)."""
        results: list[tuple[Any, Any, BaseException | None]] = []
        started = time.perf_counter()
        failure: sqlite3.Error | None = None
        try:
            db.execute("BEGIN IMMEDIATE")
            for fn, fut in jobs:
                db.execute("SAVEPOINT job")
                try:
                    value = fn(db)
                except Exception as e:
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    if isinstance(e, sqlite3.Error):  # the database's fault, not the call's
                        failure = e
                        e = Unavailable("store unavailable")
                    results.append((fut, None, e))
                    continue
                db.execute("RELEASE job")
                results.append((fut, value, None))
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:  # SQLite may have rolled back on its own (SQLITE_FULL)
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            failure = e
            results = [(fut, None, Unavailable("store unavailable")) for _, fut in jobs]
        elapsed = time.perf_counter() - started
        loop.call_soon_threadsafe(_resolve, results, monitor, elapsed, failure)

    def _topic_epoch(self, topic: str) -> str:
        """A topic's epoch, derived from the store's (so it needs no row until the
        first publish, and differs between topics and between stores)."""
        digest = hashlib.sha256(f"{self._epoch}\0{topic}".encode()).hexdigest()
        return digest[:8]

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
            counted = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                                 " AND name = 'inbox_counts'").fetchone() is not None
            by_variant = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                                    " AND name = 'variant_counts'").fetchone() is not None
            db.executescript(_SCHEMA)
            db.executescript(PUSH_SCHEMA)
            db.executescript(EVENTS_SCHEMA)
            db.executescript(_FEEDBACK_SCHEMA)
            if not counted:  # a data folder from before the counters: count once
                db.execute(_COUNTS_FILL)
            columns = {row[1] for row in db.execute("PRAGMA table_info(retained)")}
            if "qos" not in columns:  # a data folder from before retained kept its QoS
                db.execute("ALTER TABLE retained ADD COLUMN qos INTEGER NOT NULL DEFAULT 1")
            if "meta" not in columns:  # ... or its MQTT 5.0 properties
                db.execute("ALTER TABLE retained ADD COLUMN meta BLOB")
            targets = {row[1] for row in db.execute("PRAGMA table_info(job_targets)")}
            if "variant" not in targets:  # ... or from before targets kept their variant
                db.execute("ALTER TABLE job_targets ADD COLUMN variant TEXT")
            db.executescript(VARIANTS_SCHEMA)
            if not by_variant:  # ... or from before the counters per variant: count once
                db.executescript(VARIANTS_FILL)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                       (secrets.token_hex(4),))
            self._epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
            return db  # autocommit mode: _commit_batch opens and ends the transactions

        self._db = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if db is None or executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, db.close)
        executor.shutdown(wait=True)

    async def ping(self) -> bool:
        """A write probe: a store that answers reads but cannot write (a full
        disk, a corrupt page) is not ready. It rewrites one 64 KiB row (a large
        message), so a disk with room for a few pages only is not taken for
        healthy while real messages fail."""
        def probe(db: sqlite3.Connection) -> bool:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('ping', zeroblob(?))",
                       (_PROBE_SIZE,))
            return True

        try:
            return await self._run(probe)
        except Unavailable:
            return False

    # -- topics ---------------------------------------------------------------

    def _append(self, db: sqlite3.Connection, topic: str, payload: bytes, kind: PayloadKind,
                now: int, policy: HistoryPolicy, retain: bool, qos: int = 1,
                meta: bytes | None = None) -> Publication:
        """Inside a transaction: next offset, history append and trim, retained
        (with ``meta``, the encoded properties it is delivered with)."""
        return self._append_many(db, [(topic, payload, kind, policy, retain, qos, meta)], now)[0]

    def _append_many(self, db: sqlite3.Connection, entries: Sequence[_Entry], now: int
                     ) -> list[Publication]:
        """:meth:`_append` for many entries at once (a chunk's streams and retained
        counts): one read of the topics' sequences, then one statement per table run
        over all of them (``executemany``), in order, as one append after another
        would leave them (a topic named twice gets two offsets)."""
        state: dict[str, tuple[str, int]] = {
            t: (epoch, seq) for t, epoch, seq in select_in(
                db, "SELECT topic, epoch, seq FROM topics WHERE topic IN ({marks})",
                list(dict.fromkeys(e[0] for e in entries)))}
        history: list[tuple[str, int, int, int, int, bytes]] = []
        trims: list[tuple[str, int, int]] = []
        retained: dict[str, tuple[str, str, int, int, bytes, int, bytes | None] | None] = {}
        pubs = []
        for topic, payload, kind, policy, retain, qos, meta in entries:
            known = state.get(topic)
            if known is None:
                epoch, seq = self._topic_epoch(topic), 1
            else:
                epoch, seq = known[0], known[1] + 1
            state[topic] = (epoch, seq)
            offset = format_offset(epoch, seq)
            if policy.size > 0:
                history.append((topic, seq, now, now + int(policy.ttl * 1000), int(kind),
                                payload))
            if known is not None:  # a topic without a row has no history yet
                trims.append((topic, seq - policy.size, now))
            if retain:  # an empty payload clears it; the last one for a topic holds
                retained[topic] = (topic, offset, now, int(kind), payload, qos, meta) \
                    if payload else None
            pubs.append(stored_publication(topic, offset, payload, kind, now))
        db.executemany("INSERT INTO topics (topic, epoch, seq) VALUES (?, ?, ?)"
                       " ON CONFLICT (topic) DO UPDATE SET seq = excluded.seq",
                       [(t, epoch, seq) for t, (epoch, seq) in state.items()])
        db.executemany("INSERT INTO history (topic, seq, ts, expires, kind, payload)"
                       " VALUES (?, ?, ?, ?, ?, ?)", history)
        db.executemany("DELETE FROM history WHERE topic = ? AND (seq <= ? OR expires <= ?)",
                       trims)
        db.executemany("INSERT OR REPLACE INTO retained (topic, offset, ts, kind, payload, qos,"
                       " meta) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [r for r in retained.values() if r is not None])
        db.executemany("DELETE FROM retained WHERE topic = ?",
                       [(t,) for t, r in retained.items() if r is None])
        return pubs

    def _idem_get(self, db: sqlite3.Connection, key: str | None, now: int) -> Any:
        if key is None:
            return None
        row = db.execute("SELECT value FROM idempotency WHERE key = ? AND expires > ?",
                         (key, now)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def _idem_put(self, db: sqlite3.Connection, key: str | None, now: int, value: Any) -> None:
        if key is None:
            return
        db.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
        db.execute("INSERT OR REPLACE INTO idempotency (key, value, expires) VALUES (?, ?, ?)",
                   (key, orjson.dumps(value), now + int(self._idempotency_ttl * 1000)))

    async def publish(
        self,
        topic: str,
        payload: bytes,
        kind: PayloadKind,
        *,
        retain: bool,
        policy: HistoryPolicy,
        idempotency_key: str | None = None,
        qos: int = 1,
        origin: str | None = None,
        meta: Any = None,
    ) -> PublishResult:
        now = self._now_ms()
        request = PublishRequest(topic, payload, kind, policy, retain, idempotency_key, qos,
                                 origin, meta)
        return await self._run(lambda db: self._publish_one(db, request, now))

    async def publish_many(self, requests: Sequence[PublishRequest]) -> list[PublishResult]:
        """As :meth:`Store.publish_many`: one job of the group commit, so the whole
        group is one transaction (all of it stored, or none)."""
        now = self._now_ms()
        group = list(requests)
        return await self._run(lambda db: [self._publish_one(db, r, now) for r in group])

    def _publish_one(self, db: sqlite3.Connection, r: PublishRequest, now: int
                     ) -> PublishResult:
        """Inside a transaction: one publish, or the duplicate its key points at."""
        first = self._idem_get(db, r.idempotency_key, now)
        if first is not None:
            return PublishResult(self._find(db, first["topic"], first["offset"], r.payload,
                                            r.kind), duplicate=True)
        packed = self._pack_meta(r.meta) if r.retain else None  # a retained message's meta
        pub = self._append(db, r.topic, r.payload, r.kind, now, r.policy, r.retain, r.qos,
                           packed)
        self._idem_put(db, r.idempotency_key, now, {"topic": r.topic, "offset": pub.offset})
        return PublishResult(pub)

    def _pack_meta(self, meta: Any) -> bytes | None:
        """``meta`` as stored with a retained message: the codec's map, msgpacked."""
        if meta is None or self._meta_codec is None:
            return None
        encoded = self._meta_codec.encode(meta)
        return msgpack.packb(encoded) if encoded else None

    def _unpack_meta(self, blob: bytes | None) -> Any:
        """A stored ``meta`` back, as the codec makes it (None without one)."""
        if not blob or self._meta_codec is None:
            return None
        try:
            return self._meta_codec.decode(msgpack.unpackb(blob, raw=False))
        except (ValueError, TypeError):
            return None  # unreadable (another version's): delivered without it

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
                start = format_offset(self._topic_epoch(topic), 0)
                return HistoryPage([], start, since is None or since == start)
            epoch, last = row
            parsed = parse_offset(since) if since is not None else None
            same_epoch = parsed is not None and parsed[0] == epoch
            if since is None:
                rows = db.execute(
                    "SELECT seq, ts, kind, payload FROM history WHERE topic = ? AND expires > ?"
                    " ORDER BY seq DESC LIMIT ?", (topic, now, limit)).fetchall()
                rows.reverse()
                complete = rows[0][0] == 1 if rows else last == 0
            else:
                cutoff = parsed[1] if same_epoch and parsed is not None else 0
                rows = db.execute(
                    "SELECT seq, ts, kind, payload FROM history WHERE topic = ? AND seq > ?"
                    " AND expires > ? ORDER BY seq LIMIT ?",
                    (topic, cutoff, now, limit + 1)).fetchall()
                if not same_epoch:
                    complete = False
                elif cutoff > last:
                    complete = False  # an offset from the future: a store restored from backup
                elif cutoff == last:
                    complete = True
                else:
                    complete = bool(rows) and rows[0][0] == cutoff + 1 and len(rows) <= limit
                rows = rows[:limit]
            items = [Publication(topic, format_offset(epoch, seq), bytes(p), PayloadKind(k), ts)
                     for seq, ts, k, p in rows]
            return HistoryPage(items, format_offset(epoch, last), complete)

        return await self._run(tx)

    async def reserve_offsets(self, topic: str, count: int) -> tuple[str, int]:
        if count < 1:
            raise ValueError("reserve at least one offset")

        def tx(db: sqlite3.Connection) -> tuple[str, int]:
            row = db.execute("SELECT epoch, seq FROM topics WHERE topic = ?", (topic,)).fetchone()
            if row is None:
                epoch, last = self._topic_epoch(topic), 0
                db.execute("INSERT INTO topics (topic, epoch, seq) VALUES (?, ?, ?)",
                           (topic, epoch, count))
            else:
                epoch, last = row[0], row[1]
                db.execute("UPDATE topics SET seq = ? WHERE topic = ?", (last + count, topic))
            return str(epoch), last + 1

        return await self._run(tx)

    async def latest(self, topic: str) -> Offset:
        def tx(db: sqlite3.Connection) -> Offset:
            row = db.execute("SELECT epoch, seq FROM topics WHERE topic = ?",
                             (topic,)).fetchone()
            # A topic never published to is at the store's epoch, sequence 0:
            # nothing is written, so subscribing to new names costs no storage.
            return format_offset(*row) if row is not None else \
                format_offset(self._topic_epoch(topic), 0)

        return await self._run(tx)

    async def retained(self, flt: str) -> list[Publication]:
        def tx(db: sqlite3.Connection) -> list[Publication]:
            if not is_wildcard(flt):
                rows = db.execute("SELECT topic, offset, ts, kind, payload, qos, meta "
                                  "FROM retained WHERE topic = ?", (flt,)).fetchall()
            else:
                # 'home/#' also matches 'home' [MQTT-4.7.1-2]: the prefix stops before the '/'
                prefix = flt.split("+", 1)[0].split("#", 1)[0].rstrip("/")
                rows = db.execute(
                    "SELECT topic, offset, ts, kind, payload, qos, meta FROM retained "
                    "WHERE substr(topic, 1, ?) = ? ORDER BY topic",
                    (len(prefix), prefix)).fetchall()
            return [Publication(t, Offset(o), bytes(p), PayloadKind(k), ts, retained=True,
                                qos=q, meta=self._unpack_meta(m))
                    for t, o, ts, k, p, q, m in rows if matches(flt, t)]

        return await self._run(tx)

    # -- inbox ------------------------------------------------------------------

    @staticmethod
    def _count(db: sqlite3.Connection, user: str, now: int) -> int:
        """The unread count: the counter, less the expired items not swept yet
        (an index range over those only, however large the inbox)."""
        row = db.execute("SELECT unread FROM inbox_counts WHERE user = ?", (user,)).fetchone()
        if row is None:
            return 0
        expired = db.execute(
            "SELECT COUNT(*) FROM inbox INDEXED BY inbox_user_expires WHERE user = ?"
            " AND expires IS NOT NULL AND expires <= ? AND read = 0 AND archived = 0",
            (user, now)).fetchone()
        return int(row[0]) - int(expired[0])

    @staticmethod
    def _bump(db: sqlite3.Connection, user: str, unread: int, total: int) -> None:
        """Move the user's counters by these amounts (in the caller's transaction)."""
        db.execute("INSERT INTO inbox_counts (user, unread, total) VALUES (?, ?, ?)"
                   " ON CONFLICT (user) DO UPDATE SET unread = unread + excluded.unread,"
                   " total = total + excluded.total", (user, unread, total))

    def _delete_items(self, db: sqlite3.Connection, user: str,
                      rows: Sequence[tuple[int, str, int, int]]) -> None:
        """Delete items given as (seq, id, read, archived), keeping the counters."""
        if not rows:
            return
        db.executemany("DELETE FROM inbox WHERE seq = ?", [(r[0],) for r in rows])
        unread = sum(1 for _, _, read, archived in rows if not read and not archived)
        self._bump(db, user, -unread, -len(rows))

    def _prune(self, db: sqlite3.Connection, user: str) -> list[str]:
        """Over ``max_inbox``: drop the oldest read or archived items, then the
        oldest unread; return the unarchived ids dropped (the user's devices
        list those)."""
        row = db.execute("SELECT total FROM inbox_counts WHERE user = ?", (user,)).fetchone()
        over = 0 if row is None else min(int(row[0]) - self._max_inbox, PRUNE_STEP)
        if over <= 0:
            return []
        sql = ("SELECT seq, id, read, archived FROM inbox WHERE user = ? AND archived = ?"
               " AND read = ? ORDER BY seq LIMIT ?")
        done = (db.execute(sql, (user, 1, 1, over)).fetchall()
                + db.execute(sql, (user, 1, 0, over)).fetchall()
                + db.execute(sql, (user, 0, 1, over)).fetchall())
        victims = sorted(done)[:over]
        if len(victims) < over:
            victims += db.execute(sql, (user, 0, 0, over - len(victims))).fetchall()
        self._delete_items(db, user, victims)
        return [nid for _, nid, _, archived in victims if not archived]

    def _unread_retained(self, db: sqlite3.Connection, user: str, count: int, now: int
                         ) -> Publication:
        return self._append(db, unread_topic(user), orjson.dumps({"count": count}),
                            PayloadKind.JSON, now, _NO_HISTORY, True)

    def _write_items(self, db: sqlite3.Connection, nid: str, items: Sequence[_Item], now: int,
                     expires: int | None, collapse_key: str | None, policy: PolicyFor
                     ) -> list[UserChange]:
        """Each user's inbox write (the step of ``notify`` and ``deliver``, for a
        chunk of distinct users at once): collapse, insert, cap, the stream entry and
        the retained count. An item is (user, fields, fields as JSON, edges):
        ``edges`` None is a push for every edge; a list, only for those (named in the
        entry); an empty one (an inbox item without a live push) appends a ``silent``
        event to ``users/{uid}/events`` instead, so devices keep the count and list
        exact. Set-based: a few statements per table for the whole chunk (one read
        per slice of users, one ``executemany`` per write), not a dozen per user."""
        users = [it[0] for it in items]
        replaced: dict[str, list[str]] = {}
        if collapse_key is not None:
            gone = []
            for seq, user, old in select_in(
                    db, "SELECT seq, user, id FROM inbox INDEXED BY inbox_collapse"
                    " WHERE collapse_key = ? AND read = 0 AND archived = 0"
                    " AND user IN ({marks})", users, (collapse_key,)):
                replaced.setdefault(user, []).append(old)
                gone.append((seq,))
            db.executemany("DELETE FROM inbox WHERE seq = ?", gone)
        # the rows as one JSON array (user, fields) that SQLite unpacks (json_each):
        # in order, so seq follows the items; fields are orjson's, so valid UTF-8
        db.execute(
            "INSERT INTO inbox (user, id, created, expires, collapse_key, fields)"
            " SELECT json_extract(value, '$[0]'), ?, ?, ?, ?,"
            " CAST(json_extract(value, '$[1]') AS BLOB) FROM json_each(?)",
            (nid, now, expires, collapse_key,
             orjson.dumps([(user, fields_json.decode()) for user, _, fields_json, _ in items])))
        # one new unread item each, less the unread ones it replaced
        by_delta: dict[int, list[str]] = {}
        for u in users:
            by_delta.setdefault(1 - len(replaced.get(u, ())), []).append(u)
        for d, who in by_delta.items():
            db.execute("INSERT INTO inbox_counts (user, unread, total)"
                       " SELECT value, ?, ? FROM json_each(?) WHERE true"
                       " ON CONFLICT (user) DO UPDATE SET unread = unread + excluded.unread,"
                       " total = total + excluded.total", (d, d, orjson.dumps(who)))
        # the counts and who is over the cap, in one read; the few over it are pruned,
        # then counted again
        counts: dict[str, int] = {}
        over: list[str] = []
        for user, unread, total in select_in(db, _COUNTS_READ, users, (now,)):
            counts[user] = unread
            if total > self._max_inbox:
                over.append(user)
        pruned = {u: self._prune(db, u) for u in over}
        counts.update((u, self._count(db, u, now)) for u in over)
        entries: list[_Entry] = []
        for user, fields, _, edges in items:
            count = counts.get(user, 0)
            if edges is None or edges:
                body = {**fields, "unread": count}
                topic = notifications_topic(user)
            else:
                body = {"type": "silent", "ids": [nid], "unread": count}
                topic = events_topic(user)
            if user in replaced:
                body["replaces"] = replaced[user]
            if pruned.get(user):
                body["pruned"] = pruned[user]
            if edges:
                body["edges"] = list(edges)
            entries.append((topic, orjson.dumps(body), PayloadKind.JSON, policy(topic), False,
                            1, None))
            entries.append((unread_topic(user), orjson.dumps({"count": count}),
                            PayloadKind.JSON, _NO_HISTORY, True, 1, None))
        pubs = self._append_many(db, entries, now)
        return [UserChange(user, counts.get(user, 0), [nid], pubs[2 * i:2 * i + 2])
                for i, user in enumerate(users)]

    async def notify(
        self,
        users: Sequence[str],
        notification: dict[str, Any],
        *,
        ttl: float | None,
        collapse_key: str | None,
        policy: PolicyFor,
        idempotency_key: str | None = None,
    ) -> NotifyResult:
        now = self._now_ms()
        nid = str(notification["id"])
        expires = None if ttl is None else now + int(ttl * 1000)
        fields = {**notification, "ts": now}
        fields_json = orjson.dumps(fields)

        def tx(db: sqlite3.Connection) -> NotifyResult:
            first = self._idem_get(db, idempotency_key, now)
            if first is not None:
                return NotifyResult(first["id"], first["targets"], [], duplicate=True)
            db.execute("INSERT INTO notifications (id, category, targets, created)"
                       " VALUES (?, ?, ?, ?)",
                       (nid, str(notification.get("category", "")), len(users), now))
            changes = self._write_items(
                db, nid, [(user, fields, fields_json, None) for user in dict.fromkeys(users)],
                now, expires, collapse_key, policy)
            self._idem_put(db, idempotency_key, now, {"id": nid, "targets": len(users)})
            return NotifyResult(nid, len(users), changes)

        return await self._run(tx)

    async def inbox(self, user: str, *, limit: int, before: str | None = None,
                    unread_only: bool = False) -> InboxPage:
        now = self._now_ms()
        cursor = int(before) if before is not None and before.isdigit() else None

        def tx(db: sqlite3.Connection) -> InboxPage:
            sql = ("SELECT seq, fields, read, archived FROM inbox WHERE user = ?"
                   " AND archived = 0 AND (expires IS NULL OR expires > ?)")
            args: list[Any] = [user, now]
            if unread_only:
                sql += " AND read = 0"
            if cursor is not None:
                sql += " AND seq < ?"
                args.append(cursor)
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit + 1)
            rows = db.execute(sql, args).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            items = [InboxItem(orjson.loads(f), bool(r), bool(a)) for _, f, r, a in rows]
            nxt = str(rows[-1][0]) if more and rows else None
            return InboxPage(items, self._count(db, user, now), nxt)

        return await self._run(tx)

    async def unread(self, user: str) -> int:
        now = self._now_ms()
        return await self._run(lambda db: self._count(db, user, now))

    async def read_states(self, user: str, ids: Sequence[str]) -> dict[str, bool]:
        ids = list(ids)
        now = self._now_ms()

        def tx(db: sqlite3.Connection) -> dict[str, bool]:
            # Only items still in the inbox: recovery must not resurrect
            # archived or expired notifications.
            return {nid: bool(read) for nid, read in select_in(
                db, "SELECT id, read FROM inbox WHERE user = ? AND archived = 0"
                " AND (expires IS NULL OR expires > ?) AND id IN ({marks})", ids,
                (user, now))}

        return await self._run(tx)

    async def mark(self, user: str, action: MarkAction, ids: Sequence[str] | None, *,
                   device: str, policy: PolicyFor) -> UserChange:
        now = self._now_ms()
        column, value = {"read": ("read", 1), "unread": ("read", 0),
                         "archive": ("archived", 1)}[action]
        id_list = None if ids is None else list(dict.fromkeys(ids))

        def tx(db: sqlite3.Connection) -> UserChange:
            where = (f"user = ? AND {column} != ? AND archived = 0"
                     " AND (expires IS NULL OR expires > ?)")
            args: list[Any] = [user, value, now]
            rows: list[tuple[str, int]] = []
            if id_list is None:
                rows = db.execute(f"SELECT id, read FROM inbox WHERE {where}", args).fetchall()
                db.execute(f"UPDATE inbox SET {column} = ? WHERE {where}", [value, *args])
            else:
                for i in range(0, len(id_list), IN_SLICE):  # two statements a slice
                    chunk = id_list[i:i + IN_SLICE]
                    marks = ",".join("?" * len(chunk))
                    w = f"{where} AND id IN ({marks})"
                    rows += db.execute(f"SELECT id, read FROM inbox WHERE {w}",
                                       [*args, *chunk]).fetchall()
                    db.execute(f"UPDATE inbox SET {column} = ? WHERE {w}",
                               [value, *args, *chunk])
            changed = [r[0] for r in rows]
            # read: every change was unread; unread: none was; archive: those that were
            delta = {"read": -len(rows), "unread": len(rows),
                     "archive": -sum(1 for _, read in rows if not read)}[action]
            if delta:
                self._bump(db, user, delta, 0)
            count = self._count(db, user, now)
            if not changed:
                return UserChange(user, count)
            event: dict[str, Any] = {"type": action}
            if id_list is None:
                event["all"] = True
            if id_list is not None or len(changed) <= MAX_EVENT_IDS:
                event["ids"] = changed  # a bigger "all" change lists none: a bounded push
            event.update(unread=count, device=device)
            topic = events_topic(user)
            pubs = [self._append(db, topic, orjson.dumps(event), PayloadKind.JSON, now,
                                 policy(topic), False),
                    self._unread_retained(db, user, count, now)]
            return UserChange(user, count, changed, pubs)

        return await self._run(tx)

    async def sweep(self, *, policy: PolicyFor, limit: int) -> SweepResult:
        now = self._now_ms()

        def tx(db: sqlite3.Connection) -> SweepResult:
            history = db.execute(
                "DELETE FROM history WHERE (topic, seq) IN (SELECT topic, seq FROM history"
                " WHERE expires <= ? ORDER BY expires LIMIT ?)", (now, limit)).rowcount
            keys = db.execute(
                "DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency"
                " WHERE expires <= ? ORDER BY expires LIMIT ?)", (now, limit)).rowcount
            db.execute("DELETE FROM pushes WHERE rowid IN (SELECT rowid FROM pushes"
                       " WHERE ts <= ? ORDER BY ts LIMIT ?)", (now / 1000 - PUSH_KEEP, limit))
            due = db.execute(
                "SELECT user, seq, id, read, archived FROM inbox INDEXED BY inbox_expires"
                " WHERE expires IS NOT NULL AND expires <= ? ORDER BY expires LIMIT ?",
                (now, limit)).fetchall()
            per_user: dict[str, list[tuple[int, str, int, int]]] = {}
            for user, *row in due:
                per_user.setdefault(user, []).append((row[0], row[1], row[2], row[3]))
            changes = []
            for user, rows in per_user.items():
                self._delete_items(db, user, rows)
                ids = [nid for _, nid, _, archived in rows if not archived]
                if ids:
                    changes.append(self._told(db, user, {"type": "expire"}, ids, now, policy))
            more = max(history, keys, len(due)) >= limit
            return SweepResult(history, len(due), keys, changes, more)

        return await self._run(tx)

    def _told(self, db: sqlite3.Connection, user: str, event: dict[str, Any],
              ids: list[str], now: int, policy: PolicyFor) -> UserChange:
        """Append ``event`` (with ``ids`` and the new count) to the user's events
        stream and update the retained count: the publications that tell devices."""
        count = self._count(db, user, now)
        topic = events_topic(user)
        body = {**event, "ids": ids, "unread": count}
        pubs = [self._append(db, topic, orjson.dumps(body), PayloadKind.JSON, now,
                             policy(topic), False),
                self._unread_retained(db, user, count, now)]
        return UserChange(user, count, ids, pubs)

    @staticmethod
    def _record(db: sqlite3.Connection, notification_id: str, user: str, event: str) -> bool:
        """Record ``event`` in ``tracks`` once for a user with the notification in
        their inbox; whether it is new (``track`` and ``feedback`` both)."""
        known = db.execute("SELECT 1 FROM inbox WHERE user = ? AND id = ?",
                           (user, notification_id)).fetchone()
        if known is None:
            return False
        cur = db.execute("INSERT OR IGNORE INTO tracks (id, user, event) VALUES (?, ?, ?)",
                         (notification_id, user, event))
        return cur.rowcount == 1

    @staticmethod
    def _category(db: sqlite3.Connection, notification_id: str) -> str | None:
        row = db.execute("SELECT category FROM notifications WHERE id = ?",
                         (notification_id,)).fetchone()
        return None if row is None else str(row[0])

    async def track(self, notification_id: str, user: str, event: str) -> bool:
        if event not in TRACK_EVENTS:
            raise ValueError(f"unknown event {event!r}")

        def tx(db: sqlite3.Connection) -> bool:
            if not self._record(db, notification_id, user, event):
                return False
            if event in ENGAGEMENT_EVENTS:  # a delivered report needs no category read
                category = self._category(db, notification_id)
                if category is not None:
                    self._engage(db, user, category, event, notification_id)
            return True

        return await self._run(tx)

    async def feedback(self, notification_id: str, user: str, reason: str,
                       comment: str | None) -> bool:
        if reason not in FEEDBACK_REASONS:
            raise ValueError(f"unknown feedback reason {reason!r}")

        def tx(db: sqlite3.Connection) -> bool:
            if not self._record(db, notification_id, user, "feedback"):
                return False  # the first feedback wins
            db.execute("INSERT INTO feedback (id, user, reason, comment, ts)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (notification_id, user, reason, comment, self._now_ms()))
            if reason == "not_interested":
                category = self._category(db, notification_id)
                if category is not None:
                    db.execute("DELETE FROM engagements WHERE user = ? AND category = ?",
                               (user, category))
            return True

        return await self._run(tx)

    async def stats(self, notification_id: str) -> dict[str, Any] | None:
        def tx(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT category, targets, created FROM notifications WHERE id = ?",
                             (notification_id,)).fetchone()
            if row is None:
                return None
            out: dict[str, Any] = {"id": notification_id, "category": row[0],
                                   "targets": row[1], "created": row[2]}
            out.update({e: 0 for e in STAT_EVENTS})
            for event, n in db.execute("SELECT event, COUNT(*) FROM tracks WHERE id = ?"
                                       " GROUP BY event", (notification_id,)):
                out[event] = n
            out["feedback_reasons"] = reasons = dict.fromkeys(FEEDBACK_REASONS, 0)
            for reason, n in db.execute("SELECT reason, COUNT(*) FROM feedback WHERE id = ?"
                                        " GROUP BY reason", (notification_id,)):
                reasons[reason] = n
            return out

        return await self._run(tx)

    async def category_stats(self) -> dict[str, dict[str, int]]:
        def tx(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for cat, n, targets in db.execute(
                    "SELECT category, COUNT(*), SUM(targets) FROM notifications"
                    " GROUP BY category"):
                out[cat] = {"notifications": n, "targets": int(targets or 0),
                            **{e: 0 for e in STAT_EVENTS}}
            for cat, event, n in db.execute(
                    "SELECT n.category, t.event, COUNT(*) FROM tracks t"
                    " JOIN notifications n ON n.id = t.id GROUP BY n.category, t.event"):
                out.setdefault(cat, {"notifications": 0, "targets": 0})[event] = n
            return out

        return await self._run(tx)

    async def recent_notifications(self, limit: int) -> list[str]:
        limit = min(limit, RECENT_KEPT)
        return await self._run(lambda db: [r[0] for r in db.execute(
            "SELECT id FROM notifications ORDER BY created DESC, id DESC LIMIT ?", (limit,))])

    # -- MQTT sessions --------------------------------------------------------------

    @staticmethod
    def _queued_row(m: QueuedMessage) -> tuple[bytes, bytes]:
        meta = {"topic": m.topic, "qos": m.qos, "retain": m.retain, "packet_id": m.packet_id,
                "pubrel": m.pubrel, "expires": m.expires, "properties": m.properties}
        return orjson.dumps(meta), m.payload

    @staticmethod
    def _queued(meta: bytes, payload: bytes) -> QueuedMessage:
        d = orjson.loads(meta)
        return QueuedMessage(d["topic"], bytes(payload), d["qos"], d["retain"], d["packet_id"],
                             d["pubrel"], d["expires"], d["properties"])

    async def mqtt_session(self, client_id: str
                           ) -> tuple[MqttSessionState, list[QueuedMessage]] | None:
        def tx(db: sqlite3.Connection) -> tuple[MqttSessionState, list[QueuedMessage]] | None:
            row = db.execute("SELECT state FROM mqtt_sessions WHERE client_id = ?",
                             (client_id,)).fetchone()
            if row is None:
                return None
            queue = [self._queued(m, p) for m, p in db.execute(
                "SELECT message, payload FROM mqtt_queue WHERE client_id = ? ORDER BY seq",
                (client_id,))]
            return MqttSessionState.from_json(orjson.loads(row[0])), queue

        return await self._run(tx)

    async def mqtt_save(self, client_id: str, state: MqttSessionState,
                        queue: list[QueuedMessage] | None = None) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO mqtt_sessions (client_id, state) VALUES (?, ?)",
                       (client_id, orjson.dumps(state.to_json())))
            if queue is not None:
                db.execute("DELETE FROM mqtt_queue WHERE client_id = ?", (client_id,))
                db.executemany(
                    "INSERT INTO mqtt_queue (client_id, message, payload) VALUES (?, ?, ?)",
                    [(client_id, *self._queued_row(m)) for m in queue])

        await self._run(tx)

    async def mqtt_delete(self, client_id: str) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM mqtt_sessions WHERE client_id = ?", (client_id,))
            db.execute("DELETE FROM mqtt_queue WHERE client_id = ?", (client_id,))

        await self._run(tx)

    async def mqtt_enqueue(self, items: Sequence[tuple[str, QueuedMessage]], limit: int
                           ) -> int:
        items = list(items)

        def tx(db: sqlite3.Connection) -> int:
            dropped = 0
            sizes: dict[str, int] = {}
            for client_id, m in items:
                if client_id not in sizes:
                    sizes[client_id] = db.execute(
                        "SELECT COUNT(*) FROM mqtt_queue WHERE client_id = ?",
                        (client_id,)).fetchone()[0]
                if sizes[client_id] >= limit:
                    dropped += 1
                    continue
                sizes[client_id] += 1
                db.execute("INSERT INTO mqtt_queue (client_id, message, payload) VALUES (?, ?, ?)",
                           (client_id, *self._queued_row(m)))
            return dropped

        return await self._run(tx)

    async def mqtt_sessions(self) -> list[tuple[str, MqttSessionState]]:
        def tx(db: sqlite3.Connection) -> list[tuple[str, MqttSessionState]]:
            return [(c, MqttSessionState.from_json(orjson.loads(st))) for c, st in
                    db.execute("SELECT client_id, state FROM mqtt_sessions")]

        return await self._run(tx)


    # -- audience -------------------------------------------------------------------------

    @staticmethod
    def _known(db: sqlite3.Connection, user: str) -> None:
        db.execute("INSERT OR IGNORE INTO audience_users (user) VALUES (?)", (user,))

    @staticmethod
    def _tags_of(db: sqlite3.Connection, user: str) -> list[str]:
        return [r[0] for r in db.execute("SELECT tag FROM user_tags WHERE user = ?"
                                         " ORDER BY tag", (user,))]

    async def user_tags(self, user: str) -> list[str]:
        return await self._run(lambda db: self._tags_of(db, user))

    async def _write_tags(self, user: str, add: list[str], remove: list[str], max_tags: int,
                          replace: bool) -> list[str]:
        def tx(db: sqlite3.Connection) -> list[str]:
            now = set() if replace else set(self._tags_of(db, user))
            after = (now | set(add)) - set(remove)
            if len(after) > max_tags:
                raise BadRequest(f"tags: at most {max_tags} tags per user")
            self._known(db, user)
            db.execute("DELETE FROM user_tags WHERE user = ?", (user,))
            db.executemany("INSERT INTO user_tags (tag, user) VALUES (?, ?)",
                           [(t, user) for t in after])
            return sorted(after)

        return await self._run(tx)

    async def user_attributes(self, user: str) -> dict[str, Any]:
        def tx(db: sqlite3.Connection) -> dict[str, Any]:
            row = db.execute("SELECT attributes FROM audience_users WHERE user = ?",
                             (user,)).fetchone()
            return {} if row is None or row[0] is None else dict(orjson.loads(row[0]))

        return await self._run(tx)

    async def set_user_attributes(self, user: str, attributes: Mapping[str, Any]
                                  ) -> dict[str, Any]:
        attrs = check_attribute_values(attributes)
        blob = orjson.dumps(attrs)

        def tx(db: sqlite3.Connection) -> None:
            self._known(db, user)
            db.execute("UPDATE audience_users SET attributes = ? WHERE user = ?", (blob, user))

        await self._run(tx)
        return attrs

    async def segment_put(self, name: str, definition: Mapping[str, Any]) -> bool:
        blob = orjson.dumps(dict(definition))

        def tx(db: sqlite3.Connection) -> bool:
            old = db.execute("SELECT 1 FROM segments WHERE name = ?", (name,)).fetchone()
            db.execute("INSERT OR REPLACE INTO segments (name, definition) VALUES (?, ?)",
                       (name, blob))
            return old is None

        return await self._run(tx)

    async def segment_get(self, name: str) -> dict[str, Any] | None:
        def tx(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT definition FROM segments WHERE name = ?",
                             (name,)).fetchone()
            return None if row is None else dict(orjson.loads(row[0]))

        return await self._run(tx)

    async def segment_delete(self, name: str) -> bool:
        def tx(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM segments WHERE name = ?", (name,)).rowcount == 1

        return await self._run(tx)

    async def user_preferences(self, user: str) -> dict[str, Any]:
        return (await self.preferences_many([user]))[user]

    async def set_user_preferences(self, user: str, doc: Mapping[str, Any]
                                   ) -> dict[str, Any]:
        stored = dict(doc)
        blob = orjson.dumps(stored)

        def tx(db: sqlite3.Connection) -> None:
            if stored:
                db.execute("INSERT OR REPLACE INTO user_preferences (user, doc) VALUES (?, ?)",
                           (user, blob))
            else:
                db.execute("DELETE FROM user_preferences WHERE user = ?", (user,))

        await self._run(tx)
        return stored

    async def preferences_many(self, users: Sequence[str]) -> dict[str, dict[str, Any]]:
        wanted = list(dict.fromkeys(users))

        def tx(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {u: {} for u in wanted}
            for user, doc in select_in(
                    db, "SELECT user, doc FROM user_preferences WHERE user IN ({marks})", wanted):
                out[user] = dict(orjson.loads(doc))
            return out

        return await self._run(tx) if wanted else {}

    async def seen(self, user: str) -> None:
        await self.seen_many([user])

    async def seen_many(self, users: Sequence[str]) -> None:
        now = int(self._clock() * 1000)
        rows = [(u,) for u in dict.fromkeys(users)]

        def tx(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO audience_users (user) VALUES (?)", rows)
            db.executemany("UPDATE audience_users SET seen = ? WHERE user = ?",
                           [(now, u) for (u,) in rows])

        if rows:
            await self._run(tx)

    async def last_seen(self, user: str) -> float | None:
        def tx(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT seen FROM audience_users WHERE user = ?",
                             (user,)).fetchone()
            return None if row is None or row[0] is None else row[0] / 1000

        return await self._run(tx)

    def _engage(self, db: sqlite3.Connection, user: str, category: str, event: str,
                notification_id: str) -> bool:
        now = int(self._clock() * 1000)
        self._known(db, user)
        db.execute("DELETE FROM engagements WHERE user = ? AND category = ? AND ts < ?",
                   (user, category, now - int(ENGAGEMENT_KEEP * 1000)))
        cur = db.execute("INSERT OR IGNORE INTO engagements (user, category, id, event, ts)"
                         " VALUES (?, ?, ?, ?, ?)", (user, category, notification_id, event, now))
        return cur.rowcount == 1

    async def engage(self, user: str, category: str, event: str, notification_id: str
                     ) -> bool:
        if event not in ENGAGEMENT_EVENTS:
            raise ValueError(f"unknown engagement event {event!r}")
        return await self._run(lambda db: self._engage(db, user, category, event,
                                                       notification_id))

    async def engagements(self, user: str, category: str, within: float) -> int:
        since = int((self._clock() - within) * 1000)

        def tx(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT COUNT(*) FROM engagements WHERE user = ? AND category = ?"
                             " AND ts >= ?", (user, category, since)).fetchone()
            return int(row[0])

        return await self._run(tx)

    async def _audience_candidates(self, tags: tuple[str, ...] | None, after: str | None,
                                   limit: int) -> list[str]:
        def tx(db: sqlite3.Connection) -> list[str]:
            if tags is None:
                return [r[0] for r in db.execute(
                    "SELECT user FROM audience_users WHERE user > ? ORDER BY user LIMIT ?",
                    (after or "", limit))]
            # each tag's first ``limit`` (an index range) hold the union's first
            return sorted({r[0] for t in tags for r in db.execute(
                "SELECT user FROM user_tags WHERE tag = ? AND user > ? ORDER BY user LIMIT ?",
                (t, after or "", limit))})[:limit]

        return await self._run(tx)

    @staticmethod
    def _tags_only(query: AudienceQuery, after: str | None = None
                   ) -> tuple[str, list[Any]] | None:
        """A query of tags only (``all`` / ``any``, with or without ``none``) as one
        SQL selection of its users over the tag index (above ``after`` when given),
        with its parameters; None for any other query."""
        if query.attributes or query.active_within is not None or query.engaged is not None \
                or not (query.tags_all or query.tags_any):
            return None

        def marks(tags: tuple[str, ...]) -> str:
            return ",".join("?" * len(tags))

        source = tuple(dict.fromkeys(query.tags_all + query.tags_any))
        args: list[Any] = list(source)
        where = ""
        if after is not None:
            where = " AND user > ?"
            args.append(after)
        if len(source) == 1:  # one tag: its index range as it is ((tag, user) is the key)
            sql = f"SELECT user FROM user_tags WHERE tag = ?{where}"
        else:
            having = []
            if query.tags_all:
                having.append(f"SUM(tag IN ({marks(query.tags_all)})) = ?")
                args += [*query.tags_all, len(query.tags_all)]
            if query.tags_any:
                having.append(f"SUM(tag IN ({marks(query.tags_any)})) > 0")
                args += query.tags_any
            sql = (f"SELECT user FROM user_tags WHERE tag IN ({marks(source)}){where}"
                   f" GROUP BY user HAVING {' AND '.join(having)}")
        if query.tags_none:
            sql = (f"SELECT user FROM ({sql}) WHERE user NOT IN (SELECT user FROM user_tags"
                   f" WHERE tag IN ({marks(query.tags_none)}))")
            args += query.tags_none
        return sql, args

    async def audience_count(self, query: AudienceQuery, *, page: int = 1000) -> int:
        """A query of tags only is one SQL count over the tag index, so a send to
        100,000 tagged users is answered at once; any other query pages through
        the users as the contract does."""
        selection = self._tags_only(query)
        if selection is None:
            return await super().audience_count(query, page=page)
        sql, args = selection

        def tx(db: sqlite3.Connection) -> int:
            return int(db.execute(f"SELECT COUNT(*) FROM ({sql})", args).fetchone()[0])

        return await self._run(tx)

    async def audience_page(self, query: AudienceQuery, *, cursor: str | None = None,
                            limit: int = 1000) -> AudiencePage:
        """A query of one tag (with or without ``none``) is one SQL range over the
        tag index (no profiles read to test candidates one by one); any other as
        the contract does (with more tags SQLite would sort the rest at every page)."""
        selection = self._tags_only(query, cursor or "")
        if selection is None or len(set(query.tags_all + query.tags_any)) > 1 or limit < 1:
            return await super().audience_page(query, cursor=cursor, limit=limit)
        sql, args = selection

        def tx(db: sqlite3.Connection) -> AudiencePage:
            users = [r[0] for r in db.execute(f"{sql} ORDER BY user LIMIT ?", (*args, limit))]
            return AudiencePage(users, users[-1] if len(users) == limit else None)

        return await self._run(tx)

    async def _audience_profiles(self, users: list[str], query: AudienceQuery
                                 ) -> list[Profile]:
        now = int(self._clock() * 1000)
        eng = query.engaged

        # a query that tests no tag (the sender's read of attributes) reads none
        tagged = bool(query.tags_all or query.tags_any or query.tags_none)

        def tx(db: sqlite3.Connection) -> list[Profile]:
            tags: dict[str, set[str]] = {u: set() for u in users}
            rows: dict[str, tuple[Any, Any]] = {}
            counts: dict[str, int] = {}
            for i in range(0, len(users), IN_SLICE):  # two reads a slice
                part = users[i:i + IN_SLICE]
                marks = ",".join("?" * len(part))
                for user, tag in db.execute(
                        f"SELECT user, tag FROM user_tags WHERE user IN ({marks})",
                        part) if tagged else ():
                    tags[user].add(tag)
                for user, attrs, seen in db.execute(
                        "SELECT user, attributes, seen FROM audience_users"
                        f" WHERE user IN ({marks})", part):
                    rows[user] = (attrs, seen)
                if eng is not None:
                    since = now - int(eng.within * 1000)
                    for user, n in db.execute(
                            "SELECT user, COUNT(*) FROM engagements WHERE category = ?"
                            f" AND ts >= ? AND user IN ({marks}) GROUP BY user",
                            (eng.category, since, *part)):
                        counts[user] = n
            out = []
            for u in users:
                attrs, seen = rows.get(u, (None, None))
                out.append(Profile(u, frozenset(tags[u]),
                                   {} if attrs is None else orjson.loads(attrs),
                                   None if seen is None else (now - seen) / 1000,
                                   counts.get(u, 0)))
            return out

        return await self._run(tx)

    # -- notification jobs ----------------------------------------------------------

    @staticmethod
    def _job(db: sqlite3.Connection, row: Sequence[Any]) -> Job:
        counts = {state: n for state, n in db.execute(
            "SELECT state, n FROM job_counts WHERE id = ? AND n != 0", (row[0],))}
        return Job(row[0], row[1], row[2], orjson.loads(row[3]), row[4], row[5], row[6],
                   row[7], row[8], counts, row[9], row[10])

    def _job_by_id(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?",
                         (job_id,)).fetchone()
        return None if row is None else self._job(db, row)

    async def job_create(self, job: NewJob, *, idempotency_key: str | None = None,
                         owner: str | None = None, lease: float = 0.0) -> tuple[Job, bool]:
        now = self._clock()
        now_ms = int(now * 1000)

        def tx(db: sqlite3.Connection) -> tuple[Job, bool]:
            first = self._idem_get(db, idempotency_key, now_ms)
            if first is not None:
                known = self._job_by_id(db, first["id"])
                if known is not None:
                    return known, True
            db.execute("INSERT INTO jobs (id, status, category, request, targets, created, due,"
                       " expires_at, lease_owner, lease_until)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (job.id, "scheduled" if owner is None else "sending", job.category,
                        orjson.dumps(job.request), job.targets, now, job.due, job.expires_at,
                        owner, None if owner is None else now + lease))
            db.execute("INSERT INTO notifications (id, category, targets, created)"
                       " VALUES (?, ?, ?, ?)", (job.id, job.category, job.targets, now_ms))
            self._idem_put(db, idempotency_key, now_ms, {"id": job.id, "targets": job.targets})
            created = self._job_by_id(db, job.id)
            assert created is not None
            return created, False

        return await self._run(tx)

    async def job_get(self, job_id: str) -> Job | None:
        return await self._run(lambda db: self._job_by_id(db, job_id))

    async def jobs(self, status: JobStatus, *, cursor: str | None = None, limit: int = 100
                   ) -> JobPage:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        after = int(cursor) if cursor is not None and cursor.isdigit() else 0

        def tx(db: sqlite3.Connection) -> JobPage:
            rows = db.execute(f"SELECT seq, {_JOB_COLUMNS} FROM jobs WHERE status = ?"
                              " AND seq > ? ORDER BY seq LIMIT ?",
                              (status, after, limit + 1)).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            return JobPage([self._job(db, r[1:]) for r in rows],
                           str(rows[-1][0]) if more and rows else None)

        return await self._run(tx)

    async def job_cancel(self, job_id: str) -> Job | None:
        def tx(db: sqlite3.Connection) -> Job | None:
            db.execute("UPDATE jobs SET status = 'cancelled', lease_owner = NULL,"
                       " lease_until = NULL WHERE id = ? AND (status IN ('scheduled', 'sending')"
                       " OR (status = 'sent' AND EXISTS (SELECT 1 FROM due_queue WHERE id = ?)))",
                       (job_id, job_id))
            job = self._job_by_id(db, job_id)
            if job is not None and job.status == "cancelled":
                db.execute("DELETE FROM due_queue WHERE id = ?", (job_id,))
            return job

        return await self._run(tx)

    async def job_claim(self, owner: str, *, lease: float, limit: int = 1) -> list[Job]:
        now = self._clock()

        def tx(db: sqlite3.Connection) -> list[Job]:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM jobs INDEXED BY jobs_status WHERE status = 'scheduled'"
                " AND due <= ? UNION ALL SELECT id FROM jobs INDEXED BY jobs_status"
                " WHERE status = 'sending' AND lease_until <= ? LIMIT ?",
                (now, now, limit))]
            out = []
            for job_id in ids:
                db.execute("UPDATE jobs SET status = 'sending', lease_owner = ?,"
                           " lease_until = ? WHERE id = ?", (owner, now + lease, job_id))
                job = self._job_by_id(db, job_id)
                assert job is not None
                out.append(job)
            return out

        return await self._run(tx)

    async def job_progress(self, job_id: str, owner: str, cursor: str | None, *,
                           lease: float) -> bool:
        now = self._clock()

        def tx(db: sqlite3.Connection) -> bool:
            return db.execute(
                "UPDATE jobs SET cursor = ?, lease_until = ? WHERE id = ?"
                " AND status = 'sending' AND lease_owner = ? AND lease_until > ?",
                (cursor, now + lease, job_id, owner, now)).rowcount == 1

        return await self._run(tx)

    async def job_requeue(self, job_id: str, owner: str, request: dict[str, Any], *,
                          due: float) -> bool:
        now = self._clock()
        doc = orjson.dumps(request)

        def tx(db: sqlite3.Connection) -> bool:
            return db.execute(
                "UPDATE jobs SET status = 'scheduled', request = ?, due = ?, cursor = NULL,"
                " lease_owner = NULL, lease_until = NULL WHERE id = ? AND status = 'sending'"
                " AND lease_owner = ? AND lease_until > ?",
                (doc, due, job_id, owner, now)).rowcount == 1

        return await self._run(tx)

    async def job_finish(self, job_id: str, owner: str) -> bool:
        now = self._clock()

        def tx(db: sqlite3.Connection) -> bool:
            return db.execute(
                "UPDATE jobs SET status = 'sent', cursor = NULL, lease_owner = NULL,"
                " lease_until = NULL WHERE id = ? AND status = 'sending'"
                " AND lease_owner = ? AND lease_until > ?",
                (job_id, owner, now)).rowcount == 1

        return await self._run(tx)

    @staticmethod
    def _tally(db: sqlite3.Connection, job_id: str, state: str, n: int) -> None:
        db.execute("INSERT INTO job_counts (id, state, n) VALUES (?, ?, ?)"
                   " ON CONFLICT (id, state) DO UPDATE SET n = n + excluded.n",
                   (job_id, state, n))

    async def deliver(self, notification_id: str, deliveries: Sequence[Delivery], *,
                      category: str, expires_at: float | None, collapse_key: str | None,
                      policy: PolicyFor, due: bool = False) -> DeliverResult:
        now_s = self._clock()
        now = int(now_s * 1000)
        expires = None if expires_at is None else int(expires_at * 1000)
        nid = notification_id

        def tx(db: sqlite3.Connection) -> DeliverResult:
            # one read of who is recorded, one write per table, one tally per state:
            # a chunk costs a few statements, the inbox writes included (_write_items)
            known: dict[str, str] = dict(select_in(
                db, "SELECT user, state FROM job_targets WHERE id = ? AND user IN ({marks})",
                [d.user for d in deliveries], (nid,)))
            items: list[_Item] = []
            recorded: list[str] = []
            tally: dict[str, int] = {}
            targets: dict[tuple[str, str | None], list[str]] = {}  # by (state, variant)
            undue: list[tuple[str, str]] = []
            queue: list[tuple[str, str, float]] = []
            pushes: list[str] = []
            shared: tuple[int, dict[str, Any], bytes] | None = None  # one rendering, many users
            seen: set[str] = set()
            for d in deliveries:
                if d.user in seen:  # named twice in one chunk: the first counts
                    continue
                seen.add(d.user)
                was = known.get(d.user)
                if was is not None:
                    if due:  # the entry is used up, whatever the target's state
                        undue.append((nid, d.user))
                    if not (due and was in _HELD):
                        continue
                    tally[was] = tally.get(was, 0) - 1
                targets.setdefault((d.state, d.variant), []).append(d.user)
                tally[d.state] = tally.get(d.state, 0) + 1
                recorded.append(d.user)
                if d.fields is not None:
                    if shared is None or shared[0] != id(d.fields):
                        fields = {**d.fields, "id": nid, "ts": now}
                        shared = (id(d.fields), fields, orjson.dumps(fields))
                    items.append((d.user, shared[1], shared[2], d.edges))
                if d.due_at is not None:
                    queue.append((nid, d.user, d.due_at))
                if d.edges is None or d.edges:
                    pushes.append(d.user)
            changes = self._write_items(db, nid, items, now, expires, collapse_key, policy) \
                if items else []
            db.executemany("DELETE FROM due_queue WHERE id = ? AND user = ?", undue)
            # a firing replaces the state; the first variant recorded stays. The users
            # of each (state, variant) as one JSON array SQLite unpacks (json_each):
            # a statement per group, not a bound row per user
            for (state, variant), who in targets.items():
                db.execute("INSERT INTO job_targets (id, user, state, variant)"
                           " SELECT ?, value, ?, ? FROM json_each(?) WHERE true"
                           " ON CONFLICT (id, user) DO UPDATE SET state = excluded.state",
                           (nid, state, variant, orjson.dumps(who)))
            db.executemany("INSERT OR REPLACE INTO due_queue (id, user, due) VALUES (?, ?, ?)",
                           queue)
            if pushes:
                db.execute("INSERT INTO pushes (user, category, ts)"
                           " SELECT value, ?, ? FROM json_each(?)",
                           (category, now_s, orjson.dumps(pushes)))
            for state, n in tally.items():
                if n:
                    self._tally(db, nid, state, n)
            return DeliverResult(changes, recorded)

        return await self._run(tx)

    async def variant_counts(self, notification_id: str) -> dict[str, dict[str, int]]:
        """The counters triggers keep (:mod:`.sqlite_variants`): O(variants)."""
        return await self._run(lambda db: variant_counts(db, notification_id))

    async def due_claim(self, owner: str, *, lease: float, limit: int) -> list[DueEntry]:
        now = self._clock()

        def tx(db: sqlite3.Connection) -> list[DueEntry]:
            rows = db.execute(
                "SELECT id, user, due FROM due_queue INDEXED BY due_queue_due WHERE due <= ?"
                " AND (lease_until IS NULL OR lease_until <= ?) ORDER BY due LIMIT ?",
                (now, now, limit)).fetchall()
            db.executemany("UPDATE due_queue SET lease_owner = ?, lease_until = ?"
                           " WHERE id = ? AND user = ?",
                           [(owner, now + lease, r[0], r[1]) for r in rows])
            return [DueEntry(r[0], r[1], r[2]) for r in rows]

        return await self._run(tx)

    @staticmethod
    def _instants(db: sqlite3.Connection, sql: str, users: list[str], args: tuple[Any, ...],
                  scale: float) -> dict[str, list[float]]:
        """``sql`` (``SELECT user, ts ... user IN ({marks}) ... ORDER BY ts``) over
        ``users`` in slices SQLite binds: each user's instants, in seconds."""
        out: dict[str, list[float]] = {}
        for user, ts in select_in(db, sql, users, args):
            out.setdefault(user, []).append(ts / scale)
        return out

    async def engagement_times(self, users: Sequence[str], since: float
                               ) -> Mapping[str, list[float]]:
        sql = ("SELECT user, ts FROM engagements WHERE ts > ? AND user IN ({marks})"
               " ORDER BY ts")
        chunk, after = list(users), int(since * 1000)
        return await self._run(lambda db: self._instants(db, sql, chunk, (after,), 1000))

    async def recent_pushes(self, users: Sequence[str], category: str, since: float
                            ) -> Mapping[str, list[float]]:
        sql = ("SELECT user, ts FROM pushes WHERE category = ? AND ts > ? AND user IN ({marks})"
               " ORDER BY ts")
        chunk = list(users)
        return await self._run(lambda db: self._instants(db, sql, chunk, (category, since), 1))


_COUNTS_READ = (
    "SELECT c.user, c.unread - (SELECT COUNT(*) FROM inbox INDEXED BY inbox_user_expires"
    " WHERE inbox.user = c.user AND expires IS NOT NULL AND expires <= ? AND read = 0"
    " AND archived = 0), c.total FROM inbox_counts c WHERE c.user IN ({marks})")
""":meth:`SqliteStore._count` (the counter less the expired unread) of many users,
with their totals (who is over the cap)."""
_Item = tuple[str, dict[str, Any], bytes, Sequence[str] | None]
"""One user's inbox write (:meth:`SqliteStore._write_items`): user, fields,
fields as JSON, edges."""
_Entry = tuple[str, bytes, PayloadKind, HistoryPolicy, bool, int, bytes | None]
"""One append (:meth:`SqliteStore._append_many`): topic, payload, kind, its
history policy, retain, QoS and a retained message's meta."""
_JOB_COLUMNS = ("id, status, category, request, targets, created, due, expires_at, cursor,"
                " lease_owner, lease_until")
_HELD = ("held", "scheduled")  # target states the due queue may replace
PUSH_KEEP = 86400.0  # seconds of push history caps read (the longest rolling window)


def _resolve(results: list[tuple[Any, Any, BaseException | None]],
             monitor: StoreHealth | None, elapsed: float, failure: sqlite3.Error | None
             ) -> None:
    if monitor is not None:
        if failure is None:
            monitor.committed(elapsed)
        else:
            # a corrupt file does not heal: not ready until repaired and restarted
            monitor.failed(str(failure), lasting=getattr(failure, "sqlite_errorcode", 0)
                           in _CORRUPT)
    for fut, value, error in results:
        if fut.done():  # the caller was cancelled; the work was done all the same
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


_NO_HISTORY = HistoryPolicy(0, 1.0)
