// Copy the client's ES modules into the Python package's static folder, where
// the WS edge serves them to the demo page at /client/ (no build step, no CDN).
// The copy is checked in; test/static-copy.test.js fails when it differs from src/.
//
//   node scripts/sync-static.js      (or: npm run sync-static)
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const SRC = join(root, "src");
export const DEST = resolve(root, "../server/tidings/static/client");

mkdirSync(DEST, { recursive: true });
for (const name of readdirSync(DEST)) if (name.endsWith(".js")) rmSync(join(DEST, name));
for (const name of readdirSync(SRC)) {
  if (name.endsWith(".js")) copyFileSync(join(SRC, name), join(DEST, name));
}
console.log(`copied ${SRC} -> ${DEST}`);
