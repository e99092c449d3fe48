// The client against a real server (`python -m tidings.cli serve`, dev mode,
// free loopback ports, a temp data folder), in Node with the ws package.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import * as msgpack from "@msgpack/msgpack";
import WebSocket from "ws";

import { Tidings, TidingsError } from "../../src/index.js";
import { TestServer, until, WAIT } from "../helpers/server.js";

const HISTORY_SIZE = 40; // what each topic keeps for recovery
const server = new TestServer({ name: "js-it", env: {
  TIDINGS_HISTORY_SIZE: String(HISTORY_SIZE),
  // room for the read-all test's 1100 unread (notify.max_inbox is 1000 by default)
  TIDINGS_NOTIFY_MAX_INBOX: "2000",
} });
/** @type {Tidings[]} */
const clients = [];

before(() => server.start());
after(async () => {
  for (const c of clients) c.close();
  await server.dispose();
});

/**
 * @param {string} user
 * @param {Partial<import("../../src/tidings.js").TidingsOptions>} [options]
 */
function client(user, options = {}) {
  const t = new Tidings(server.wsUrl, { token: () => server.devToken(user), WebSocket,
    minBackoff: 50, maxBackoff: 500, ...options });
  clients.push(t);
  return t;
}

/** Record every event a client emits. */
function record(/** @type {Tidings} */ t) {
  /** @type {Record<string, any[]>} */
  const seen = {};
  for (const name of ["connecting", "connected", "disconnected", "notification", "message", "read",
    "dismiss", "incomplete", "error"]) {
    seen[name] = [];
    t.on(name, (d) => seen[name].push(d));
  }
  return seen;
}

test("subscribe, publish and receive; replies carry offsets", async () => {
  const a = client("ann", { device: "ann-laptop" });
  await a.connect();
  assert.equal(a.role, "solo", "Node has no Web Locks: one connection per client");
  assert.deepEqual(a.session, { user: "ann", device: "ann-laptop", node: "js-it" });
  /** @type {any[]} */
  const got = [];
  const reply = await a.subscribe("demo/it/+", (m) => got.push(m));
  assert.equal(reply.complete, true);
  const { offset } = await a.publish("demo/it/x", { n: 1 });
  assert.equal(typeof offset, "string");
  await server.publish("demo/it/y", { n: 2 });
  await until(() => got.length === 2, "two messages");
  assert.deepEqual(got.map((m) => [m.topic, m.data.n]), [["demo/it/x", 1], ["demo/it/y", 2]]);
  assert.equal(got[0].offset, offset);
  await a.unsubscribe("demo/it/+");
  await server.publish("demo/it/z", { n: 3 });
  await a.ping(); // a round trip after the publish: a message would have come first
  assert.equal(got.length, 2, "nothing after unsubscribe");
});

test("errors are TidingsErrors with the server's code", async () => {
  const a = client("ben");
  await a.connect();
  await assert.rejects(a.publish("private/x", 1),
    (e) => e instanceof TidingsError && e.code === "forbidden" && e.op === "publish");
  await assert.rejects(a.subscribe("bad/#/x", () => {}),
    (e) => e instanceof TidingsError && e.code === "bad_topic");
  await assert.rejects(a.subscribe("users/someone-else/#", () => {}),
    (e) => e instanceof TidingsError && e.code === "forbidden");
  await assert.rejects(a.track("n_x", "exploded"),
    (e) => e instanceof TidingsError && e.code === "bad_request");
});

