// The demo page in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against a real server (python -m tidings.cli serve).
//
// A browser context is one device (its own storage, locks and channels); two
// pages of one context are two tabs of that device.
import assert from "node:assert/strict";
import { test } from "node:test";

import { browserSuite, openDemo } from "../helpers/browser.js";
import { until, WAIT } from "../helpers/server.js";

const { missing, server, browser } = browserSuite("js-browser");

const TIMEOUT = { timeout: 12 * WAIT };


/**
 * Open the demo page as `user` in `context` and wait until it is live.
 * @param {import("playwright-core").BrowserContext} context
 * @param {string} user
 */
const open = (context, user) => openDemo(server, context, user, 2 * WAIT);

/** @param {import("playwright-core").Page} page */
const badge = (page) => page.textContent("#unread");

/**
 * The texts shown in the page's topic feed for `topic`.
 * @param {import("playwright-core").Page} page
 * @param {string} topic
 */
const feed = (page, topic) => page.$$eval(`#feed li[data-topic="${topic}"] .data`,
  (els) => els.map((e) => e.textContent));

/** @param {import("playwright-core").Page} page */
const inboxIds = (page) => page.$$eval("#inbox-list li", (els) => els.map((e) => /** @type {HTMLElement} */ (e).dataset.id));

/**
 * Hold every /dev/token request of `context` until the returned function is
 * called: the page cannot (re)connect meanwhile, so whatever is sent then can
 * reach it only by recovery.
 * @param {import("playwright-core").BrowserContext} context
 */
async function holdTokens(context) {
  /** @type {() => void} */
  let release = () => {};
  const gate = new Promise((r) => { release = () => r(undefined); });
  let held = 0;
  await context.route("**/dev/token*", async (route) => {
    held++;
    await gate;
    await route.continue();
  });
  return { release, held: () => held };
}

test("two devices of one user: read on one, the badge on the other drops", { skip: missing, ...TIMEOUT }, async () => {
  const phone = await browser().newContext();
  const laptop = await browser().newContext();
  try {
    const a = await open(phone, "bob");
    const b = await open(laptop, "bob");
    const first = await server.notify("bob", { title: "Your order shipped", body: "Arrives Tuesday" });
    const second = await server.notify("bob", { title: "New comment", body: "Ana: looks great!" });
    await until(async () => (await badge(a)) === "2" && (await badge(b)) === "2", "badge 2 on both");
    assert.deepEqual(await inboxIds(b), [second, first]);
    assert.equal((await server.devices("bob")).length, 2, "two devices online");

    await a.click(`#inbox-list li[data-id="${first}"] .read-btn`);
    await until(async () => (await badge(b)) === "1", "the laptop's badge drops to 1");
    await b.waitForSelector(`#inbox-list li[data-id="${first}"].read`, { timeout: WAIT });
    assert.equal(await badge(a), "1");
    assert.equal(await server.unread("bob"), 1);
    if (process.env.TIDINGS_DEMO_SCREENSHOT) { // the README's docs/demo.png
      await a.fill("#pub-text", "hello from the phone");
      await a.click('#publish-form button[type="submit"]');
      await server.publish("demo/sensors/kitchen", { temp: 21.5 });
      await until(async () => (await a.$$("#feed li")).length === 2, "two messages in the feed");
      await a.setViewportSize({ width: 1000, height: 520 });
      await a.screenshot({ path: process.env.TIDINGS_DEMO_SCREENSHOT });
    }
    assert.deepEqual([...a.errors, ...b.errors], []);
  } finally {
    await phone.close();
    await laptop.close();
  }
});

