"""The sweeper: one background task per node that deletes what has expired.

Expired history messages, inbox items and idempotency keys are invisible to
every read already; without a sweep they would stay on disk forever for a
topic never published again, or an inbox never touched again. Each run calls
:meth:`tidings.store.base.Store.sweep` in bounded steps (the store is held
for one step at a time) and fans out what the store wrote for the users who
lost unarchived items (an ``expire`` event on ``users/{uid}/events`` and the
retained ``users/{uid}/unread`` count), the way :meth:`Notifier.mark` does,
so every device's badge drops when an item expires, not at its next change.
The OS notifications of the expired items are withdrawn too (platform push,
:meth:`tidings.push.channel.PushChannel.withdraw_expired`: one endpoint read
per step, at most ``WITHDRAW_MOST`` items per user, in the background).

Several nodes on one Redis may sweep at once: each step is atomic per user
there, so an item expires (and is announced) once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .errors import TidingsError
from .node import Node
from .plumbing import TaskSet

__all__ = ["SweepTotals", "Sweeper"]

log = logging.getLogger("tidings.sweeper")

MAX_STEPS = 100  # store.sweep calls per run; what is left waits for the next run


@dataclass
class SweepTotals:
    """What one run deleted, and how many users were told."""

    history: int = 0
    inbox: int = 0
    keys: int = 0
    users: int = 0
    steps: int = 0


class Sweeper:
    """Runs :meth:`run_once` every ``interval`` seconds until :meth:`close`."""

    def __init__(self, node: Node, interval: float, batch: int) -> None:
        self.node = node
        self.interval = interval
        self.batch = batch
        self._tasks = TaskSet("sweeper")  # the one sweeping loop, while started
        self._failing = False  # log a failing store once per state change

    def start(self) -> None:
        if not self._tasks:
            self._tasks.spawn(self._loop())

    async def close(self) -> None:
        await self._tasks.close()

    async def run_once(self) -> SweepTotals:
        """Sweep until nothing more is due (or ``MAX_STEPS``); fan out each step's
        changes before the next. Raises what the store raises."""
        totals = SweepTotals()
        for _ in range(MAX_STEPS):
            result = await self.node.store.sweep(policy=self.node.policy, limit=self.batch)
            totals.steps += 1
            totals.history += result.history
            totals.inbox += result.inbox
            totals.keys += result.keys
            totals.users += len(result.changes)
            for change in result.changes:
                await self.node.fan_out(change.publications)
            push = self.node.push
            expired = {c.user: c.changed for c in result.changes if c.changed}
            if push is not None and expired:
                push.submit(push.withdraw_expired(expired))
            if not result.more:
                break
        metrics = self.node.metrics
        for kind, n in (("history", totals.history), ("inbox", totals.inbox),
                        ("keys", totals.keys)):
            if n:
                metrics.inc("tidings_swept_total", n, kind=kind)
        return totals

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                totals = await self.run_once()
            except TidingsError as e:  # the store is down: try again next time
                if not self._failing:
                    log.warning("sweeper: the store failed (%s); retrying every %.0fs",
                                e.code, self.interval)
                self._failing = True
                continue
            if self._failing:
                log.info("sweeper: the store answers again")
            self._failing = False
            if totals.history or totals.inbox or totals.keys:
                log.debug("swept %d history, %d inbox, %d keys; told %d users",
                          totals.history, totals.inbox, totals.keys, totals.users)
