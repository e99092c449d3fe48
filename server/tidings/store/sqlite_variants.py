"""Counts per A/B variant on the embedded store (``variant_counts`` of the
notification contract): a counter table kept by triggers, so a read costs
O(variants) whatever the audience (counting the targets at each read took a
quarter of a second per 100,000 targets, with the store's one thread held).

Triggers rather than code in each writer: every way a target is recorded or
moves (``deliver``, a due-queue firing) and every way an event lands in
``tracks`` (``track``, ``feedback``) counts for the user's variant, in the
writer's own transaction, with nothing to remember in the next writer.
A data folder from before the table is counted once when it is made.
"""

from __future__ import annotations

import sqlite3

from .contracts.notifications import variant_row

__all__ = ["VARIANTS_FILL", "VARIANTS_SCHEMA", "variant_counts"]

_BUMP = """INSERT INTO variant_counts (id, variant, name, n) VALUES (NEW.id, NEW.variant,
  NEW.state, 1) ON CONFLICT (id, variant, name) DO UPDATE SET n = n + 1;"""

# run after job_targets has its variant column (an older folder gets it first)
VARIANTS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS variant_counts (
    id TEXT NOT NULL,
    variant TEXT NOT NULL,
    name TEXT NOT NULL,  -- a target state or a tracked event
    n INTEGER NOT NULL,
    PRIMARY KEY (id, variant, name)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS variant_target AFTER INSERT ON job_targets
WHEN NEW.variant IS NOT NULL BEGIN
  {_BUMP}
END;
CREATE TRIGGER IF NOT EXISTS variant_target_state AFTER UPDATE OF state ON job_targets
WHEN NEW.variant IS NOT NULL AND NEW.state IS NOT OLD.state BEGIN
  UPDATE variant_counts SET n = n - 1
    WHERE id = OLD.id AND variant = OLD.variant AND name = OLD.state;
  {_BUMP}
END;
CREATE TRIGGER IF NOT EXISTS variant_event AFTER INSERT ON tracks BEGIN
  INSERT INTO variant_counts (id, variant, name, n)
    SELECT NEW.id, variant, NEW.event, 1 FROM job_targets
    WHERE id = NEW.id AND user = NEW.user AND variant IS NOT NULL
    ON CONFLICT (id, variant, name) DO UPDATE SET n = n + 1;
END;
"""

VARIANTS_FILL = """
INSERT INTO variant_counts (id, variant, name, n)
  SELECT id, variant, state, COUNT(*) FROM job_targets WHERE variant IS NOT NULL
  GROUP BY id, variant, state;
INSERT INTO variant_counts (id, variant, name, n)
  SELECT t.id, j.variant, t.event, COUNT(*) FROM tracks t
  JOIN job_targets j ON j.id = t.id AND j.user = t.user WHERE j.variant IS NOT NULL
  GROUP BY t.id, j.variant, t.event;
"""


def variant_counts(db: sqlite3.Connection, notification_id: str) -> dict[str, dict[str, int]]:
    """The notification's counters by variant (see the contract)."""
    counted: dict[str, dict[str, int]] = {}
    for variant, name, n in db.execute(
            "SELECT variant, name, n FROM variant_counts WHERE id = ?", (notification_id,)):
        counted.setdefault(variant, {})[name] = n
    return {v: variant_row(c) for v, c in sorted(counted.items())}