test("two tabs share one connection; closing the leader hands it over without loss", { skip: missing, ...TIMEOUT }, async () => {
  await until(async () => (await server.wsConnections()) === 0, "no connection left from other tests");
  const device = await browser().newContext();
  try {
    const one = await open(device, "cara");
    const two = await open(device, "cara");
    assert.equal(await one.evaluate(() => /** @type {any} */ (window).tidings.role), "leader");
    assert.equal(await two.evaluate(() => /** @type {any} */ (window).tidings.role), "follower");
    assert.equal(await server.wsConnections(), 1, "one WebSocket for both tabs");
    assert.equal((await server.devices("cara")).length, 1, "one device online");

    const nid = await server.notify("cara", { title: "Hello both tabs" });
    await until(async () => (await badge(one)) === "1" && (await badge(two)) === "1", "badge 1 in both tabs");
    await two.fill("#pub-text", "from tab two");
    await two.click('#publish-form button[type="submit"]');
    await until(async () => (await feed(one, "demo/chat")).length === 1 &&
      (await feed(two, "demo/chat")).length === 1, "the follower's publish in both feeds");
    await two.click(`#inbox-list li[data-id="${nid}"] .read-btn`);
    await until(async () => (await badge(one)) === "0" && (await badge(two)) === "0", "read from the follower");
    assert.equal(await server.wsConnections(), 1, "still one WebSocket");

    // The leader tab closes: the follower takes the connection over. Its token
    // request is held, so what is sent meanwhile must come through recovery.
    const hold = await holdTokens(device);
    await one.close();
    await until(() => hold.held() > 0, "the new leader asks for a token");
    await server.publish("demo/chat", { text: "during the handover" });
    const during = await server.notify("cara", { title: "During the handover" });
    hold.release();
    await until(async () => (await badge(two)) === "1", "the notification sent meanwhile");
    await until(async () => (await feed(two, "demo/chat")).length === 2, "the message sent meanwhile");
    assert.equal(await two.evaluate(() => /** @type {any} */ (window).tidings.role), "leader");
    await server.publish("demo/chat", { text: "after" });
    await until(async () => (await feed(two, "demo/chat")).length === 3, "live after the handover");
    assert.deepEqual(await feed(two, "demo/chat"), ["from tab two", "during the handover", "after"]);
    assert.deepEqual(await inboxIds(two), [during, nid]);
    assert.equal(await server.wsConnections(), 1);
    assert.deepEqual([...one.errors, ...two.errors], []);
  } finally {
    await device.close();
  }
});

test("preferences from a follower tab go through the leader's connection and reach another device", { skip: missing, ...TIMEOUT }, async () => {
  await until(async () => (await server.wsConnections()) === 0, "no connection left from other tests");
  const laptop = await browser().newContext();
  const phone = await browser().newContext();
  try {
    const one = await open(laptop, "dora");
    const two = await open(laptop, "dora");
    assert.equal(await two.evaluate(() => /** @type {any} */ (window).tidings.role), "follower");
    const other = await open(phone, "dora");
    const stored = await two.evaluate(() => /** @type {any} */ (window).tidings.preferences.set(
      { timezone: "Asia/Shanghai", locale: "zh-CN" }));
    assert.deepEqual(stored, { timezone: "Asia/Shanghai", locale: "zh-CN" });
    const merged = await two.evaluate(() => /** @type {any} */ (window).tidings.preferences.set(
      { locale: null, categories: { marketing: { enabled: false } } }, { merge: true }));
    assert.deepEqual(merged, { timezone: "Asia/Shanghai", categories: { marketing: { enabled: false } } });
    assert.deepEqual(await other.evaluate(() => /** @type {any} */ (window).tidings.preferences.get()), merged);
    assert.deepEqual(await one.evaluate(() => /** @type {any} */ (window).tidings.preferences.get()), merged);
    const refused = await two.evaluate(() => /** @type {any} */ (window).tidings.preferences
      .set({ quiet_hours: { start: "9pm", end: "07:00" } }).then(() => null, (e) => [e.code, e.message]));
    assert.equal(refused?.[0], "bad_request");
    assert.match(String(refused?.[1]), /^quiet_hours\.start:/);
    assert.deepEqual(await server.api("GET", "/v1/users/dora/preferences"), merged);
    assert.deepEqual([...one.errors, ...two.errors, ...other.errors], []);
  } finally {
    await laptop.close();
    await phone.close();
  }
});

test("a server restart: the page reconnects and shows what was sent meanwhile exactly once", { skip: missing, ...TIMEOUT }, async () => {
  const device = await browser().newContext();
  try {
    const page = await open(device, "dora");
    await server.publish("demo/restart", { text: "before" });
    const n1 = await server.notify("dora", { title: "Before the restart" });
    await until(async () => (await feed(page, "demo/restart")).length === 1 && (await badge(page)) === "1",
      "live before the restart");

    const hold = await holdTokens(device);
    await server.stop(); // SIGTERM: the server says going away (1001) and exits
    await page.waitForSelector('#status[data-state="connecting"]', { timeout: WAIT });
    await server.start(); // same ports, same data folder
    await server.publish("demo/restart", { text: "during 1" });
    await server.publish("demo/restart", { text: "during 2" });
    const n2 = await server.notify("dora", { title: "During the restart" });
    await until(() => hold.held() > 0, "the page tries to reconnect");
    hold.release();
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 2 * WAIT });
    await until(async () => (await feed(page, "demo/restart")).length === 3 && (await badge(page)) === "2",
      "what was sent meanwhile");
    await server.publish("demo/restart", { text: "after" });
    await until(async () => (await feed(page, "demo/restart")).length === 4, "live after the restart");
    assert.deepEqual(await feed(page, "demo/restart"), ["before", "during 1", "during 2", "after"]);
    assert.deepEqual(await inboxIds(page), [n2, n1]);
    assert.equal(await badge(page), String(await server.unread("dora")));
    assert.deepEqual(page.errors, []);
  } finally {
    await device.close();
  }
});
