// The service worker (src/tidings-sw.js) in a real browser: Debian's Chromium,
// headless, driven by playwright-core, against a real server. Push messages
// are handed to the worker through the DevTools protocol
// (ServiceWorker.deliverPushMessage): no push service is reachable here, and
// the worker cannot tell the difference.
//
// Clicks and closes: Chromium has no DevTools method to click or close an OS
// notification (none in its protocol; WPT issue 51125 asks for one), so the
// test takes the shown Notification from registration.getNotifications() in
// the worker's own scope and dispatches a NotificationEvent to it: the
// worker's own handlers run on the real Notification. Two things differ from
// a user's click, both by the Service Worker spec and Chromium's code:
// - a script-built event has no lifetime to extend, so the handler's
//   waitUntil throws InvalidStateError ("Can not call waitUntil on a script
//   constructed ExtendableEvent", blink's ExtendableEvent::waitUntil); the
//   work it started (the report, the tab lookup) goes on regardless;
// - focus() and openWindow() are allowed only while the browser dispatches a
//   real click (blink's WaitUntilObserver::WillDispatchEvent grants the
//   window interaction), so they are refused with InvalidAccessError; the
//   test records which of them the worker called, and for which URL.
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
  const worker = await until(
    async () => context.serviceWorkers().find((w) => w.url().startsWith(`${scope}tidings-sw.js`)),
    "the worker's scope");
  /** @param {any} payload */
  const push = (payload) => cdp.send("ServiceWorker.deliverPushMessage", {
    origin: server.pageUrl, registrationId, data: JSON.stringify(payload) });
  // asked in the worker's scope, so it answers with every tab closed too
  const shown = () => worker.evaluate(async () => {
    const list = await /** @type {any} */ (self).registration.getNotifications();
    return list.map((/** @type {Notification} */ n) => ({ title: n.title, body: n.body, tag: n.tag }));
  });
  return { context, page, worker, push, shown };
}

/**
 * Dispatch `type` (notificationclick or notificationclose) for the shown
 * notification `tag` in the worker's scope, so the worker's own handler runs
 * on the real Notification, and wait until what it started has settled.
 * Returns the errors the handler threw (`error`), the focus/openWindow calls
 * it made with their outcome (passed through to the browser's own), and the
 * report it sent with the server's answer.
 * @param {import("playwright-core").Worker} worker
 * @param {string} tag
 * @param {string} type
 * @param {string} [action] the action button clicked ("" for the body)
 */
