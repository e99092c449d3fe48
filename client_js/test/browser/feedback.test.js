// tidings.inbox.feedback() in a real browser (Debian's Chromium, headless,
// driven by playwright-core) against a real server: from the leader tab and
// from a follower tab (through the leader's connection), counted once per
// user and notification, with a bad reason refused naming the field.
import assert from "node:assert/strict";
import { test } from "node:test";

import { browserSuite, openDemo } from "../helpers/browser.js";
import { until, WAIT } from "../helpers/server.js";

const { missing, server, browser } = browserSuite("js-feedback");

const TIMEOUT = { timeout: 12 * WAIT };

/**
 * @param {import("playwright-core").BrowserContext} context
 * @param {string} user
 */
const open = (context, user) => openDemo(server, context, user, 2 * WAIT);

/**
 * `tidings.inbox.feedback(...)` in `page`: its reply, or `[code, message]` if refused.
 * @param {import("playwright-core").Page} page
 * @param {any[]} args
 */
const feedback = (page, args) => page.evaluate((a) => /** @type {any} */ (window).tidings.inbox
  .feedback(...a).then((r) => r, (e) => [e.code, e.message]), args);

test("feedback from the leader and a follower tab is counted once per notification", { skip: missing, ...TIMEOUT }, async () => {
  await until(async () => (await server.wsConnections()) === 0, "no connection left from other tests");
  const device = await browser().newContext();
  try {
    const one = await open(device, "erin");
    const two = await open(device, "erin");
    assert.equal(await two.evaluate(() => /** @type {any} */ (window).tidings.role), "follower");
    const ad = await server.notify("erin", { title: "Sale!", category: "marketing" });
    const news = await server.notify("erin", { title: "Hello", category: "social" });

    assert.deepEqual(await feedback(one, [ad, "too_many", "three a day is a lot"]), { recorded: true });
    assert.deepEqual(await feedback(two, [ad, "other"]), { recorded: false }, "the first wins");
    assert.deepEqual(await feedback(two, [news, "wrong_time"]), { recorded: true });
    assert.deepEqual(await feedback(one, ["n_not_mine", "other"]), { recorded: false });

    const refused = await feedback(two, [news, "boring"]);
    assert.equal(refused[0], "bad_request");
    assert.match(String(refused[1]), /^reason must be one of/);
    const long = await feedback(one, [news, "other", "x".repeat(501)]);
    assert.equal(long[0], "bad_request");
    assert.match(String(long[1]), /^comment/);

    const adStats = await server.stats(ad);
    assert.equal(adStats.feedback, 1);
    assert.deepEqual(adStats.feedback_reasons, { not_interested: 0, too_many: 1, wrong_time: 0, other: 0 });
    assert.equal((await server.stats(news)).feedback_reasons.wrong_time, 1);
    // too_many halved erin's marketing cap (the operator's 2 an hour, 6 a day)
    assert.deepEqual(await server.api("GET", "/v1/users/erin/preferences"),
      { caps: { marketing: { per_hour: 1, per_day: 3 } } });
    await until(async () => JSON.stringify(await two.evaluate(() => /** @type {any} */ (window)
      .tidings.preferences.get())) === JSON.stringify({ caps: { marketing: { per_hour: 1, per_day: 3 } } }),
    "the halved cap in the client's preferences");
    assert.deepEqual([...one.errors, ...two.errors], []);
  } finally {
    await device.close();
  }
});
