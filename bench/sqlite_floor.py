"""The SQLite store thread's CPU per user of a targeted send, and its floor (issue 12).

``--sends`` notifications, one after another, each to the same ``--users``
users in chunks of ``--chunk`` (one ``SqliteStore.deliver`` per chunk, each
user with their own rendered fields and a ``pushed`` outcome, as the sender
writes them): the first send meets new topics, the later ones the steady
state (every user's streams known, history trimmed). For each send it prints
the store thread's CPU per user (and per user of the median chunk: steadier on
a busy machine) (``time.thread_time`` around each group
commit, as bench/notify_profile.py measures it) and with ``--floor`` the floor: the very
statements that send ran, with the very rows, recorded as they went and
replayed by prebuilt ``execute``/``executemany`` on a copy of the database as
it was before the send (what SQLite costs without the Python that builds the
rows), with the replay's CPU per user by statement, largest first.

    python bench/sqlite_floor.py --users 30000 --sends 2 [--floor]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from notify_store import fields, policy

from tidings.store.base import Delivery, NewJob
from tidings.store.sqlite import SqliteStore

__all__ = ["main"]

Statement = tuple[str, bool, list[Any]]  # sql, many, parameters (a list of rows if many)


class Recorder:
    """A connection that runs every statement on ``db`` and keeps it, with its
    parameters, for the replay (a group commit's BEGIN to COMMIT)."""

    def __init__(self, db: sqlite3.Connection, log: list[Statement]) -> None:
        self._db, self._log = db, log

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._log.append((sql, False, list(params)))
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Any]) -> sqlite3.Cursor:
        prebuilt = [tuple(r) for r in rows]
        self._log.append((sql, True, prebuilt))
        return self._db.executemany(sql, prebuilt)


class Measured:
    """The store's group commits timed (thread CPU) and, with ``record``, recorded
    (which the time then includes)."""

    def __init__(self, store: SqliteStore, record: bool) -> None:
        self.each: list[float] = []  # per group commit (a chunk's deliver)
        self.log: list[Statement] = []
        commit = store._commit_batch

        def timed(db: sqlite3.Connection, *args: Any) -> None:
            t = time.thread_time()
            try:
                commit(Recorder(db, self.log) if record else db, *args)  # type: ignore[arg-type]
            finally:
                self.each.append(time.thread_time() - t)

        store._commit_batch = timed  # type: ignore[method-assign,assignment]


def shape(sql: str) -> str:
    """A statement's name in the breakdown: its IN lists folded, cut short."""
    return re.sub(r"\((\?,)+\?\)", "(...)", " ".join(sql.split()))[:90]


def replay(path: Path, log: list[Statement]) -> tuple[float, dict[str, float]]:
    """Run ``log`` on the database at ``path``: CPU seconds in all, and by statement."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    by: dict[str, float] = {}
    total = 0.0
    for sql, many, params in log:
        t = time.thread_time()
        if many:
            db.executemany(sql, params)
        else:
            db.execute(sql, params).fetchall()
        spent = time.thread_time() - t
        total += spent
        by[shape(sql)] = by.get(shape(sql), 0.0) + spent
    db.close()
    return total, by


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tidings-floor-") as tmp:
        folder = Path(tmp)
        store = SqliteStore(folder / "live")
        await store.open()
        measured = Measured(store, args.floor)
        users = [f"t{i:06d}" for i in range(args.users)]
        try:
            for send in range(1, args.sends + 1):
                # the database as the send finds it, for the replay (closed: one file)
                await store.close()
                shutil.rmtree(folder / "copy", ignore_errors=True)
                shutil.copytree(folder / "live", folder / "copy")
                await store.open()
                nid = "n_" + secrets.token_hex(8)
                await store.job_create(NewJob(nid, "general", {"title": "x"}, len(users), 0.0))
                measured.each, measured.log = [], []
                for i in range(0, len(users), args.chunk):
                    part = [Delivery(u, "pushed", fields(u), edges=None)
                            for u in users[i:i + args.chunk]]
                    await store.deliver(nid, part, category="general", expires_at=None,
                                        collapse_key=None, policy=policy)
                n = len(users)
                chunk = statistics.median(measured.each) / args.chunk
                print(f"send {send}: store thread {sum(measured.each) / n * 1e6:.1f} us/user "
                      f"(median chunk {chunk * 1e6:.1f})"
                      + (" (recording)" if args.floor else ""))
                if not args.floor:
                    continue
                runs = []  # each on a fresh copy; the least disturbed kept
                for r in range(args.replays):
                    shutil.copytree(folder / "copy", folder / f"replay{r}")
                    runs.append(replay(folder / f"replay{r}" / store.path.name, measured.log))
                    shutil.rmtree(folder / f"replay{r}")
                floor, by = min(runs, key=lambda run: run[0])
                print(f"  floor (the same statements and rows, prebuilt) "
                      f"{floor / n * 1e6:.1f} us/user, of which:")
                for name, spent in sorted(by.items(), key=lambda kv: -kv[1])[:args.top]:
                    print(f"  {spent / n * 1e6:5.2f}  {name}")
        finally:
            await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=30000, help="users of each send")
    p.add_argument("--chunk", type=int, default=1000, help="users per deliver call")
    p.add_argument("--sends", type=int, default=2, help="sends to the same users")
    p.add_argument("--floor", action="store_true",
                   help="record each send's statements and replay them (the floor)")
    p.add_argument("--replays", type=int, default=3,
                   help="replays of each send for the floor (the least CPU kept)")
    p.add_argument("--top", type=int, default=14, help="statements listed per send")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
