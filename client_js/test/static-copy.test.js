// The demo page loads the client from the Python package's static folder
// (server/tidings/static/client/, served at /client/): that copy must be
// exactly client_js/src. Refresh it with `npm run sync-static`.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(root, "src");
const copy = resolve(root, "../server/tidings/static/client");

test("server/tidings/static/client is identical to client_js/src (npm run sync-static)", () => {
  const names = (/** @type {string} */ dir) => readdirSync(dir).filter((n) => n.endsWith(".js")).sort();
  assert.deepEqual(names(copy), names(src), "the same files");
  for (const name of names(src)) {
    assert.ok(readFileSync(join(copy, name)).equals(readFileSync(join(src, name))),
      `${name} differs: run npm run sync-static in client_js`);
  }
});
