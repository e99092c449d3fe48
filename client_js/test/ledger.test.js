// Offset bookkeeping and dedupe: what a client resumes from and what it drops.
import assert from "node:assert/strict";
import { test } from "node:test";

import { BoundedSet, Ledger, isWildcard, matches } from "../src/index.js";
import { MAX_SINCE_TOPICS } from "../src/ledger.js";

test("a message is accepted once per (topic, offset)", () => {
  const l = new Ledger();
  assert.equal(l.acceptMessage({ topic: "news/a", offset: "e:1" }), true);
  assert.equal(l.acceptMessage({ topic: "news/a", offset: "e:1" }), false);
  assert.equal(l.acceptMessage({ topic: "news/b", offset: "e:1" }), true, "same offset, other topic");
  assert.equal(l.acceptMessage({ topic: "news/a", offset: "e:2" }), true);
});

test("a notification is accepted once, by id and by offset", () => {
  const l = new Ledger();
  assert.equal(l.acceptNotification({ id: "n_1", offset: "u:1" }), true);
  assert.equal(l.acceptNotification({ id: "n_1", offset: "u:9" }), false, "same id");
  assert.equal(l.acceptNotification({ id: "n_2", offset: "u:1" }), false, "same offset");
  assert.equal(l.acceptNotification({ id: "n_3", offset: "u:2" }), true);
  assert.equal(l.userOffset, "u:2", "the last accepted offset is the one to resume from");
});

test("read-family events are accepted once per offset", () => {
  const l = new Ledger();
  assert.equal(l.acceptEvent({ offset: "v:1" }), true);
  assert.equal(l.acceptEvent({ offset: "v:1" }), false);
  assert.equal(l.acceptEvent({}), true, "no offset: nothing to dedupe by");
});

test("since: the last offset of an exact topic, {topic: offset} for a wildcard", () => {
  const l = new Ledger();
  l.acceptMessage({ topic: "news/a", offset: "e:1" });
  l.acceptMessage({ topic: "news/a", offset: "e:3" });
  l.acceptMessage({ topic: "news/b", offset: "f:7" });
  l.acceptMessage({ topic: "home/k/temp", offset: "g:2" });
  assert.equal(l.sinceFor("news/a"), "e:3");
  assert.equal(l.sinceFor("news/c"), undefined);
  assert.deepEqual(l.sinceFor("news/+"), { "news/a": "e:3", "news/b": "f:7" });
  assert.deepEqual(l.sinceFor("#"), { "news/a": "e:3", "news/b": "f:7", "home/k/temp": "g:2" });
  assert.equal(l.sinceFor("sport/#"), undefined, "no topic seen: no since (retained come again)");
});

test("a wildcard since names at most the server's 1000 topics, the most recent", () => {
  const l = new Ledger();
  for (let i = 0; i < MAX_SINCE_TOPICS + 5; i++) l.recordTopicOffset(`t/${i}`, `e:${i}`);
  const since = /** @type {Record<string, string>} */ (l.sinceFor("t/+"));
  assert.equal(Object.keys(since).length, MAX_SINCE_TOPICS);
  assert.equal(since["t/4"], undefined);
  assert.equal(since[`t/${MAX_SINCE_TOPICS + 4}`], `e:${MAX_SINCE_TOPICS + 4}`);
});

test("merge fills in offsets another tab knew, never overwrites", () => {
  const l = new Ledger();
  l.recordTopicOffset("a/x", "e:5");
  l.merge("a/+", { "a/x": "e:1", "a/y": "e:2" });
  l.merge("b", "e:9");
  assert.equal(l.topicOffsets.get("a/x"), "e:5");
  assert.equal(l.topicOffsets.get("a/y"), "e:2");
  assert.equal(l.sinceFor("b"), "e:9");
});

test("the dedupe sets are bounded: the oldest keys go first", () => {
  const s = new BoundedSet(3);
  for (const k of ["a", "b", "c", "d"]) assert.equal(s.add(k), true);
  assert.equal(s.size, 3);
  assert.equal(s.has("a"), false);
  assert.equal(s.has("d"), true);
  const l = new Ledger({ seenLimit: 2, topicLimit: 2 });
  l.acceptMessage({ topic: "t/1", offset: "1" });
  l.acceptMessage({ topic: "t/2", offset: "2" });
  l.acceptMessage({ topic: "t/3", offset: "3" });
  assert.equal(l.topicOffsets.size, 2);
  assert.equal(l.topicOffsets.has("t/1"), false);
});

test("topic filters match as the server's do", () => {
  const cases = [
    ["news/+", "news/a", true], ["news/+", "news/a/b", false], ["news/#", "news", true],
    ["news/#", "news/a/b", true], ["#", "$SYS/x", false], ["+/x", "$SYS/x", false],
    ["$SYS/#", "$SYS/x", true], ["a/+/c", "a/b/c", true], ["a/b", "a/b", true], ["a/b", "a/c", false],
    ["+", "a", true], ["+", "a/b", false], ["a/+", "a", false],
  ];
  for (const [f, t, want] of cases) assert.equal(matches(/** @type {string} */ (f), /** @type {string} */ (t)), want, `${f} ~ ${t}`);
  assert.equal(isWildcard("a/+/c"), true);
  assert.equal(isWildcard("a/#"), true);
  assert.equal(isWildcard("a/b+"), false);
});