test("inbox: notifications, the server's unread count, read on one device dismisses on the other", async () => {
  const phone = client("cat", { device: "phone" });
  const laptop = client("cat", { device: "laptop" });
  const onLaptop = record(laptop);
  await Promise.all([phone.connect(), laptop.connect()]);
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await server.notify("cat", { title: `t${i}`, body: "b" }));
  await until(() => phone.inbox.unread === 3 && laptop.inbox.unread === 3, "unread 3 on both");
  assert.deepEqual(laptop.inbox.items.map((i) => i.id), [...ids].reverse(), "newest first");
  assert.equal(onLaptop.notification.length, 3);
  const devices = (await phone.devices()).map((d) => d.device).sort();
  assert.deepEqual(devices, ["laptop", "phone"]);

  const r = await phone.inbox.read(ids[0]);
  assert.deepEqual(r.changed, [ids[0]]);
  await until(() => laptop.inbox.unread === 2, "laptop badge drops");
  await until(() => onLaptop.dismiss.length === 1, "a dismiss on the laptop");
  assert.deepEqual(onLaptop.dismiss[0].ids, [ids[0]]);
  assert.equal(onLaptop.dismiss[0].device, "phone");
  assert.equal(laptop.inbox.items.find((i) => i.id === ids[0])?.read, true);

  await laptop.inbox.archive(ids[1]);
  await until(() => phone.inbox.items.length === 2 && phone.inbox.unread === 1, "archived everywhere");
  await phone.inbox.readAll();
  await until(() => laptop.inbox.unread === 0 && phone.inbox.unread === 0, "all read");
  assert.equal(await server.unread("cat"), 0);
  assert.equal((await phone.track(ids[0], "opened")).recorded, true);
  assert.equal((await phone.track(ids[0], "opened")).recorded, false);
});

test("preferences: get, set, merge; a change reaches the user's other device; bad input names the field", async () => {
  const phone = client("fay", { device: "phone" });
  const laptop = client("fay", { device: "laptop" });
  await Promise.all([phone.connect(), laptop.connect()]);
  assert.deepEqual(await phone.preferences.get(), {});
  /** @type {any[]} */
  const heard = [];
  await laptop.subscribe("users/fay/preferences", (m) => heard.push(m.data));
  const doc = { timezone: "Europe/Paris", quiet_hours: { start: "22:00", end: "07:00" } };
  assert.deepEqual(await phone.preferences.set(doc), doc);
  assert.deepEqual(await phone.preferences.set({ locale: "fr", quiet_hours: null }, { merge: true }),
    { timezone: "Europe/Paris", locale: "fr" });
  await until(() => heard.length === 2, "both changes on the laptop");
  assert.deepEqual(heard[1], { timezone: "Europe/Paris", locale: "fr" });
  assert.deepEqual(await phone.preferences.set({ locale: "de" }), { locale: "de" }, "replaced");
  assert.deepEqual(await laptop.preferences.get(), { locale: "de" });
  await assert.rejects(phone.preferences.set({ timezone: "Mars/Base" }),
    (e) => e instanceof TidingsError && e.code === "bad_request" && e.message.startsWith("timezone:"));
  await assert.rejects(phone.preferences.set({ caps: { marketing: { per_day: 99 } } }, { merge: true }),
    (e) => e instanceof TidingsError && e.code === "bad_request" && e.message.startsWith("caps.marketing.per_day"));
  assert.deepEqual(await server.api("GET", "/v1/users/fay/preferences"), { locale: "de" });
});

test("inbox pages: loadMore fetches older items until the end", async () => {
  for (let i = 0; i < 25; i++) await server.notify("dan", { title: `n${i}` });
  const a = client("dan", { pageSize: 10 });
  await a.connect();
  await until(() => a.inbox.items.length === 10, "the first page");
  assert.equal(a.inbox.unread, 25);
  assert.equal(a.inbox.hasMore, true);
  assert.equal((await a.inbox.loadMore()).length, 10);
  assert.equal((await a.inbox.loadMore()).length, 5);
  assert.equal(a.inbox.hasMore, false);
  assert.deepEqual(await a.inbox.loadMore(), []);
  const titles = a.inbox.items.map((i) => i.title);
  assert.equal(new Set(titles).size, 25);
  assert.equal(titles[0], "n24");
});

test("commands made while disconnected are sent after the connect", async () => {
  const a = client("eve", { autoConnect: false });
  /** @type {any[]} */
  const got = [];
  const sub = a.subscribe("demo/queue", (m) => got.push(m.data));
  const pub = a.publish("demo/queue", "queued");
  assert.equal(a.state, "idle");
  await a.connect();
  await sub;
  assert.equal(typeof (await pub).offset, "string");
  await until(() => got.length === 1, "the queued publish arrives");
  assert.deepEqual(got, ["queued"]);
});

