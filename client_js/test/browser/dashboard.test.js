// The dashboard (/dashboard on the API port) in a real browser: Debian's
// Chromium, headless, driven by playwright-core, against a real server.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import WebSocket from "ws";

import { browserSuite } from "../helpers/browser.js";
import { until, WAIT } from "../helpers/server.js";

const { missing, server, browser } = browserSuite("js-dashboard");
/** @type {WebSocket[]} */
const sockets = [];

after(() => {
  for (const ws of sockets) ws.terminate();
});

const TIMEOUT = { timeout: 12 * WAIT };

/** A WebSocket device of `user`, connected. */
async function device(user) {
  const token = await server.devToken(user);
  const ws = new WebSocket(server.wsUrl, "tidings.v1.json");
  sockets.push(ws);
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject); });
  ws.send(JSON.stringify({ op: "connect", id: 1, token }));
  await new Promise((resolve) => ws.once("message", resolve));
  return ws;
}

/** A signed-in dashboard page. */
async function signedIn() {
  const context = await browser().newContext();
  const page = await context.newPage();
  await page.goto(`${server.apiUrl}/dashboard`);
  await page.fill("#key", server.apiKey);
  await Promise.all([page.waitForURL(`${server.apiUrl}/dashboard`), page.click("button[type=submit]")]);
  await page.waitForSelector("#traffic-chart", { timeout: 2 * WAIT });
  return { context, page };
}

test("sign-in: a form without a key, an error for a wrong one, an HttpOnly session for the right one",
  { ...TIMEOUT, skip: missing }, async () => {
    const context = await browser().newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${server.apiUrl}/dashboard`);
      assert.equal(await page.isVisible("#key"), true);
      await page.fill("#key", "not-the-key");
      await page.click("button[type=submit]");
      await page.waitForSelector("#login-error:has-text('not valid')");
      await page.fill("#key", server.apiKey);
      await page.click("button[type=submit]");
      await page.waitForSelector("#traffic-chart", { timeout: 2 * WAIT });
      assert.equal(page.url(), `${server.apiUrl}/dashboard`); // the key is in no URL
      assert.equal(await page.evaluate(() => document.cookie.includes("tidings_dashboard")), false);
      const cookies = await context.cookies();
      const session = cookies.find((/** @type {any} */ c) => c.name === "tidings_dashboard");
      assert.equal(session.httpOnly, true);
      assert.equal(session.sameSite, "Strict");
      assert.equal(session.value.includes(server.apiKey), false);
    } finally {
      await context.close();
    }
  });

test("live figures match the API and the traffic chart draws", { ...TIMEOUT, skip: missing }, async () => {
  await device("dash-a");
  await device("dash-b");
  const { context, page } = await signedIn();
  try {
    const summary = await server.api("GET", "/v1/dashboard/summary");
    await until(async () => (await page.textContent("#conn-ws")) === String(summary.connections.ws),
      "the WS connections shown");
    assert.ok(summary.connections.ws >= 2);
    // some traffic for the chart: the page derives rates from two polls or more
    for (let i = 0; i < 20; i++) await server.publish("dash/news", { i });
    await page.waitForFunction(() => Number(document.body.dataset.ticks ?? 0) >= 3, null,
      { timeout: 6 * WAIT });
    const painted = await page.evaluate(() => {
      const canvas = /** @type {HTMLCanvasElement | null} */ (document.querySelector("#traffic-chart canvas"));
      if (!canvas) return 0;
      const ctx = canvas.getContext("2d");
      if (!ctx) return 0;
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      return n;
    });
    assert.ok(painted > 500, `the chart's canvas has ${painted} painted pixels`);
    assert.match(await page.textContent("#updated") ?? "", /^updated /);
  } finally {
    await context.close();
  }
});

test("categories shown are the API's", { ...TIMEOUT, skip: missing }, async () => {
  await server.notify("dash-a", { title: "one", category: "social" });
  await server.notify("dash-b", { title: "two", category: "social" });
  const { context, page } = await signedIn();
  try {
    const api = await server.api("GET", "/v1/stats/categories");
    const want = api.categories.social;
    await page.waitForSelector("#categories tbody tr");
    const row = await page.$$eval("#categories tbody tr", (trs) => trs
      .map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent))
      .find((cells) => cells[0] === "social"));
    assert.deepEqual(row, ["social", String(want.notifications), String(want.targets),
      String(want.delivered), String(want.opened), String(want.clicked), String(want.dismissed)]);
  } finally {
    await context.close();
  }
});
