"""An A/B experiment on two nodes sharing Redis decides once (issue 13).

Two real ``tidings serve`` processes (``cluster_nodes.py``) on one real
``redis-server`` and on a real 3-master Redis Cluster; both run the scheduler
on the real clock, so ``decide_after`` is a few seconds and the test waits
(bounded) for what it brings. A test-side
:class:`~tidings.store.redis.RedisStore` reads what the nodes recorded. What
a product team relies on: the test group gets its variants first, exactly
one node decides (one verdict in the two nodes' logs), the winner goes to
everyone else, and nobody gets the notification twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import WAIT
from support.cluster_nodes import Cluster, NodeFactory, cluster, redis_env, tidings_nodes, wait_for
from support.redis_servers import RedisClusterProcs, RedisServer
from tidings.store.redis import RedisStore
from tidings.variants import in_test_group, parse_experiment, parse_variants

pytest_plugins = ["support.redis_servers"]
__all__ = ["cluster", "tidings_nodes"]  # fixtures used here, defined elsewhere

SETTLE = WAIT * 4  # bound on a whole send on a busy 2-core machine
AB = [{"name": "A", "title": "Plain"}, {"name": "B", "title": "Bold"}]
EXPERIMENT = {"fraction": 0.5, "metric": "opened", "decide_after": 2}


@pytest.fixture(params=["redis", "redis-cluster"])
def target(request: pytest.FixtureRequest) -> RedisServer | RedisClusterProcs:
    server: RedisServer | RedisClusterProcs = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    server.flushall()
    return server


@pytest.fixture
async def store(target: RedisServer | RedisClusterProcs) -> AsyncIterator[RedisStore]:
    s = RedisStore(target.url, timeout=WAIT)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_two_nodes_decide_an_experiment_once_and_send_the_winner_to_the_rest(
        target: RedisServer | RedisClusterProcs, store: RedisStore,
        tidings_nodes: NodeFactory, cluster: Cluster) -> None:
    n1, n2 = tidings_nodes.start(2, redis_env(
        target.url, TIDINGS_NOTIFY_LEASE="2", TIDINGS_NOTIFY_SCHEDULE_INTERVAL="0.1",
        TIDINGS_AUDIENCE_PAGE_SIZE="4"))
    users = [f"exp-{i:03d}" for i in range(40)]
    at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat(timespec="milliseconds")
    code, body = await cluster.api(n1, "POST", "/v1/notify", {
        "users": users, "title": "T", "variants": AB, "experiment": EXPERIMENT,
        "send_at": at})
    assert code == 200, body
    nid = body["id"]

    async def phase(want: str) -> dict[str, Any] | None:
        code, got = await cluster.api(n2, "GET", f"/v1/notifications/{nid}")
        assert code == 200, got
        return got if got["experiment"]["phase"] == want else None

    testing = await wait_for(lambda: phase("testing"), SETTLE, "the test phase")
    group = {u for u in users if in_test_group(parse_experiment(EXPERIMENT), nid, u)}
    decided = await wait_for(lambda: phase("decided"), SETTLE, "the verdict")
    assert testing["experiment"]["decide_at"] is not None

    async def everyone() -> dict[str, Any] | None:
        got = await phase("decided")
        return got if got is not None and got["status"] == "sent" else None

    done = await wait_for(everyone, SETTLE, "the winner sent")
    winner = decided["experiment"]["winner"]
    assert winner in ("A", "B") and done["outcomes"]["pushed"] == len(users)
    verdicts = sum(n.log().count(f"notification {nid}: variant") for n in (n1, n2))
    assert verdicts == 1
    v = parse_variants(AB)
    for u in users:
        items = [i.fields for i in (await store.inbox(u, limit=10)).items]
        assert [i["id"] for i in items] == [nid], u  # once
        want = v.assign(nid, u).name if u in group else winner
        assert items[0]["variant"] == want, u
