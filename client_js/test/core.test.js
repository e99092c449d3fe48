// The parts of the client that need no server: the bounded queue, typed
// errors, the inbox state and the codecs.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as msgpack from "@msgpack/msgpack";

import { Core, InboxState, Tidings, TidingsError, tokenSubject } from "../src/index.js";
import { makeCodec } from "../src/core.js";

test("commands made while disconnected are queued up to queueLimit, then refused", async () => {
  const core = new Core({ url: "ws://127.0.0.1:9/ws", token: "t", queueLimit: 3 });
  const queued = [1, 2, 3].map((i) => core.request("publish", { topic: "a", data: i }));
  assert.equal(core.queue.length, 3);
  await assert.rejects(core.request("ping"), (e) => e instanceof TidingsError && e.code === "queue_full");
  assert.equal(core.queue.length, 3, "the refused command is not kept");
  core.close();
  for (const p of queued) {
    await assert.rejects(p, (e) => e instanceof TidingsError && e.code === "closed");
  }
  await assert.rejects(core.request("ping"), (e) => e instanceof TidingsError && e.code === "closed");
});

test("TidingsError carries the server's code, message and op, and survives cloning", () => {
  const e = TidingsError.fromReply({ code: "forbidden", message: "not allowed to publish to 'x'" }, "publish");
  assert.ok(e instanceof Error);
  assert.equal(e.name, "TidingsError");
  assert.equal(e.code, "forbidden");
  assert.equal(e.op, "publish");
  assert.equal(e.message, "not allowed to publish to 'x'");
  const back = TidingsError.fromJSON(structuredClone(e.toJSON()));
  assert.deepEqual([back.code, back.message, back.op], [e.code, e.message, e.op]);
  assert.equal(TidingsError.fromReply(undefined).code, "internal", "a malformed error reply still has a code");
});

test("the Tidings constructor wants a token", () => {
  assert.throws(() => new Tidings("ws://x/ws", /** @type {any} */ ({})), TypeError);
});

test("inbox state: pushes on top, the unread count is the server's, changes by id or all", () => {
  const s = new InboxState();
  s.applyPage({ items: [{ id: "b", title: "B", ts: 2, read: false }, { id: "a", title: "A", ts: 1, read: true }],
    next: "cur" }, false);
  s.unread = 1;
  s.applyNotification({ id: "c", title: "C", ts: 3, unread: 2 });
  assert.deepEqual(s.items.map((i) => i.id), ["c", "b", "a"]);
  assert.equal(s.unread, 2, "from the push");
  assert.deepEqual(s.applyChange("read", ["c"]), ["c"]);
  assert.equal(s.items[0].read, true);
  assert.deepEqual(s.applyChange("read", null), ["b"], "read all dismisses what was unread");
  s.applyChange("unread", ["a"]);
  assert.equal(s.items[2].read, false);
  assert.deepEqual(s.applyChange("archive", ["b"]), ["b"]);
  assert.deepEqual(s.items.map((i) => i.id), ["c", "a"]);
  s.applyNotification({ id: "d", title: "D", ts: 4, unread: 3, replaces: ["c"] });
  assert.deepEqual(s.items.map((i) => i.id), ["d", "a"], "a collapsed notification replaces");
  s.applyPage({ items: [{ id: "z", ts: 0 }], next: null }, true);
  assert.deepEqual(s.items.map((i) => i.id), ["d", "a", "z"], "an older page is appended");
  assert.equal(s.next, null);
  const copy = structuredClone(s.snapshot());
  const t = new InboxState();
  t.restore(copy);
  assert.deepEqual(t.snapshot(), s.snapshot());
});

test("inbox state: pruned and expired notifications leave the list", () => {
  const s = new InboxState();
  s.applyPage({ items: [{ id: "b", ts: 2, read: false }, { id: "a", ts: 1, read: true }],
    next: null }, false);
  s.applyNotification({ id: "c", title: "C", ts: 3, unread: 2, pruned: ["a"] });
  assert.deepEqual(s.items.map((i) => i.id), ["c", "b"], "pruned for the inbox cap");
  assert.deepEqual(s.applyChange("expire", ["b"]), ["b"]);
  assert.deepEqual(s.items.map((i) => i.id), ["c"], "expired (its ttl)");
});

test("a reloaded first page keeps newer pushed items on top", () => {
  const s = new InboxState();
  s.applyNotification({ id: "new", ts: 10, unread: 1 });
  s.applyPage({ items: [{ id: "old", ts: 5 }], next: null }, false);
  assert.deepEqual(s.items.map((i) => i.id), ["new", "old"]);
});

test("codecs: JSON text frames, msgpack binary frames through @msgpack/msgpack", () => {
  const json = makeCodec("json", undefined);
  assert.equal(json.protocol, "tidings.v1.json");
  assert.deepEqual(json.decode(json.encode({ op: "ping", id: 1 })), { op: "ping", id: 1 });
  const mp = makeCodec("msgpack", msgpack);
  assert.equal(mp.protocol, "tidings.v1.msgpack");
  const bytes = mp.encode({ op: "publish", id: 2, data: new Uint8Array([1, 2]) });
  assert.deepEqual(mp.decode(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)),
    { op: "publish", id: 2, data: new Uint8Array([1, 2]) });
  assert.throws(() => makeCodec("msgpack", undefined), TypeError);
});

test("the shared connection's key is the token's user", () => {
  const payload = Buffer.from(JSON.stringify({ sub: "zoë", exp: 1 })).toString("base64url");
  assert.equal(tokenSubject(`h.${payload}.s`), "zoë");
  assert.equal(tokenSubject("not a jwt"), null);
});
