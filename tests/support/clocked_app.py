"""A whole node (every edge, the HTTP API) on the test's fake clock, for edge tests
of what runs on time: schedules, quiet hours, caps, experiments, the push fallback.

A module takes the fixtures ``clock`` and ``node`` by importing ``fake_clock``
(from :mod:`support.pipeline`) and ``clocked_app_node``, listing both in its
``__all__`` (used by tests/edges/test_notify_edges.py and test_variants_edges.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import Node, start_node, stop_node
from support.clock import FakeClock

__all__ = ["clocked_app_node"]


@pytest.fixture(name="node")
async def clocked_app_node(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Node]:
    """A node in ``tmp_path`` whose sender, policy and store read ``clock``."""
    n = await start_node(tmp_path, clock=clock)
    try:
        yield n
    finally:
        await stop_node(n)