test("a gap in the connection: recovery by offset, nothing twice, the badge stays the server's", async () => {
  // The token callback is the gate: while it is closed the client cannot reconnect,
  // so what is sent meanwhile can only arrive through recovery.
  /** @type {Promise<void> | null} */
  let gate = null;
  let open = () => {};
  const a = client("fay", {
    token: async () => { if (gate) await gate; return server.devToken("fay"); },
  });
  const seen = record(a);
  /** @type {any[]} */
  const exact = [];
  /** @type {any[]} */
  const wild = [];
  await a.connect();
  await a.subscribe("demo/gap", (m) => exact.push(m.data));
  await a.subscribe("news/gap/+", (m) => wild.push(m.data));
  await server.publish("demo/gap", 1);
  await server.publish("news/gap/a", "a1");
  const n1 = await server.notify("fay", { title: "before" });
  await until(() => exact.length === 1 && wild.length === 1 && a.inbox.unread === 1, "live before the gap");

  gate = new Promise((r) => { open = r; });
  await server.stop();
  await until(() => seen.disconnected.length >= 1, "the client saw the server go");
  assert.equal(seen.disconnected[0].code, 1001, "a shutdown says going away");
  assert.equal(seen.disconnected[0].willRetry, true);
  await server.start();
  await server.publish("demo/gap", 2);
  await server.publish("demo/gap", 3);
  await server.publish("news/gap/a", "a2");
  const n2 = await server.notify("fay", { title: "during" });
  gate = null;
  open();
  await until(() => exact.length === 3 && wild.length === 2 && a.inbox.unread === 2, "recovered after the gap");
  await server.publish("demo/gap", 4);
  await until(() => exact.length === 4, "live after the gap");
  await a.ping();
  assert.deepEqual(exact, [1, 2, 3, 4]);
  assert.deepEqual(wild, ["a1", "a2"]);
  const notified = seen.notification.map((n) => n.id);
  assert.deepEqual(notified, [n1, n2], "each notification once");
  assert.equal(seen.notification[1].recovered, true);
  assert.equal(a.inbox.unread, await server.unread("fay"));
  assert.deepEqual(a.inbox.items.map((i) => i.id), [n2, n1]);
  assert.equal(seen.incomplete.length, 0);
});

test("a refused token: no retry with the same token, a retry once the callback has a new one", async () => {
  const bad = client("gil", { token: "not-a-jwt" });
  const seen = record(bad);
  await assert.rejects(bad.connect(), (e) => e instanceof TidingsError && e.code === "unauthorized");
  const events = JSON.stringify(seen);
  assert.equal(seen.disconnected.at(-1).code, 4001, events);
  assert.equal(seen.disconnected.at(-1).willRetry, false);
  assert.equal(seen.error[0].code, "token_invalid", events);
  assert.equal(seen.connecting.length, 1, `one attempt only: ${events}`);

  let calls = 0;
  const fresh = client("gil", { token: async () => (++calls === 1 ? "expired.or.bad" : server.devToken("gil")) });
  const seen2 = record(fresh);
  await fresh.connect();
  assert.equal(calls, 2, `the callback was asked again after 4001: ${JSON.stringify(seen2)}`);
  assert.equal(seen2.disconnected[0].willRetry, true, JSON.stringify(seen2));
  assert.equal(fresh.session?.user, "gil");
});

test("msgpack encoding through @msgpack/msgpack", async () => {
  const a = client("hal", { encoding: "msgpack", msgpack });
  await a.connect();
  /** @type {any[]} */
  const got = [];
  await a.subscribe("demo/mp", (m) => got.push(m.data));
  await a.publish("demo/mp", { deep: [1, "two", { three: 3 }] });
  await a.publish("demo/mp", new Uint8Array([0, 255, 7]));
  await until(() => got.length === 2, "both messages");
  assert.deepEqual(got[0], { deep: [1, "two", { three: 3 }] });
  assert.deepEqual([...got[1]], [0, 255, 7], "raw bytes stay bytes");
  await server.notify("hal", { title: "mp" });
  await until(() => a.inbox.unread === 1, "a notification over msgpack");
});

