/**
 * Debian's Chromium, headless, driven by playwright-core (no browser download).
 * Launch flags as the machine notes say: without the background-networking
 * flags Chromium tries hosts this closed network refuses. Playwright starts
 * each launch with a fresh, empty profile folder of its own (it refuses a
 * --user-data-dir flag), and each browser context is isolated like a separate
 * profile: two contexts are two devices, two pages of one context two tabs.
 */

import { existsSync } from "node:fs";

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
