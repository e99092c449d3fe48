"""Record A/B test results in a stopped node's SQLite data folder, through the
store (a sent job whose targets carry their variant, and their tracked
events), for the dashboard's browser tests and its screenshot.

    python scripts/seed_variants.py DATA_FOLDER '<spec JSON>'

The spec: ``{"id": "n_...", "title": "...", "category": "promo", "variants":
[{"name": "A", "targets": 200, "delivered": 180, "opened": 40, "clicked": 9,
"dismissed": 5}, ...]}``. Each count is exact: the first ``delivered`` targets
of a variant report ``delivered``, the first ``opened`` of them ``opened``,
and so on (``dismissed`` counts from the last target back), so a test knows
what the stats must say. The folder's server must be stopped (the store
takes the folder's lock).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from tidings.store.base import Delivery, HistoryPolicy, NewJob
from tidings.store.sqlite import SqliteStore

__all__ = ["seed"]

_CHUNK = 500  # targets per deliver call


def _policy(topic: str) -> HistoryPolicy:
    return HistoryPolicy(100, 86400.0)


async def seed(folder: Path, spec: dict[str, Any]) -> None:
    nid, category = spec["id"], spec.get("category", "general")
    variants = spec["variants"]
    users = {v["name"]: [f"{nid}-{v['name']}-{i}" for i in range(v["targets"])]
             for v in variants}
    store = SqliteStore(folder)
    await store.open()
    try:
        job, _ = await store.job_create(
            NewJob(nid, category, {"title": spec.get("title", nid),
                                   "variants": [{"name": v["name"]} for v in variants]},
                   sum(len(u) for u in users.values()), time.time()),
            owner="seed", lease=60.0)
        deliveries = [Delivery(user, "pushed", {"id": nid, "title": spec.get("title", nid),
                                                "category": category}, (), variant=name)
                      for name, group in users.items() for user in group]
        for start in range(0, len(deliveries), _CHUNK):
            await store.deliver(nid, deliveries[start:start + _CHUNK], category=category,
                                expires_at=None, collapse_key=None, policy=_policy)
        await store.job_finish(job.id, "seed")
        for v in variants:
            group = users[v["name"]]
            for event in ("delivered", "opened", "clicked"):
                for user in group[:v.get(event, 0)]:
                    await store.track(nid, user, event)
            for user in group[len(group) - v.get("dismissed", 0):]:
                await store.track(nid, user, "dismissed")
    finally:
        await store.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    asyncio.run(seed(Path(sys.argv[1]), json.loads(sys.argv[2])))
