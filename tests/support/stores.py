"""The one store fixture every store contract module runs on: SQLite, Redis, Redis Cluster.

``store`` is an opened store of each backend (the ``open_store`` param);
``open_store`` opens another store over the same backing data each call (the
same folder, the same Redis database), for reopen and two-node tests; ``clock``
is the fake time every store opened here reads. ``tests/store/conftest.py``
makes these fixtures available to ``tests/store/``; a module elsewhere imports
them by name (``from support.stores import clock, max_inbox, open_store, store``).

To run every contract against another implementation, add its name to
``params`` of :func:`open_store` and one branch that builds it over shared
backing data with ``clock`` and ``IDEMPOTENCY_TTL`` (and ``max_inbox``); clean
that data up after the yield. Nothing else changes.

Time is the fake ``clock`` (seconds since the epoch, moved by hand); the
store must take all its time (``ts``, history TTL, idempotency TTL, inbox and
presence expiry) from it. The Redis backends use the session-wide servers of
``support/redis_servers.py`` (a module using these fixtures lists it in
``pytest_plugins``), emptied before each test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tidings.store.base import HistoryPolicy, Store
from tidings.store.redis import RedisStore
from tidings.store.sqlite import SqliteStore

__all__ = [
    "BACKENDS",
    "IDEMPOTENCY_TTL",
    "KEEP",
    "MAX_INBOX",
    "T0",
    "Clock",
    "OpenStore",
    "backends_for",
    "clock",
    "max_inbox",
    "open_store",
    "store",
]

BACKENDS = ["sqlite", "redis", "redis-cluster"]
T0 = 1_700_000_000.0
IDEMPOTENCY_TTL = 60.0
KEEP = HistoryPolicy(size=1000, ttl=3600.0)  # large enough not to trim in a test
MAX_INBOX = 50  # items per user (the inbox cap); more than any test but the cap's own

OpenStore = Callable[[], Awaitable[Store]]
_CLASSES: dict[str, type] = {"sqlite": SqliteStore, "redis": RedisStore,
                                    "redis-cluster": RedisStore}


def backends_for(contract: type) -> list[str]:
    """The backends whose class implements every method of ``contract``: a contract
    new on one backend runs there first, the others join when they implement it.
    A module uses it as ``pytestmark = pytest.mark.parametrize("open_store",
    backends_for(Contract), indirect=True)``."""
    wanted: frozenset[str] = getattr(contract, "__abstractmethods__", frozenset())
    return [b for b in BACKENDS
            if not wanted & getattr(_CLASSES[b], "__abstractmethods__", frozenset())]


class Clock:
    """A fake clock in seconds; ``advance`` moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def max_inbox() -> int:
    """The inbox cap of the stores ``open_store`` opens; a module that fills one
    inbox past :data:`MAX_INBOX` overrides this fixture."""
    return MAX_INBOX


@pytest.fixture(params=BACKENDS)
async def open_store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock,
                     max_inbox: int) -> AsyncIterator[OpenStore]:
    """Opens a new Store over the same backing data each call (for reopen tests)."""
    opened: list[Store] = []
    url = ""
    if request.param in ("redis", "redis-cluster"):
        # one server (or cluster) per session, emptied before each test
        server = request.getfixturevalue(
            "redis_server" if request.param == "redis" else "redis_cluster")
        server.flushall()
        url = server.url

    async def make() -> Store:
        s: Store
        if request.param == "sqlite":
            s = SqliteStore(tmp_path / "store", idempotency_ttl=IDEMPOTENCY_TTL, clock=clock,
                            max_inbox=max_inbox)
        elif url:
            s = RedisStore(url, idempotency_ttl=IDEMPOTENCY_TTL, clock=clock,
                           max_inbox=max_inbox)
        else:  # pragma: no cover - a new backend adds its branch here
            raise AssertionError(f"no store backend {request.param!r}")
        await s.open()
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    return await open_store()
