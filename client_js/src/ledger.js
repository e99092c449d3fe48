/**
 * What a client has seen: the offsets to resume from and the keys that keep
 * a push from being shown twice.
 *
 * Offsets are opaque strings (docs/protocol.md, "Offsets and recovery"): the
 * ledger only stores and echoes them, never compares or parses them. So
 * duplicates are found by equality: a message by (topic, offset), a
 * notification by id and by offset, in bounded sets (the oldest keys are
 * forgotten first).
 * @module
 */

import { isWildcard, matches } from "./topics.js";

/** The server reads at most this many topics from one `since` object. */
export const MAX_SINCE_TOPICS = 100; // the server's limits.max_since_topics default

/** A set that forgets its oldest keys beyond `limit`. */
export class BoundedSet {
  /** @type {Set<string>} */
  #keys = new Set();

  /** @param {number} limit */
  constructor(limit) {
    this.limit = limit;
  }

  /** @param {string} key */
  has(key) {
    return this.#keys.has(key);
  }

  /**
   * @param {string} key
   * @returns {boolean} true when `key` is new
   */
  add(key) {
    if (this.#keys.has(key)) return false;
    this.#keys.add(key);
    if (this.#keys.size > this.limit) {
      const oldest = this.#keys.values().next().value;
      if (oldest !== undefined) this.#keys.delete(oldest);
    }
    return true;
  }

  get size() {
    return this.#keys.size;
  }
}

export class Ledger {
  /** @param {{seenLimit?: number, topicLimit?: number}} [options] */
  constructor(options = {}) {
    /** @type {string | null} the last offset of the user's notification stream */
    this.userOffset = null;
    /** @type {Map<string, string>} topic -> last offset, least recently updated first */
    this.topicOffsets = new Map();
    this.topicLimit = options.topicLimit ?? 10000;
    const seen = options.seenLimit ?? 5000;
    this.seenMessages = new BoundedSet(seen);
    this.seenNotifications = new BoundedSet(seen);
    this.seenEvents = new BoundedSet(seen);
  }

  /**
   * Record a `message` push; false when it was seen before (drop it).
   * @param {{topic: string, offset?: string | null}} msg
   * @returns {boolean}
   */
  acceptMessage(msg) {
    if (typeof msg.offset !== "string") return true; // nothing to dedupe by
    if (!this.seenMessages.add(`${msg.topic}\n${msg.offset}`)) return false;
    this.recordTopicOffset(msg.topic, msg.offset);
    return true;
  }

  /**
   * Record a `notification` push; false when its id or offset was seen before.
   * @param {{id?: string, offset?: string | null}} n
   * @returns {boolean}
   */
  acceptNotification(n) {
    const byId = typeof n.id === "string" ? `id\n${n.id}` : null;
    const byOffset = typeof n.offset === "string" ? `offset\n${n.offset}` : null;
    if ((byId && this.seenNotifications.has(byId)) ||
        (byOffset && this.seenNotifications.has(byOffset))) return false;
    if (byId) this.seenNotifications.add(byId);
    if (byOffset) {
      this.seenNotifications.add(byOffset);
      this.userOffset = /** @type {string} */ (n.offset);
    }
    return true;
  }

  /**
   * Record a `read`/`unread`/`archive` push (offsets of the user's events
   * stream); false when seen before.
   * @param {{offset?: string | null}} ev
   * @returns {boolean}
   */
  acceptEvent(ev) {
    if (typeof ev.offset !== "string") return true;
    return this.seenEvents.add(ev.offset);
  }

  /**
   * @param {string} topic
   * @param {string} offset
   */
  recordTopicOffset(topic, offset) {
    this.topicOffsets.delete(topic);
    this.topicOffsets.set(topic, offset);
    if (this.topicOffsets.size > this.topicLimit) {
      const oldest = this.topicOffsets.keys().next().value;
      if (oldest !== undefined) this.topicOffsets.delete(oldest);
    }
  }

  /**
   * Fill in offsets another tab knows and this one does not (it never
   * overwrites: offsets cannot be compared, and this tab's are at least as new).
   * @param {string} filter
   * @param {string | Record<string, string> | undefined | null} since
   */
  merge(filter, since) {
    if (typeof since === "string") {
      if (!this.topicOffsets.has(filter)) this.recordTopicOffset(filter, since);
    } else if (since && typeof since === "object") {
      for (const [topic, offset] of Object.entries(since)) {
        if (typeof offset === "string" && !this.topicOffsets.has(topic)) {
          this.recordTopicOffset(topic, offset);
        }
      }
    }
  }

  /**
   * The `since` to resubscribe `filter` with: the last offset of an exact
   * topic, or `{topic: offset}` of the topics seen under a wildcard filter
   * (the most recent MAX_SINCE_TOPICS); undefined when nothing was seen.
   * @param {string} filter
   * @returns {string | Record<string, string> | undefined}
   */
  sinceFor(filter) {
    if (!isWildcard(filter)) return this.topicOffsets.get(filter);
    /** @type {[string, string][]} */
    const seen = [];
    for (const entry of this.topicOffsets) {
      if (matches(filter, entry[0])) seen.push(entry);
    }
    if (seen.length === 0) return undefined;
    return Object.fromEntries(seen.slice(-MAX_SINCE_TOPICS));
  }
}
