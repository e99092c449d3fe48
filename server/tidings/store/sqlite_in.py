"""One query over many keys on the embedded store: an ``IN`` list in slices SQLite
binds (its bound on host parameters), shared by the store and its mixins."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["IN_SLICE", "select_in"]

IN_SLICE = 500  # keys per IN list: well under SQLite's bound on host parameters


def select_in(db: sqlite3.Connection, sql: str, keys: Sequence[Any],
              args: Sequence[Any] = ()) -> Iterator[Any]:
    """The rows of ``sql`` (whose ``{marks}`` is an ``IN`` list, after the
    parameters ``args``) over ``keys``, in slices SQLite binds."""
    for i in range(0, len(keys), IN_SLICE):
        part = keys[i:i + IN_SLICE]
        yield from db.execute(sql.format(marks=",".join("?" * len(part))), (*args, *part))
