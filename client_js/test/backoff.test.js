// Reconnect delays: exponential backoff with full jitter, with a fake random
// source, alone and as the Core schedules them against a refused port.
import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";

import { backoffDelay, Core } from "../src/index.js";
import { freePort } from "./helpers/server.js";

test("the cap doubles from minBackoff up to maxBackoff", () => {
  const top = () => 0.999999;
  const caps = [0, 1, 2, 3, 4, 5, 6, 10, 60].map((a) => backoffDelay(a, 500, 30000, top));
  const expected = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
  caps.forEach((c, i) => assert.ok(Math.abs(c - expected[i] * 0.999999) < 1e-6, `attempt ${i}: ${c}`));
});

test("full jitter: a draw r gives r times the cap, so 0 is possible and the cap is not", () => {
  assert.equal(backoffDelay(3, 500, 30000, () => 0), 0);
  assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 12, 100, 5000); // Math.random
    assert.ok(d >= 0 && d < Math.min(5000, 100 * 2 ** (i % 12)), `attempt ${i % 12}: ${d}`);
  }
});

test("a Core that cannot reach the server retries with growing jittered delays", async () => {
  const port = await freePort(); // nothing listens here: every attempt is refused
  /** @type {number[]} */
  const delays = [];
  const draws = [0.5, 0.25, 1 - 1e-9, 0.5, 0.5, 0.5];
  let i = 0;
  /** @type {() => void} */
  let fire = () => {};
  const core = new Core({
    url: `ws://127.0.0.1:${port}/ws`, token: "t", WebSocket, minBackoff: 100, maxBackoff: 1000,
    random: () => draws[i++ % draws.length],
    timers: { setTimeout: (fn, ms) => { delays.push(ms); fire = fn; return 0; }, clearTimeout: () => {} },
  });
  /** @type {any[]} */
  const closes = [];
  core.on("disconnected", (d) => closes.push(d));
  core.start();
  for (let n = 1; n <= 6; n++) {
    while (delays.length < n) await new Promise((r) => setTimeout(r, 5));
    fire(); // the fake clock runs the timer at once
  }
  core.close();
  assert.deepEqual(delays, [50, 50, 400 * (1 - 1e-9), 400, 500, 500]);
  assert.ok(closes.slice(0, 6).every((d) => d.willRetry === true && d.code === 1006));
});
