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

/** As the page shows them: counts, rates, differences and p-values. */
const count = (/** @type {number} */ n) => n.toLocaleString("en", { maximumFractionDigits: 1 });
const pct = (/** @type {number} */ x) => `${(100 * x).toFixed(1)}%`;
const pts = (/** @type {number} */ d) => `${d > 0 ? "+" : d < 0 ? "−" : "±"}${Math.abs(100 * d).toFixed(1)} pts`;
const FUNNEL = ["targets", "pushed", "held", "silent", "suppressed", "delivered", "opened",
  "clicked", "dismissed", "feedback"];

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
      String(want.delivered), String(want.opened), String(want.clicked), String(want.dismissed),
      String(want.feedback ?? 0), pct(want.rates.opened.rate), pct(want.rates.clicked.rate)]);
  } finally {
    await context.close();
  }
});

test("cancelling a scheduled notification from the dashboard cancels it", { ...TIMEOUT, skip: missing }, async () => {
  const { id } = await server.api("POST", "/v1/notify", { users: ["dash-a", "dash-b"],
    title: "later", category: "promo", send_at: "2099-01-01T09:00:00Z" });
  const { context, page } = await signedIn();
  try {
    const button = `#scheduled button[data-cancel="${id}"]`;
    await page.waitForSelector(button);
    assert.equal((await server.api("GET", `/v1/notifications/${id}`)).status, "scheduled");
    await page.click(button);
    await page.waitForSelector(button, { state: "detached", timeout: 2 * WAIT });
    assert.equal((await server.api("GET", `/v1/notifications/${id}`)).status, "cancelled");
    const listed = await server.api("GET", "/v1/notifications?status=scheduled");
    assert.equal(listed.notifications.some((/** @type {any} */ n) => n.id === id), false);
    await page.waitForSelector(`#recent .notification[data-id="${id}"] .status.cancelled`);
    assert.equal(await page.textContent("#sched-error"), "");
  } finally {
    await context.close();
  }
});

test("the variant comparison shows the API's numbers: funnel, rates and intervals, the verdict",
  { ...TIMEOUT, skip: missing }, async () => {
    // 40 users online get an A/B notification; every B user opens it, two A users do
    const users = Array.from({ length: 40 }, (_, i) => `ab-${i}`);
    /** @type {Map<string, any[]>} */
    const pushes = new Map();
    const devices = new Map();
    for (const user of users) {
      const ws = await device(user);
      pushes.set(user, []);
      ws.on("message", (raw) => pushes.get(user)?.push(JSON.parse(String(raw))));
      devices.set(user, ws);
    }
    const { id } = await server.api("POST", "/v1/notify", { users, title: "Spring sale",
      category: "promo", variants: [{ name: "A" }, { name: "B", title: "Last chance" }] });
    /** @param {string} user */
    const received = (user) => pushes.get(user)?.find((m) => m.type === "notification" && m.id === id);
    await until(() => users.every(received), "every user's push", 4 * WAIT);
    const variantOf = new Map(users.map((u) => [u, received(u).variant]));
    const a = users.filter((u) => variantOf.get(u) === "A");
    const b = users.filter((u) => variantOf.get(u) === "B");
    assert.ok(a.length >= 5 && b.length >= 5, `${a.length} A and ${b.length} B`);
    let op = 100;
    for (const user of users) {
      const events = ["delivered", ...(b.includes(user) || a.indexOf(user) < 2 ? ["opened"] : [])];
      for (const event of events) {
        devices.get(user).send(JSON.stringify({ op: "track", id: op++, notification: id, event }));
      }
    }
    const stats = await until(async () => {
      const s = await server.stats(id);
      return s.total.opened === b.length + 2 && s.total.delivered === users.length && s;
    }, "the opens counted");
    assert.deepEqual(stats.variants.map((/** @type {any} */ v) => [v.name, v.targets, v.opened]),
      [["A", a.length, 2], ["B", b.length, b.length]]);
    assert.equal(stats.winner, "B");
    const { context, page } = await signedIn();
    try {
      const card = `#recent .notification[data-id="${id}"]`;
      await page.waitForSelector(`${card} tr[data-group="B"]`, { timeout: 2 * WAIT });
      const shown = await page.$$eval(`${card} tbody tr`, (trs) => trs.map((tr) => ({
        group: /** @type {HTMLElement} */ (tr).dataset.group,
        cells: [...tr.querySelectorAll("td")].map((td) => td.textContent),
        interval: { .../** @type {HTMLElement} */ (tr.querySelector(".interval"))?.dataset },
        bar: ["left", "width"].map((k) => parseFloat(
          /** @type {HTMLElement} */ (tr.querySelector(".interval span"))?.style.getPropertyValue(k))),
      })));
      const groups = [{ name: "total", ...stats.total, vs_control: null }, ...stats.variants];
      assert.deepEqual(shown.map((r) => r.group), ["total", "A", "B"]);
      for (const [i, g] of groups.entries()) {
        const r = g.rates[stats.metric];
        const vs = i === 0 ? "" : g.vs_control
          ? `${pts(g.vs_control.diff)}, p = ${g.vs_control.p_value.toPrecision(2)}` : "control";
        assert.deepEqual(shown[i].cells, [g.name, ...FUNNEL.map((k) => count(g[k])),
          `${pct(r.rate)}`, vs], `the ${g.name} row`);
        assert.deepEqual(shown[i].interval, { rate: String(r.rate), low: String(r.low),
          high: String(r.high) });
        const [left, width] = shown[i].bar; // the bar spans low..high, in % (CSS keeps 6 digits)
        assert.ok(Math.abs(left - 100 * r.low) < 1e-3 && Math.abs(width - 100 * (r.high - r.low)) < 1e-3,
          `the ${g.name} bar: ${left}% + ${width}%`);
      }
      assert.equal(await page.textContent(`${card} .verdict`),
        `Winner by ${stats.metric}: B (${pts(stats.variants[1].vs_control.diff)} against the control, ` +
        `p = ${stats.variants[1].vs_control.p_value.toPrecision(2)})`);
      assert.equal(await page.getAttribute(`${card} tr[data-group="B"]`, "class"), "winner");
    } finally {
      await context.close();
    }
  });