function dispatch(worker, tag, type, action = "") {
  return worker.evaluate(async ({ tag, type, action, wait }) => {
    const scope = /** @type {any} */ (self);
    /** @type {string[]} */
    const errors = [];
    /** @type {{call: string, url: string, outcome?: string}[]} */
    const calls = [];
    /** @type {{url: string, status?: number}[]} */
    const reports = [];
    const onError = (/** @type {ErrorEvent} */ e) => { errors.push(e.message); e.preventDefault(); };
    const onRejection = (/** @type {PromiseRejectionEvent} */ e) => e.preventDefault();
    /** @param {{outcome?: string}} entry @param {Promise<any>} p */
    const settle = (entry, p) => p.then(
      (v) => { entry.outcome = "done"; return v; },
      (e) => { entry.outcome = `${e.name}: ${e.message}`; throw e; });
    const realFocus = scope.WindowClient.prototype.focus;
    const realOpen = scope.clients.openWindow;
    const realFetch = scope.fetch;
    scope.WindowClient.prototype.focus = function focus() {
      const entry = { call: "focus", url: this.url };
      calls.push(entry);
      return settle(entry, realFocus.call(this));
    };
    scope.clients.openWindow = (/** @type {string} */ url) => {
      const entry = { call: "openWindow", url };
      calls.push(entry);
      return settle(entry, realOpen.call(scope.clients, url));
    };
    scope.fetch = (/** @type {string} */ url, /** @type {any} */ init) => {
      /** @type {{url: string, status?: number}} */
      const entry = { url };
      reports.push(entry);
      return realFetch(url, init).then((/** @type {Response} */ r) => { entry.status = r.status; return r; });
    };
    scope.addEventListener("error", onError);
    scope.addEventListener("unhandledrejection", onRejection);
    try {
      const [notification] = await scope.registration.getNotifications({ tag });
      if (!notification) throw new Error(`no notification shown with tag ${tag}`);
      scope.dispatchEvent(new scope.NotificationEvent(type, { notification, action }));
      const end = Date.now() + wait;
      while (!(reports.every((r) => r.status) && calls.every((c) => c.outcome)
               && reports.length > 0 && (type !== "notificationclick" || calls.length > 0))) {
        if (Date.now() > end) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      return { errors, calls, reports };
    } finally {
      scope.WindowClient.prototype.focus = realFocus;
      scope.clients.openWindow = realOpen;
      scope.fetch = realFetch;
      scope.removeEventListener("error", onError);
      scope.removeEventListener("unhandledrejection", onRejection);
    }
  }, { tag, type, action, wait: WAIT });
}

/** What Chromium says when the handler calls waitUntil on a script-built event. */
const SCRIPT_EVENT = "Uncaught InvalidStateError: Failed to execute 'waitUntil' on "
  + "'ExtendableEvent': Can not call waitUntil on a script constructed ExtendableEvent.";

/** @param {{reports: {url: string, status?: number}[]}} seen @returns {string[]} */
function reported(seen) {
  return seen.reports.map((r) => `${new URL(r.url).searchParams.get("e")} ${r.status}`);
}

test("a pushed notification is shown and reported delivered", { ...TIMEOUT, skip: missing }, async () => {
  const { context, push, shown } = await withWorker();
  try {
    const id = await server.notify("ann", { title: "Order shipped" });
    await push({ type: "notification", id, title: "Order shipped", body: "Track it",
      category: "general", track: track("ann", id) });
    await until(async () => (await shown()).length === 1, "the notification shown");
    assert.deepEqual(await shown(), [{ title: "Order shipped", body: "Track it", tag: id }]);
    await until(async () => (await server.stats(id)).delivered === 1, "delivered in the stats");
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
    assert.equal((await server.stats(id)).delivered, 0);
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
      // a click, not page.check: check() fails when the page has already
      // turned the switch back off (a fast refusal from the browser)
      await page.click("#push-switch");
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

test("clicks on three devices count opened and clicked once for the user; the tab showing the URL comes up",
  { ...TIMEOUT, skip: missing }, async () => {
    // three browser contexts: three devices of ann, each with its own worker,
    // each shown the notification (a click closes it: one click per device)
    const devices = [await withWorker(), await withWorker(), await withWorker()];
    const [laptop, desktop, tablet] = devices;
    try {
      const tab = `${server.pageUrl}/client/index.js`; // the page withWorker opened
      const id = await server.notify("ann", { title: "Order shipped" });
      const payload = { type: "notification", id, title: "Order shipped", category: "general",
        data: { url: "/client/index.js" }, actions: [{ action: "track", title: "Track it" }],
        track: track("ann", id) };
      await laptop.push(payload);
      await desktop.push(payload);
      await tablet.push({ ...payload, data: {} }); // no URL: any tab of the app comes up
      for (const d of devices) await until(async () => (await d.shown()).length === 1, "shown");

      const first = await dispatch(laptop.worker, id, "notificationclick");
      assert.deepEqual(reported(first), ["opened 204"]);
      // the worker went for the open tab that shows data.url; Chromium refuses
      // a focus outside a real click, and the waitUntil of a script-built event
      assert.deepEqual(first.calls,
        [{ call: "focus", url: tab, outcome: "InvalidAccessError: Not allowed to focus a window." }]);
      assert.deepEqual(first.errors, [SCRIPT_EVENT]);
      assert.deepEqual(await laptop.shown(), [], "the click closed the notification");
      await until(async () => (await server.stats(id)).opened === 1, "opened in the stats");

      assert.deepEqual(reported(await dispatch(desktop.worker, id, "notificationclick")),
        ["opened 204"]);
      const action = await dispatch(tablet.worker, id, "notificationclick", "track");
      assert.deepEqual(reported(action), ["clicked 204"]);
      assert.deepEqual(action.calls.map((c) => [c.call, c.url]), [["focus", tab]]);
      await until(async () => (await server.stats(id)).clicked === 1, "clicked in the stats");
      const counted = await server.stats(id);
      assert.deepEqual([counted.opened, counted.clicked, counted.dismissed], [1, 1, 0],
        "opened and clicked once for ann; closing it on a click is no dismissal");
    } finally {
      for (const d of devices) await d.context.close();
    }
  });

test("a click whose URL no tab shows opens it, with the app open or closed",
  { ...TIMEOUT, skip: missing }, async () => {
    const { context, page, worker, push, shown } = await withWorker();
    try {
      const orders = `${server.pageUrl}/orders/42`;
      const refused = "InvalidAccessError: Not allowed to open a window.";
      const a = await server.notify("bob", { title: "Price alert" });
      const b = await server.notify("bob", { title: "Price alert again" });
      for (const id of [a, b]) {
        await push({ type: "notification", id, title: "Price alert", data: { url: "/orders/42" },
          actions: [{ action: "buy", title: "Buy" }], track: track("bob", id) });
      }
      await until(async () => (await shown()).length === 2, "both shown");

      // the app's tab is open but shows another page: a new window for data.url
      const open = await dispatch(worker, a, "notificationclick");
      assert.deepEqual(reported(open), ["opened 204"]);
      assert.deepEqual(open.calls, [{ call: "openWindow", url: orders, outcome: refused }]);

      await page.close(); // no tab of the app is left
      const closed = await dispatch(worker, b, "notificationclick", "buy");
      assert.deepEqual(reported(closed), ["clicked 204"]);
      assert.deepEqual(closed.calls, [{ call: "openWindow", url: orders, outcome: refused }]);
      assert.deepEqual(closed.errors, [SCRIPT_EVENT]);
      await until(async () => (await server.stats(b)).clicked === 1, "clicked in b's stats");
      assert.equal((await server.stats(b)).opened, 0);
      assert.deepEqual([(await server.stats(a)).opened, (await server.stats(a)).clicked], [1, 0]);
    } finally {
      await context.close();
    }
  });

test("closing the notification reports dismissed", { ...TIMEOUT, skip: missing }, async () => {
  const { context, worker, push, shown } = await withWorker();
  try {
    const id = await server.notify("cat", { title: "Weekly digest" });
    await push({ type: "notification", id, title: "Weekly digest", track: track("cat", id) });
    await until(async () => (await shown()).length === 1, "the notification shown");
    const seen = await dispatch(worker, id, "notificationclose");
    assert.deepEqual(reported(seen), ["dismissed 204"]);
    assert.deepEqual(seen.calls, [], "a close brings nothing up");
    assert.deepEqual(seen.errors, [SCRIPT_EVENT]);
    await until(async () => (await server.stats(id)).dismissed === 1, "dismissed in the stats");
    const counted = await server.stats(id);
    assert.deepEqual([counted.opened, counted.clicked], [0, 0]);
  } finally {
    await context.close();
  }
});