test("a publish whose reply is lost fails with connection_lost; idempotent commands are sent again", async () => {
  const a = client("ida");
  await a.connect();
  const core = /** @type {any} */ (a)._core;
  // Cut the socket right after the frames left: their replies can never come.
  const pub = a.publish("demo/lost", 1);
  const ping = a.ping();
  core.ws.terminate();
  await assert.rejects(pub, (e) => e instanceof TidingsError && e.code === "connection_lost");
  await ping; // resent after the reconnect
  assert.equal(a.state, "connected");
}, { timeout: 4 * WAIT });

test("history trimmed while away: recovery is partial and says so (incomplete)", async () => {
  /** @type {Promise<void> | null} */
  let gate = null;
  let open = () => {};
  const a = client("ivy", {
    token: async () => { if (gate) await gate; return server.devToken("ivy"); },
  });
  const seen = record(a);
  /** @type {any[]} */
  const got = [];
  await a.connect();
  await a.subscribe("demo/trim", (m) => got.push(m.data));
  await server.publish("demo/trim", -1);
  await until(() => got.length === 1, "live before the gap");
  gate = new Promise((r) => { open = r; });
  /** @type {any} */ (a)._core.ws.terminate(); // a network loss
  await until(() => seen.disconnected.length === 1, "the loss is seen");
  const batch = Array.from({ length: HISTORY_SIZE + 10 }, (_, i) => ({ topic: "demo/trim", data: i }));
  await server.api("POST", "/v1/publish/batch", { messages: batch });
  gate = null;
  open();
  await until(() => seen.incomplete.length === 1, "an incomplete event");
  assert.equal(seen.incomplete[0].scope, "topic");
  assert.equal(seen.incomplete[0].topic, "demo/trim");
  await until(() => got.length === 1 + HISTORY_SIZE, "what history still had");
  assert.deepEqual(got.slice(1), batch.slice(-HISTORY_SIZE).map((m) => m.data), "the newest, in order");
});

test("a recovery bigger than one reply is followed to the end (next), in order", async () => {
  /** @type {Promise<void> | null} */
  let gate = null;
  let open = () => {};
  const a = client("kim", {
    token: async () => { if (gate) await gate; return server.devToken("kim"); },
  });
  const seen = record(a);
  /** @type {any[]} */
  const got = [];
  await a.connect();
  await a.subscribe("demo/paged", (m) => got.push(m.data));
  await server.publish("demo/paged", { n: -1 });
  await until(() => got.length === 1, "live before the loss");
  gate = new Promise((r) => { open = r; });
  /** @type {any} */ (a)._core.ws.terminate();
  await until(() => seen.disconnected.length === 1, "the loss is seen");
  // 40 x 16 KiB: more than one reply holds (limits.max_reply_size, 256 KiB)
  const pad = "p".repeat(16 * 1024);
  const batch = Array.from({ length: HISTORY_SIZE }, (_, i) => ({ topic: "demo/paged", data: { n: i, pad } }));
  await server.api("POST", "/v1/publish/batch", { messages: batch });
  gate = null;
  open();
  await until(() => got.length === 1 + HISTORY_SIZE, "every missed message", 4 * WAIT);
  assert.deepEqual(got.slice(1).map((d) => d.n), batch.map((m) => m.data.n), "in order, once");
  assert.equal(seen.incomplete.length, 0, "nothing was lost: paging is not a gap");
}, { timeout: 8 * WAIT });

test("live notifications are reported delivered, a batch a second, once per user", async () => {
  const phone = client("dee", { device: "dee-phone" });
  const laptop = client("dee", { device: "dee-laptop" });
  const quiet = client("dee", { device: "dee-watch", reportDelivered: false });
  await Promise.all([phone.connect(), laptop.connect(), quiet.connect()]);
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await server.notify("dee", { title: `d${i}` }));
  const delivered = async (/** @type {string} */ id) =>
    (await server.stats(id)).delivered;
  await until(async () => (await Promise.all(ids.map(delivered))).every((n) => n === 1),
    "each counted delivered once, though two devices reported it");
  const other = client("quinn", { device: "quinn-watch", reportDelivered: false });
  await other.connect();
  const unreported = await server.notify("quinn", { title: "not reported" });
  await until(() => other.inbox.items.some((i) => i.id === unreported), "quinn's notification");
  // quinn's only device does not report: a report from a tab that does would come within
  // a second; this one stays at 0 while dee's next notification (sent after) is counted
  const next = await server.notify("dee", { title: "after" });
  await until(async () => (await delivered(next)) === 1, "dee's next one counted");
  assert.equal(await delivered(unreported), 0);
});

