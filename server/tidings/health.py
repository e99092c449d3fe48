"""Whether the store can write, learnt from what it commits, for ``/readyz`` and the log.

The stores report every commit to their ``monitor`` (a :class:`StoreHealth`):
how long it took, or that it failed because of the backend (a full disk, a
corrupt SQLite page, Redis down; not a request the store refused). While the
last commit failed, ``/readyz`` answers 503, so a load balancer stops sending
writes that would all answer 503. The change of state is logged once each way
(ERROR when writes start failing, WARNING with the count when they work
again), never once per failed request. A corrupt SQLite file does not heal:
it keeps the node unready until it is repaired and the node restarted.
"""

from __future__ import annotations

import logging
import time

from .metrics import Metrics

__all__ = ["COMMIT_BUCKETS", "StoreHealth"]

log = logging.getLogger("tidings.store")

# Seconds: a SQLite group commit is ~0.1-5 ms on a local disk, a Redis script
# call ~0.2-2 ms on a LAN; the tail shows fsync stalls and timeouts (2 s bound).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0)


class StoreHealth:
    """The store's write health: ``ok`` until a commit fails, again after one succeeds."""

    def __init__(self, metrics: Metrics) -> None:
        self.ok = True
        self.lasting: str | None = None  # a failure that does not heal (a corrupt file)
        self.failures = 0  # failed commits since writes last worked
        self._since = 0.0
        self._commits = metrics.histogram(
            "tidings_store_commit_seconds",
            "Time to commit to the store: one SQLite group commit (every call queued in "
            "one event-loop pass, in one transaction), or one Redis call or script.",
            COMMIT_BUCKETS)
        metrics.gauge("tidings_store_up",
                      "1 while the store can write, 0 while its commits fail "
                      "(/readyz answers 503 then).", lambda: float(self.ok))

    def committed(self, seconds: float) -> None:
        """A commit succeeded in ``seconds``."""
        self._commits.observe(seconds)
        if not self.ok and self.lasting is None:
            log.warning("store: writes work again (%d failed over %.1f s)", self.failures,
                        time.monotonic() - self._since)
            self.ok = True
            self.failures = 0

    def failed(self, reason: str, *, lasting: bool = False) -> None:
        """A commit failed because of the backend; ``reason`` is for the operator's log.

        ``lasting``: the failure does not heal by itself (SQLite reports the file
        corrupt), so later commits that happen to work (on pages that are fine)
        do not make the node ready again; a restart after the repair does.
        """
        self.failures += 1
        if lasting and self.lasting is None:
            self.lasting = reason
            self.ok = False
            log.error("store: the database is corrupt (%s); /readyz answers 503 until it "
                      "is repaired and the node restarted", reason)
            return
        if self.ok:
            self.ok = False
            self._since = time.monotonic()
            log.error("store: cannot write (%s); /readyz answers 503 until it can", reason)
