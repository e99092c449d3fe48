// The service worker (src/tidings-sw.js) in a real browser: Debian's Chromium,
// headless, driven by playwright-core, against a real server. Push messages
// are handed to the worker through the DevTools protocol
// (ServiceWorker.deliverPushMessage): no push service is reachable here, and
// the worker cannot tell the difference.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { browserSuite } from "../helpers/browser.js";
import { until, WAIT } from "../helpers/server.js";

const { missing, server, browser } = browserSuite("js-push");

const TIMEOUT = { timeout: 12 * WAIT };

/**
 * The signed `track` member the server puts in a push payload, computed here
 * from the data folder's JWT secret (server/tidings/push/track.py's scheme:
 * an independent implementation of it).
 * @param {string} user
 * @param {string} id
 */
function track(user, id) {
  const secret = JSON.parse(readFileSync(join(server.dir, "data", "secrets.json"), "utf8")).jwt_secret;
  const key = createHmac("sha256", secret).update("tidings:push-track").digest();
  const mac = createHmac("sha256", key).update(`${user}\0${id}`).digest().subarray(0, 18);
  return { user, token: mac.toString("base64url") };
}

/** @param {string} id */
async function stats(id) {
  return server.api("GET", `/v1/notifications/${id}/stats`);
}

/** Reports the server refused for a bad signature, from /metrics. */
async function refusedReports() {
  const res = await fetch(`${server.apiUrl}/metrics`, {
    headers: { Authorization: `Bearer ${server.apiKey}` } });
  const line = (await res.text()).split("\n")
    .find((l) => l.startsWith('tidings_errors_total{code="bad_track_signature"}'));
  return line ? Number(line.split(" ").pop()) : 0;
}

/**
 * A page of the server's origin with the worker registered; the DevTools
 * session and the worker's registration id.
 */
async function withWorker() {
  const context = await browser().newContext();
  await context.grantPermissions(["notifications"], { origin: server.pageUrl });
  const page = await context.newPage();
  await page.goto(`${server.pageUrl}/client/index.js`); // any page of the origin
  const cdp = await context.newCDPSession(page);
  /** @type {Map<string, string>} */
  const registrations = new Map();
  cdp.on("ServiceWorker.workerRegistrationUpdated", (/** @type {any} */ e) => {
    for (const r of e.registrations) registrations.set(r.scopeURL, r.registrationId);
  });
  await cdp.send("ServiceWorker.enable");
  await page.evaluate(async (origin) => {
    const reg = await navigator.serviceWorker.register(
      `/client/tidings-sw.js?server=${encodeURIComponent(origin)}`, { scope: "/client/" });
    for (let i = 0; i < 500 && !(reg.active && reg.active.state === "activated"); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }, server.pageUrl);
  const scope = `${server.pageUrl}/client/`;
  await until(async () => registrations.has(scope), "the worker's registration");
  const registrationId = /** @type {string} */ (registrations.get(scope));
  /** @param {any} payload */
  const push = (payload) => cdp.send("ServiceWorker.deliverPushMessage", {
    origin: server.pageUrl, registrationId, data: JSON.stringify(payload) });
  const shown = () => page.evaluate(async () => {
    const reg = await navigator.serviceWorker.getRegistration("/client/");
    const list = reg ? await reg.getNotifications() : [];
    return list.map((n) => ({ title: n.title, body: n.body, tag: n.tag }));
  });
  return { context, page, push, shown };
}

test("a pushed notification is shown and reported delivered", { ...TIMEOUT, skip: missing }, async () => {
  const { context, push, shown } = await withWorker();
  try {
    const id = await server.notify("ann", { title: "Order shipped" });
    await push({ type: "notification", id, title: "Order shipped", body: "Track it",
      category: "general", track: track("ann", id) });
    await until(async () => (await shown()).length === 1, "the notification shown");
    assert.deepEqual(await shown(), [{ title: "Order shipped", body: "Track it", tag: id }]);
    await until(async () => (await stats(id)).delivered === 1, "delivered in the stats");
  } finally {
    await context.close();
  }
});

test("a dismiss push closes it (read on another device)", { ...TIMEOUT, skip: missing }, async () => {
  const { context, push, shown } = await withWorker();
  try {
    const a = await server.notify("ann", { title: "first" });
    const b = await server.notify("ann", { title: "second" });
    await push({ type: "notification", id: a, title: "first", track: track("ann", a) });
    await push({ type: "notification", id: b, title: "second", track: track("ann", b) });
    await until(async () => (await shown()).length === 2, "both shown");
    await push({ type: "dismiss", id: a });
    await until(async () => (await shown()).length === 1, "the first closed");
    assert.deepEqual((await shown()).map((n) => n.tag), [b]);
  } finally {
    await context.close();
  }
});

test("a report with a forged token changes no stats", { ...TIMEOUT, skip: missing }, async () => {
  const { context, push, shown } = await withWorker();
  try {
    const id = await server.notify("ann", { title: "x" });
    await push({ type: "notification", id, title: "x", track: { user: "ann", token: "forged" } });
    await until(async () => (await shown()).length === 1, "shown all the same");
    // the server refused the report (counted in /metrics), and counted nothing
    await until(async () => (await refusedReports()) === 1, "the forged report refused");
    assert.equal((await stats(id)).delivered, 0);
  } finally {
    await context.close();
  }
});

test("the demo page's switch registers the worker and reports what the browser says",
  { ...TIMEOUT, skip: missing }, async () => {
    const context = await browser().newContext();
    try {
      await context.grantPermissions(["notifications"], { origin: server.pageUrl });
      const page = await context.newPage();
      await page.goto(`${server.pageUrl}/?user=switcher`);
      await page.waitForSelector('#status[data-state="connected"]', { timeout: 2 * WAIT });
      assert.equal(await page.isEnabled("#push-switch"), true);
      await page.check("#push-switch");
      // No push service is reachable from this machine, so the browser's
      // subscribe fails: the page says so and turns the switch back off.
      // Everything before it ran: permission, the worker's registration.
      await page.waitForFunction(() => {
        const text = document.getElementById("push-status")?.textContent ?? "";
        return text.startsWith("On:") || text.startsWith("Could not enable");
      }, null, { timeout: 4 * WAIT });
      const status = await page.textContent("#push-status");
      const registered = await page.evaluate(async () =>
        Boolean(await navigator.serviceWorker.getRegistration("/client/")));
      assert.equal(registered, true);
      if (status?.startsWith("Could not enable")) {
        assert.equal(await page.isChecked("#push-switch"), false);
      } else {
        const listed = await server.api("GET", "/v1/users/switcher/push-endpoints");
        assert.equal(listed.endpoints.length, 1);
      }
    } finally {
      await context.close();
    }
  });