test("read all on more than 1000 unread: the bounded event (all, no ids) reads everything", async () => {
  const phone = client("lee", { device: "phone" });
  const laptop = client("lee", { device: "laptop" });
  await Promise.all([phone.connect(), laptop.connect()]);
  for (let i = 0; i < 1100; i += 100) {
    await Promise.all(Array.from({ length: 100 }, (_, j) => server.notify("lee", { title: `n${i + j}` })));
  }
  await until(() => phone.inbox.unread === 1100 && laptop.inbox.unread === 1100, "1100 unread on both",
    4 * WAIT);
  /** @type {any[]} */
  const events = [];
  laptop.on("read", (ev) => events.push(ev));
  const reply = await phone.inbox.readAll();
  assert.equal(reply.all, true);
  assert.equal(reply.changed, undefined, "over 1000: the reply lists no ids");
  assert.ok(phone.inbox.items.every((i) => i.read), "the reply alone marks the loaded items read");
  await until(() => events.length === 1, "the read event on the other device");
  assert.equal(events[0].all, true);
  assert.equal(events[0].ids, undefined, "over 1000: the event lists no ids");
  await until(() => laptop.inbox.unread === 0, "the other device's badge");
  assert.ok(laptop.inbox.items.every((i) => i.read), "and its loaded items read");
}, { timeout: 8 * WAIT });

test("push: the VAPID key from the connect reply, and registering this device's endpoint", async () => {
  const t = client("pushy", { device: "pushy-phone" });
  await t.connect();
  const key = await t.push.vapidKey();
  const api = await server.api("GET", "/v1/push/vapid-public-key");
  assert.equal(key, api.key);
  const endpoints = await t.push.register({ kind: "fcm", token: "fcm:token-1" });
  assert.deepEqual(endpoints.map((/** @type {any} */ e) => [e.device, e.kind, e.token]),
    [["pushy-phone", "fcm", "fcm:token-1"]]);
  const listed = await server.api("GET", "/v1/users/pushy/push-endpoints");
  assert.equal(listed.endpoints.length, 1);
  await assert.rejects(t.push.register({ kind: "apns", token: "zz", topic: "x" }),
    (/** @type {any} */ e) => e instanceof TidingsError && e.code === "bad_request");
  assert.equal(await t.push.unregister(), 1);
  assert.deepEqual((await server.api("GET", "/v1/users/pushy/push-endpoints")).endpoints, []);
  assert.equal(t.push.supported, false); // Node has no service workers: enable() would refuse
  await assert.rejects(t.push.enable(), (/** @type {any} */ e) => e.code === "unsupported");
});

test("a notification the user's quiet hours keep silent moves the badge and the list, shows nothing", async () => {
  const t = client("quiet", { device: "quiet-phone" });
  const seen = record(t);
  await t.connect();
  await t.inbox.loadMore();
  // quiet hours from an hour ago to an hour from now (UTC; across midnight when
  // it is near), and marketing is silent in quiet hours
  const now = new Date();
  const hhmm = (/** @type {Date} */ d) =>
    `${String(d.getUTCHours()).padStart(2, "0")}:${String(d.getUTCMinutes()).padStart(2, "0")}`;
  const start = new Date(now.getTime() - 60 * 60 * 1000); // an hour ago, UTC
  const end = new Date(now.getTime() + 60 * 60 * 1000); // in an hour
  await server.api("PUT", "/v1/users/quiet/preferences",
    { timezone: "UTC", quiet_hours: { start: hhmm(start), end: hhmm(end) } });
  const id = await server.notify("quiet", { title: "sale", category: "marketing" });
  await until(() => t.inbox.unread === 1, "the badge takes the server's count");
  await until(() => t.inbox.items.some((i) => i.id === id), "the loaded list holds it");
  assert.equal(seen.notification.length, 0); // nothing to show
  assert.equal(await server.unread("quiet"), 1);
});
