/**
 * Debian's Chromium, headless, driven by playwright-core (no browser download).
 * Launch flags as the machine notes say: without the background-networking
 * flags Chromium tries hosts this closed network refuses. Playwright starts
 * each launch with a fresh, empty profile folder of its own (it refuses a
 * --user-data-dir flag), and each browser context is isolated like a separate
 * profile: two contexts are two devices, two pages of one context two tabs.
 */

import { existsSync } from "node:fs";
import { after, before } from "node:test";

import { TestServer } from "./server.js";

export const CHROMIUM = process.env.TIDINGS_CHROMIUM || "/usr/bin/chromium";

/** Under CI a missing browser fails the run; elsewhere the browser tests skip. */
export function browserMissing() {
  if (existsSync(CHROMIUM)) return false;
  if (process.env.CI === "true" || process.env.CI === "1") {
    throw new Error(`${CHROMIUM} is missing under CI (scripts/test.sh installs the chromium package)`);
  }
  return `${CHROMIUM} is missing (apt-get install -y chromium)`;
}

/**
 * @returns {Promise<{browser: import("playwright-core").Browser, close: () => Promise<void>}>}
 */
export async function launch() {
  const { chromium } = await import("playwright-core");
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  return {
    browser,
    close: () => browser.close(),
  };
}

/**
 * One browser test file's set-up: a real server of its own and a Chromium,
 * started before the file's tests and stopped after them. `missing` is the
 * reason to skip (never under CI: browserMissing throws there).
 * @param {string} name the server's node name
 * @returns {{missing: string | false, server: import("./server.js").TestServer,
 *   browser: () => import("playwright-core").Browser}}
 */
export function browserSuite(name) {
  const missing = browserMissing();
  const server = new TestServer({ name });
  /** @type {Awaited<ReturnType<typeof launch>> | null} */
  let chromium = null;
  before(async () => {
    if (missing) return;
    await server.start();
    chromium = await launch();
  });
  after(async () => {
    await chromium?.close();
    await server.dispose();
  });
  return {
    missing,
    server,
    browser: () => /** @type {any} */ (chromium).browser,
  };
}

/**
 * Open the demo page as `user` in `context` (a browser context: one device)
 * and wait until it is live; `errors` collects the page's uncaught errors.
 * @param {import("./server.js").TestServer} server
 * @param {import("playwright-core").BrowserContext} context
 * @param {string} user
 * @param {number} timeout
 */
export async function openDemo(server, context, user, timeout) {
  const page = await context.newPage();
  /** @type {string[]} */
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`${server.pageUrl}/?user=${encodeURIComponent(user)}`);
  await page.waitForSelector('#status[data-state="connected"]', { timeout });
  return Object.assign(page, { errors });
}
