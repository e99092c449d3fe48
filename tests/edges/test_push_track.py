"""``GET /push/track`` on the WS port: the service worker's signed reports of
a notification the OS showed (delivered / opened / clicked / dismissed) reach
the notification's stats once; a bad signature or link changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from conftest import WAIT, Node


async def get(node: Node, query: str) -> tuple[int, dict[str, str]]:
    url = f"http://127.0.0.1:{node.app.ws_port}/push/track?{query}"
    async with node.http.get(url, headers={"Origin": "https://app.example.com"}) as r:
        return r.status, dict(r.headers)


async def stats_after(node: Node, nid: str, key: str, want: int) -> dict[str, int]:
    async with asyncio.timeout(WAIT):
        while True:
            status, body = await node.api("GET", f"/v1/notifications/{nid}/stats")
            assert status == 200, body
            if body.get(key) == want:
                return dict(body)
            await asyncio.sleep(0.02)


async def notify(node: Node, user: str) -> str:
    status, body = await node.api("POST", "/v1/notify", {"users": [user], "title": "hi"})
    assert status == 200, body
    return str(body["id"])


async def test_signed_reports_reach_the_stats_once(node: Node) -> None:
    nid = await notify(node, "ann")
    signer = node.app.ws.track_signer
    token = signer.sign("ann", nid)
    for event in ("delivered", "opened", "opened"):
        status, headers = await get(node, f"u=ann&n={nid}&e={event}&t={token}")
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "*"
    stats = await stats_after(node, nid, "opened", 1)
    assert stats["delivered"] == 1 and stats["clicked"] == 0


@pytest.mark.parametrize("query", [
    "u=ann&n={nid}&e=opened&t=AAAAAAAAAAAAAAAAAAAAAAAA",  # forged
    "u=bob&n={nid}&e=opened&t={token}",  # ann's token for bob
    "u=ann&n=n_other&e=opened&t={token}",  # ann's token for another notification
])
async def test_a_bad_signature_is_403_and_records_nothing(node: Node, query: str) -> None:
    nid = await notify(node, "ann")
    token = node.app.ws.track_signer.sign("ann", nid)
    status, _ = await get(node, query.format(nid=nid, token=token))
    assert status == 403
    # a good report after it is the first and only one counted
    status, _ = await get(node, f"u=ann&n={nid}&e=clicked&t={token}")
    assert status == 204
    stats = await stats_after(node, nid, "clicked", 1)
    assert stats["opened"] == 0


@pytest.mark.parametrize("query", ["", "u=ann", "u=ann&n=x&e=read&t=y",
                                   "u=ann&u=bob&n=x&e=opened&t=y",
                                   "u=" + "a" * 300 + "&n=x&e=opened&t=y"])
async def test_a_malformed_link_is_400(node: Node, query: str) -> None:
    status, _ = await get(node, query)
    assert status == 400


async def test_tokens_are_not_connect_tokens(node: Node) -> None:
    """A tracking token is no credential for anything else."""
    nid = await notify(node, "ann")
    client = await node.client(None, connect=False)
    reply = await client.request("connect", token=node.app.ws.track_signer.sign("ann", nid))
    assert reply["ok"] is False
