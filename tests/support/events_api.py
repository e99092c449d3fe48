"""Reading ``GET /v1/events`` from a test node, waiting (bounded) for what a test
expects (shared by tests/edges/test_events_api.py and test_feedback_edges.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import WAIT, Node

__all__ = ["read_events"]


async def read_events(node: Node, since: str | None = None, *, want: int = 0,
                      limit: int = 100, event_type: str | None = None
                      ) -> tuple[list[dict[str, Any]], str | None]:
    """Events after ``since`` (only those of ``event_type``, when given) and the next
    cursor, waiting (bounded by ``WAIT``) until at least ``want`` are there."""
    async with asyncio.timeout(WAIT):
        while True:
            assert node.app.node.events is not None
            await node.app.node.events.flushed()
            q = f"?limit={limit}" + (f"&since={since}" if since else "")
            status, body = await node.api("GET", "/v1/events" + q)
            assert status == 200, body
            got = [e for e in body["events"] if event_type is None or e["type"] == event_type]
            if len(got) >= want:
                return got, body["next"]
            await asyncio.sleep(0.02)
