"""The README's dashboard screenshot (docs/dashboard.png), from a real server.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]

Needs client_js's npm packages (playwright-core, uPlot: ``npm ci`` in
client_js) and Debian's Chromium (``TIDINGS_CHROMIUM``, default
/usr/bin/chromium). It:

1. starts ``tidings serve`` on a fresh data folder on free loopback ports and,
   through its API and WebSocket edge, brings users online (presence events),
   sends notifications in a few categories that they open (engagement events)
   and schedules two; then stops it;
2. seeds two A/B tests of 2,000 and 400 users through the store, their
   variants recorded with each target (``Delivery.variant``) and delivered /
   opened / clicked tracked, one with a clear winner and one without (a fixed
   seed: the picture is the same each run);
3. serves the folder again, with the users online and topic traffic running,
   signs in to /dashboard in headless Chromium (playwright-core) and saves a
   PNG of the page once the traffic chart has points.

Everything is loopback; the server and the browser stop at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from tidings.store.base import Delivery, HistoryPolicy, NewJob
from tidings.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")
SEED = 13

# The browser's part: sign in with the key, wait for the chart, save the page.
SHOOT = r"""
import { createRequire } from "node:module";
const require = createRequire(process.env.CLIENT_JS + "/package.json");
const { chromium } = require("playwright-core");
const [apiUrl, key, out, chromiumPath] = process.argv.slice(1);
const browser = await chromium.launch({ executablePath: chromiumPath, headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${apiUrl}/dashboard`);
  await page.fill("#key", key);
  await Promise.all([page.waitForURL(`${apiUrl}/dashboard`), page.click("button[type=submit]")]);
  await page.waitForSelector("#recent .notification", { timeout: 20000 });
  await page.waitForFunction(() => Number(document.body.dataset.ticks ?? 0) >= 6,
    null, { timeout: 30000 });
  // down to the two A/B tests' verdicts (the PNG stays small)
  const height = await page.evaluate(() => {
    const cards = document.querySelectorAll("#recent .notification");
    const last = cards[Math.min(1, cards.length - 1)];
    return Math.ceil(last.getBoundingClientRect().bottom + window.scrollY + 12);
  });
  await page.screenshot({ path: out, fullPage: true, clip: { x: 0, y: 0, width: 1280, height } });
} finally {
  await browser.close();
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CHUNK = 500  # targets per deliver call


def _policy(topic: str) -> HistoryPolicy:
    return HistoryPolicy(100, 86400.0)


async def record(folder: Path, spec: dict[str, Any]) -> None:
    """Record one A/B test's results through the store, the server stopped (the
    store takes the folder's lock): a sent job whose targets carry their variant
    (``Delivery.variant``) and their tracked events. ``spec``: ``{"id", "title",
    "category", "variants": [{"name", "targets", "delivered", "opened",
    "clicked", "dismissed"}]}``; the first ``delivered`` targets of a variant
    report ``delivered``, the first ``opened`` of them ``opened`` and so on,
    ``dismissed`` counting from the last target back."""
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


def experiment(rng: random.Random, nid: str, title: str, users: int,
               opened: dict[str, float], clicked: float) -> dict[str, Any]:
    """The spec (:func:`record`) of an A/B test sent to ``users`` users split
    evenly: ~93% delivered, ``opened[variant]`` of those opened, ``clicked`` of
    those clicked, a tenth of the rest dismissed (drawn from ``rng``)."""

    def draw(n: int, p: float) -> int:
        return sum(rng.random() < p for _ in range(n))

    variants = []
    for k, (name, rate) in enumerate(opened.items()):
        targets = users // len(opened) + (k < users % len(opened))
        delivered = draw(targets, 0.93)
        opens = draw(delivered, rate)
        variants.append({"name": name, "targets": targets, "delivered": delivered,
                         "opened": opens, "clicked": draw(opens, clicked),
                         "dismissed": draw(delivered - opens, 0.1)})
    return {"id": nid, "title": title, "category": "promo", "variants": variants}


async def seed(folder: Path) -> None:
    rng = random.Random(SEED)
    await record(folder, experiment(rng, "n_new_feature", "Try the new editor", 400,
                                    {"A": 0.30, "B": 0.32, "C": 0.27}, 0.2))
    await record(folder, experiment(rng, "n_spring_sale", "Spring sale", 2000,
                                    {"A": 0.21, "B": 0.28}, 0.35))


@contextlib.asynccontextmanager
async def serve(folder: Path) -> AsyncIterator[dict[str, Any]]:
    ports = {"ws": free_port(), "api": free_port(), "mqtt": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update({"TIDINGS_WS_HOST": "127.0.0.1", "TIDINGS_WS_PORT": str(ports["ws"]),
                "TIDINGS_API_HOST": "127.0.0.1", "TIDINGS_API_PORT": str(ports["api"]),
                "TIDINGS_MQTT_HOST": "127.0.0.1", "TIDINGS_MQTT_PORT": str(ports["mqtt"]),
                "TIDINGS_STORE_PATH": str(folder), "TIDINGS_NODE_NAME": "demo-1",
                "TIDINGS_PRESENCE_DEBOUNCE": "0"})
    log = (folder.parent / "serve.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidings.cli", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=log)
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                if proc.returncode is not None:
                    raise SystemExit(f"tidings serve exited; see {log.name}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(api + "/healthz") as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise SystemExit("tidings serve did not become healthy in 30 s")
                await asyncio.sleep(0.2)
            key = json.loads((folder / "secrets.json").read_text())["dev_api_key"]
            yield {"api": api, "ws": f"ws://127.0.0.1:{ports['ws']}/ws", "key": key,
                   "http": http}
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def call(srv: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    async with srv["http"].request(method, srv["api"] + path, json=body, headers={
            "Authorization": f"Bearer {srv['key']}"}) as r:
        out = await r.json()
        if r.status >= 300:
            raise SystemExit(f"{method} {path}: {r.status} {out}")
        return out


async def device(srv: dict[str, Any], user: str) -> Any:
    token = (await call(srv, "POST", "/v1/tokens", {"user": user}))["token"]
    ws = await websockets.connect(srv["ws"], subprotocols=["tidings.v1.json"])  # type: ignore[list-item]
    await ws.send(json.dumps({"op": "connect", "id": 1, "token": token}))
    await ws.recv()
    await ws.send(json.dumps({"op": "subscribe", "id": 2, "topic": "news/live"}))
    return ws


async def live_activity(srv: dict[str, Any]) -> list[Any]:
    """Users online, notifications in a few categories sent and engaged with,
    two scheduled: events, category outcomes and the scheduled list."""
    users = [f"user{i}" for i in range(12)]
    sockets = [await device(srv, u) for u in users]
    rng = random.Random(SEED)
    for category, title, share in (("orders", "Your order has shipped", 0.8),
                                   ("social", "Maya mentioned you", 0.6),
                                   ("digest", "Your weekly digest", 0.3)):
        sent = await call(srv, "POST", "/v1/notify", {"users": users, "title": title,
                                                      "category": category})
        for i, ws in enumerate(sockets):
            for event, p in (("delivered", 1.0), ("opened", share), ("clicked", share / 2)):
                if rng.random() < p:
                    await ws.send(json.dumps({"op": "track", "id": 100 + i,
                                              "notification": sent["id"], "event": event}))
    for days, title in ((1, "Flash sale starts"), (3, "Webinar reminder")):
        at = time.strftime("%Y-%m-%dT09:00:00Z", time.gmtime(time.time() + days * 86400))
        await call(srv, "POST", "/v1/notify", {"users": users, "title": title,
                                               "category": "promo", "send_at": at})
    return sockets


async def traffic(srv: dict[str, Any], stop: asyncio.Event) -> None:
    """Topic publishes (a varying rate) for the messages-per-second chart."""
    i = 0
    while not stop.is_set():
        for _ in range(5 + 4 * (i % 5)):
            await call(srv, "POST", "/v1/publish", {"topic": "news/live", "data": {"i": i}})
        i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def main() -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    args = parser.parse_args()
    client_js = ROOT / "client_js"
    if not (client_js / "node_modules" / "playwright-core").is_dir():
        raise SystemExit("client_js's npm packages are missing: npm ci in client_js")
    with tempfile.TemporaryDirectory(prefix="tidings-shot-") as tmp:
        folder = Path(tmp) / "data"
        folder.mkdir()
        async with serve(folder) as srv:
            for ws in await live_activity(srv):
                await ws.close()
        await seed(folder)  # the server is down: the store is the script's meanwhile
        async with serve(folder) as srv:
            sockets = [await device(srv, f"user{i}") for i in range(12)]
            stop = asyncio.Event()
            publisher = asyncio.create_task(traffic(srv, stop))
            shot = await asyncio.create_subprocess_exec(
                "node", "--input-type=module", "-e", SHOOT, srv["api"], srv["key"],
                args.out, CHROMIUM, env={**os.environ, "CLIENT_JS": str(client_js)})
            code = await shot.wait()
            stop.set()
            await publisher
            for ws in sockets:
                await ws.close()
            if code != 0:
                raise SystemExit(f"the browser step failed ({code})")
    return Path(args.out)


if __name__ == "__main__":
    out = asyncio.run(main())
    print(f"{out}: {out.stat().st_size // 1024} KiB")
