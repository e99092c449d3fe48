/**
 * One WebSocket to a Tidings server, kept alive: the connect handshake,
 * commands matched to replies, a bounded queue for commands made while
 * disconnected, reconnects with backoff, recovery by offset, and the inbox
 * state fed by replies and pushes.
 *
 * In a browser with several tabs only the leader tab runs a Core (see
 * shared.js); the other tabs talk to it. The Core never emits the same push
 * twice: every push passes the {@link Ledger} first.
 *
 * States: `idle` → `connecting` → `connected` → (`connecting` again after a
 * loss, after a backoff delay) … → `closed` (by `close()`, or a close code
 * that must not be retried).
 * @module
 */

import { backoffDelay } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { TidingsError } from "./errors.js";
import { InboxState } from "./inbox.js";
import { Ledger } from "./ledger.js";

/** @typedef {"idle" | "connecting" | "connected" | "closed"} State */

/**
 * @typedef {object} CoreOptions
 * @property {string} url
 * @property {string | (() => string | Promise<string>)} token
 * @property {string} [device]
 * @property {"json" | "msgpack"} [encoding]
 * @property {{encode: (v: any) => Uint8Array, decode: (b: Uint8Array) => any}} [msgpack]
 * @property {number} [minBackoff] ms
 * @property {number} [maxBackoff] ms
 * @property {number} [queueLimit]
 * @property {number} [pageSize]
 * @property {any} [WebSocket]
 * @property {() => number} [random]
 * @property {{setTimeout: (fn: () => void, ms: number) => any, clearTimeout: (h: any) => void}} [timers]
 */

/** docs/protocol.md, "Subprotocols and encodings". */
export const SUBPROTOCOLS = Object.freeze({ json: "tidings.v1.json", msgpack: "tidings.v1.msgpack" });

/** Close codes after which the same token must not be tried again (DESIGN.md, close codes). */
export const AUTH_CLOSE_CODES = Object.freeze([4001, 4003]);
/** Close codes after which reconnecting cannot help: a bad frame, a frame too big. */
export const FATAL_CLOSE_CODES = Object.freeze([4400, 1009]);
/** Ops that are safe to send again when the connection ended before their reply. */
const IDEMPOTENT = new Set(["subscribe", "unsubscribe", "inbox", "read", "unread", "archive",
  "track", "feedback", "devices", "ping", "preferences", "set_preferences"]);
/** Ops whose reply carries the user's `unread` count. */
const UNREAD_REPLIES = new Set(["inbox", "read", "unread", "archive"]);

/**
 * @param {"json" | "msgpack"} encoding
 * @param {CoreOptions["msgpack"]} msgpack
 */
export function makeCodec(encoding, msgpack) {
  if (encoding === "msgpack") {
    if (!msgpack || typeof msgpack.encode !== "function" || typeof msgpack.decode !== "function") {
      throw new TypeError("encoding 'msgpack' needs the msgpack option: {encode, decode} " +
        "from @msgpack/msgpack");
    }
    return {
      protocol: SUBPROTOCOLS.msgpack,
      /** @param {any} obj */
      encode: (obj) => msgpack.encode(obj),
      /** @param {any} data */
      decode: (data) => msgpack.decode(data instanceof ArrayBuffer ? new Uint8Array(data) : data),
    };
  }
  const text = new TextDecoder();
  return {
    protocol: SUBPROTOCOLS.json,
    /** @param {any} obj */
    encode: (obj) => JSON.stringify(obj),
    /** @param {any} data */
    decode: (data) => JSON.parse(typeof data === "string" ? data
      : text.decode(data instanceof ArrayBuffer ? new Uint8Array(data) : data)),
  };
}

/**
 * The user id (`sub`) of a JWT, read without checking it (the server checks);
 * null when `token` is not a readable JWT.
 * @param {string} token
 * @returns {string | null}
 */
export function tokenSubject(token) {
  try {
    const part = token.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(Array.from(atob(b64 + "===".slice((b64.length + 3) % 4)),
      (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
    const sub = JSON.parse(json).sub;
    return typeof sub === "string" ? sub : null;
  } catch {
    return null;
  }
}

/** @param {Record<string, any>} args */
function defined(args) {
  /** @type {Record<string, any>} */
  const out = {};
  for (const [k, v] of Object.entries(args)) if (v !== undefined) out[k] = v;
  return out;
}

/**
 * @typedef {object} Command
 * @property {string} op
 * @property {Record<string, any>} args
 * @property {(value: any) => void} resolve
 * @property {(err: TidingsError) => void} reject
 * @property {number} [pushSeq] the push counter when it was sent
 */

/**
 * @typedef {object} Sub
 * @property {Set<string>} owners who holds it: "local" or a tab id
 * @property {boolean} established subscribed once already (resubscribe with `since`)
 * @property {boolean} inflight a subscribe for it awaits its reply
 * @property {{resolve: (v: any) => void, reject: (e: TidingsError) => void}[]} waiters
 */

export class Core extends Emitter {
  /**
   * @param {CoreOptions} options
   * @param {Ledger} [ledger] what this tab saw before (kept across leader changes)
   * @param {InboxState} [inbox]
   */
  constructor(options, ledger = new Ledger(), inbox = new InboxState()) {
    super();
    this.options = options;
    this.ledger = ledger;
    this.inbox = inbox;
    this.codec = makeCodec(options.encoding ?? "json", options.msgpack);
    this.minBackoff = options.minBackoff ?? 500;
    this.maxBackoff = options.maxBackoff ?? 30000;
    this.queueLimit = options.queueLimit ?? 100;
    this.pageSize = options.pageSize ?? 20;
    this.random = options.random ?? Math.random;
    this.timers = options.timers ?? {
      setTimeout: (/** @type {() => void} */ fn, /** @type {number} */ ms) => setTimeout(fn, ms),
      clearTimeout: (/** @type {any} */ h) => clearTimeout(h),
    };
    /** @type {State} */
    this.state = "idle";
    /** @type {{user: string | null, device: string, node: string} | null} */
    this.session = null;
    /** @type {string | null} the server's VAPID public key (Web Push), from the connect reply */
    this.vapidKey = null;
    /** @type {any} */
    this.ws = null;
    this.attempt = 0;
    this.nextId = 1;
    /** @type {Map<number, Command>} sent, awaiting a reply */
    this.pending = new Map();
    /** @type {Command[]} made while disconnected */
    this.queue = [];
    /** @type {Map<string, Sub>} */
    this.subs = new Map();
    /** counts user-stream pushes, so a reply's `unread` older than a push is not applied */
    this.pushSeq = 0;
    /** @type {any} */
    this.timer = null;
    /** @type {string | null} a token fetched ahead (after 4001) for the next attempt */
    this.prefetched = null;
    /** @type {string | null} the token the server refused */
    this.refused = null;
    /** @type {string | null} */
    this.lastToken = null;
    /** @type {TidingsError | null} the error reply to the last connect */
    this.connectError = null;
    this.goingAway = false;
    /** @type {(() => void) | null} */
    this.onOnline = null;
  }

  // -- lifecycle ---------------------------------------------------------------

  /**
   * Start connecting (idempotent). `token` is used for the first attempt
   * instead of calling the token callback (the shared mode fetched one already).
   * @param {string} [token]
   */
  start(token) {
    if (this.state === "connecting" || this.state === "connected") return;
    if (token) this.prefetched = token;
    this.attempt = 0;
    this.refused = null;
    const g = /** @type {any} */ (globalThis);
    if (!this.onOnline && typeof g.addEventListener === "function") {
      // The browser says the network is back: retry now instead of at the end of the backoff.
      this.onOnline = () => {
        if (this.state === "connecting" && this.timer !== null) {
          this.timers.clearTimeout(this.timer);
          this.#open();
        }
      };
      g.addEventListener("online", this.onOnline);
    }
    this.#open();
  }

  /** Close for good: no reconnect; queued and pending commands fail with `closed`. */
  close() {
    if (this.state === "closed") return;
    this.state = "closed";
    if (this.timer !== null) this.timers.clearTimeout(this.timer);
    this.timer = null;
    if (this.onOnline) /** @type {any} */ (globalThis).removeEventListener("online", this.onOnline);
    const err = () => new TidingsError("closed", "the client was closed");
    for (const cmd of [...this.pending.values(), ...this.queue]) cmd.reject(err());
    this.pending.clear();
    this.queue = [];
    for (const sub of this.subs.values()) for (const w of sub.waiters.splice(0)) w.reject(err());
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try { ws.close(1000, "client closed"); } catch { /* already closing */ }
      this.emit("disconnected", { code: 1000, reason: "client closed", willRetry: false });
    }
  }

  async #token() {
    if (this.prefetched) {
      const t = this.prefetched;
      this.prefetched = null;
      return t;
    }
    const source = this.options.token;
    return typeof source === "function" ? await source() : source;
  }

  async #open() {
    this.state = "connecting";
    this.timer = null;
    this.emit("connecting", { attempt: this.attempt });
    /** @type {string} */
    let token;
    try {
      token = await this.#token();
    } catch (e) {
      if (this.state !== "connecting") return;
      this.emit("error", new TidingsError("token_unavailable",
        `the token callback failed: ${e instanceof Error ? e.message : e}`));
      this.#retry(false);
      return;
    }
    if (this.state !== "connecting") return;
    if (this.refused !== null && token === this.refused) {
      this.#stop(4001, "the token was refused and no new one is available");
      return;
    }
    this.lastToken = token;
    const WS = this.options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    let ws;
    try {
      if (typeof WS !== "function") {
        throw new TypeError("no WebSocket: pass the WebSocket option (the ws package in Node 20)");
      }
      ws = new WS(this.options.url, [this.codec.protocol]);
    } catch (e) {
      this.emit("error", new TidingsError("bad_url", String(e instanceof Error ? e.message : e)));
      this.#stop(1006, "cannot open the WebSocket");
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.connectError = null;
    this.goingAway = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      // DESIGN.md, WebSocket protocol: connect is the first frame; since = last user offset.
      this.#sendNow({ op: "connect", args: defined({ token, device: this.options.device,
        since: this.ledger.userOffset ?? undefined }),
      resolve: (reply) => this.#connected(reply),
      reject: (err) => { this.connectError = err; } });
    };
    ws.onmessage = (/** @type {{data: any}} */ ev) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = this.codec.decode(ev.data);
      } catch {
        this.emit("error", new TidingsError("malformed", "the server sent an unreadable frame"));
        return;
      }
      this.#frame(frame);
    };
    ws.onerror = () => { /* the close event follows and says what to do */ };
    ws.onclose = (/** @type {{code: number, reason: string}} */ ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.#closed(ev.code, ev.reason || "");
    };
  }

  /** @param {any} reply */
  #connected(reply) {
    this.state = "connected";
    this.attempt = 0;
    this.refused = null;
    this.session = { user: reply.user ?? null, device: reply.device, node: reply.node };
    this.vapidKey = reply.vapid_public_key ?? null;
    this.pushSeq++;
    this.inbox.unread = reply.unread ?? 0;
    this.emit("connected", { ...this.session, unread: this.inbox.unread });
    for (const n of reply.recovered ?? []) this.#notification(n, false);
    if (typeof reply.offset === "string") this.ledger.userOffset = reply.offset;
    this.emit("offsets", { user: this.ledger.userOffset });
    if (reply.complete === false) {
      // History no longer reaches back, or more was missed than one reply holds
      // (`next`): the inbox, reloaded just below, has every notification.
      this.emit("incomplete", { scope: "inbox", since: null });
    }
    for (const [filter, sub] of this.subs) {
      if (!sub.inflight) this.#sendSubscribe(filter, sub);
    }
    if (this.session.user !== null) {
      this.#refreshInbox().catch((err) => this.emit("error", err));
    }
    this.#emitInbox();
    const queued = this.queue;
    this.queue = [];
    for (const cmd of queued) this.#sendNow(cmd);
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  async #closed(code, reason) {
    if (this.state === "closed") return;
    this.state = "connecting";
    this.session = null;
    this.#requeuePending();
    if (AUTH_CLOSE_CODES.includes(code)) {
      await this.#authFailed(code, reason);
      return;
    }
    if (FATAL_CLOSE_CODES.includes(code)) {
      this.#stop(code, reason);
      return;
    }
    // docs/protocol.md, close codes: 1001 (a node going away) means reconnect at once.
    this.emit("disconnected", { code, reason, willRetry: true });
    this.#retry(code === 1001 || this.goingAway);
  }

  /** After 4001/4003: retry only if the token callback gives a new token. */
  async #authFailed(/** @type {number} */ code, /** @type {string} */ reason) {
    this.refused = this.lastToken;
    const err = this.connectError ?? new TidingsError("unauthorized", reason || "unauthorized",
      { closeCode: code });
    err.closeCode = code;
    this.emit("error", err);
    let fresh = null;
    if (typeof this.options.token === "function") {
      try {
        fresh = await this.options.token();
      } catch {
        fresh = null;
      }
    }
    if (this.state !== "connecting") return;
    if (!fresh || fresh === this.refused) {
      this.#stop(code, reason);
      return;
    }
    this.prefetched = fresh;
    this.emit("disconnected", { code, reason, willRetry: true });
    this.#retry(false);
  }

  /**
   * Stop retrying: commands already made stay queued until `start()` is called again.
   * @param {number} code
   * @param {string} reason
   */
  #stop(code, reason) {
    this.state = "idle";
    this.emit("disconnected", { code, reason, willRetry: false });
  }

  /** @param {boolean} immediate */
  #retry(immediate) {
    const delay = immediate ? this.random() * Math.min(this.minBackoff, 100)
      : backoffDelay(this.attempt, this.minBackoff, this.maxBackoff, this.random);
    this.attempt++;
    this.timer = this.timers.setTimeout(() => {
      if (this.state === "connecting") this.#open();
    }, delay);
  }

  /** Commands sent without a reply: idempotent ones go first in the queue, publish fails. */
  #requeuePending() {
    /** @type {Command[]} */
    const again = [];
    for (const cmd of this.pending.values()) {
      if (cmd.op === "connect") continue;
      if (cmd.op === "subscribe" && this.subs.get(cmd.args.topic)?.inflight) {
        const sub = /** @type {Sub} */ (this.subs.get(cmd.args.topic));
        sub.inflight = false; // sent again after the next connect
        continue;
      }
      if (IDEMPOTENT.has(cmd.op)) again.push(cmd);
      else cmd.reject(new TidingsError("connection_lost",
        `the connection ended before the reply to ${cmd.op}; it may or may not have happened`,
        { op: cmd.op }));
    }
    this.pending.clear();
    this.queue = [...again, ...this.queue];
  }

  // -- frames ------------------------------------------------------------------

  /** @param {Command} cmd */
  #sendNow(cmd) {
    const id = this.nextId++;
    cmd.pushSeq = this.pushSeq;
    this.pending.set(id, cmd);
    try {
      this.ws.send(this.codec.encode({ op: cmd.op, id, ...cmd.args }));
    } catch {
      // the socket is closing: its close event requeues the command
    }
  }

  /** @param {any} frame */
  #frame(frame) {
    if (frame === null || typeof frame !== "object") return;
    if (typeof frame.type === "string") {
      this.#push(frame);
      return;
    }
    const cmd = this.pending.get(frame.id);
    if (!cmd) return;
    this.pending.delete(frame.id);
    if (frame.ok) {
      const { id: _id, ok: _ok, ...rest } = frame;
      // A reply's `unread` is the count when the server answered; a push that
      // arrived after the command was sent may be newer, and then wins.
      if (typeof rest.unread === "number" && UNREAD_REPLIES.has(cmd.op) &&
          cmd.pushSeq === this.pushSeq) {
        this.inbox.unread = rest.unread;
      }
      cmd.resolve(rest);
    } else {
      cmd.reject(TidingsError.fromReply(frame.error, cmd.op));
    }
  }

  /** @param {any} push */
  #push(push) {
    switch (push.type) {
      case "notification":
        this.pushSeq++;
        this.#notification(push, true);
        this.emit("offsets", { user: this.ledger.userOffset });
        break;
      case "read":
      case "unread":
      case "archive":
      case "expire": // reached its ttl: gone from the inbox, and the new count
        this.pushSeq++;
        this.#stateEvent(push);
        break;
      case "silent": // written to the inbox without a live push (the user's preferences)
        this.pushSeq++;
        this.#silent(push);
        break;
      case "message":
        if (this.ledger.acceptMessage(push)) this.emit("message", push);
        break;
      case "disconnect":
        this.goingAway = push.reconnect === true;
        break;
      default:
        break; // docs/protocol.md checklist 6: ignore unknown push types
    }
  }

  /**
   * @param {any} n a notification push or a recovered one
   * @param {boolean} live
   */
  #notification(n, live) {
    if (!this.ledger.acceptNotification(n)) return;
    const { type: _type, ...fields } = n;
    this.inbox.applyNotification(live ? n : { ...n, unread: undefined });
    this.emit("notification", { ...fields, recovered: !live });
    if (live) this.#emitInbox();
  }

  /** @param {any} ev a read / unread / archive / expire push */
  #stateEvent(ev) {
    if (!this.ledger.acceptEvent(ev)) return;
    // The server lists the changed ids for `all: true` up to 1000; without them, all.
    const ids = Array.isArray(ev.ids) ? ev.ids : (ev.all ? null : []);
    const dismissed = this.inbox.applyChange(ev.type, ids);
    if (typeof ev.unread === "number") this.inbox.unread = ev.unread;
    this.emit("read", ev);
    // Issue 5 scope 5: a notification read (or archived) on any device is dismissed everywhere.
    if (ev.type !== "unread" && (dismissed.length || ev.all)) {
      this.emit("dismiss", { ids: dismissed, all: Boolean(ev.all), device: ev.device ?? null,
        action: ev.type });
    }
    this.#emitInbox();
  }

  /**
   * A notification the user's preferences kept silent: nothing to show, but the
   * badge takes the server's count and a loaded inbox list is reloaded to hold it.
   * @param {any} ev
   */
  #silent(ev) {
    if (!this.ledger.acceptEvent(ev)) return;
    if (typeof ev.unread === "number") this.inbox.unread = ev.unread;
    this.#emitInbox();
    if (this.inbox.loaded) this.#refreshInbox().catch((err) => this.emit("error", err));
  }

  #emitInbox() {
    this.emit("inbox", this.inbox.snapshot());
  }

  // -- commands ----------------------------------------------------------------

  /**
   * Send a command now, or queue it while disconnected (bounded by `queueLimit`).
   * @param {string} op
   * @param {Record<string, any>} [args]
   * @returns {Promise<any>} the reply without `id` and `ok`
   */
  request(op, args = {}) {
    return new Promise((resolve, reject) => {
      /** @type {Command} */
      const cmd = { op, args: defined(args), resolve, reject };
      if (this.state === "closed") {
        reject(new TidingsError("closed", "the client was closed", { op }));
      } else if (this.state === "connected" && this.ws) {
        this.#sendNow(cmd);
      } else if (this.queue.length >= this.queueLimit) {
        reject(new TidingsError("queue_full",
          `${this.queueLimit} commands are already waiting for the connection`, { op }));
      } else {
        this.queue.push(cmd);
      }
    });
  }

  /**
   * Subscribe `owner` to `filter`. The server is asked once per filter; every
   * later reconnect resubscribes with `since`.
   * @param {string} filter
   * @param {string} owner "local" or the id of the tab that asked
   * @param {{since?: any, established?: boolean}} [hint] what a tab that held it knew
   * @returns {Promise<any>} the subscribe reply
   */
  subscribe(filter, owner, hint = {}) {
    if (this.state === "closed") {
      return Promise.reject(new TidingsError("closed", "the client was closed", { op: "subscribe" }));
    }
    let sub = this.subs.get(filter);
    if (hint.since) this.ledger.merge(filter, hint.since);
    if (sub) {
      sub.owners.add(owner);
      if (sub.established && !sub.inflight) return Promise.resolve({ offset: null, recovered: [],
        complete: true, shared: true });
    } else {
      sub = { owners: new Set([owner]), established: Boolean(hint.established), inflight: false,
        waiters: [] };
      this.subs.set(filter, sub);
    }
    const s = sub;
    return new Promise((resolve, reject) => {
      s.waiters.push({ resolve, reject });
      if (this.state === "connected" && !s.inflight) this.#sendSubscribe(filter, s);
    });
  }

  /**
   * @param {string} filter
   * @param {Sub} sub
   * @param {any} [resume] a reply's `next`: the rest of a recovery bigger than one reply
   */
  #sendSubscribe(filter, sub, resume) {
    sub.inflight = true;
    const since = resume ?? (sub.established ? this.ledger.sinceFor(filter) : undefined);
    this.#sendNow({ op: "subscribe", args: defined({ topic: filter, since }),
      resolve: (reply) => {
        for (const m of reply.recovered ?? []) {
          if (this.ledger.acceptMessage(m)) this.emit("message", m);
        }
        if (reply.next && this.subs.get(filter) === sub) {
          // The server pages a recovery that does not fit one reply (limits.max_reply_size):
          // ask for the rest with the `since` it gave; the waiters get the last reply.
          this.#sendSubscribe(filter, sub, reply.next);
          return;
        }
        sub.inflight = false;
        sub.established = true;
        if (typeof reply.offset === "string") {
          this.ledger.recordTopicOffset(filter, reply.offset);
          this.emit("offsets", { topics: { [filter]: reply.offset } });
        }
        if (reply.complete === false) this.emit("incomplete", { scope: "topic", topic: filter, since });
        for (const w of sub.waiters.splice(0)) w.resolve(reply);
      },
      reject: (err) => {
        sub.inflight = false;
        if (this.subs.get(filter) === sub) this.subs.delete(filter);
        const waiters = sub.waiters.splice(0);
        for (const w of waiters) w.reject(err);
        if (!waiters.length) this.emit("error", err); // a resubscribe after a reconnect failed
      } });
  }

  /**
   * @param {string} filter
   * @param {string} owner
   * @returns {Promise<void>}
   */
  async unsubscribe(filter, owner) {
    const sub = this.subs.get(filter);
    if (!sub) return;
    sub.owners.delete(owner);
    if (sub.owners.size > 0) return;
    this.subs.delete(filter);
    for (const w of sub.waiters.splice(0)) {
      w.reject(new TidingsError("unsubscribed", "unsubscribed before the reply", { op: "subscribe" }));
    }
    if (this.state === "connected" && (sub.established || sub.inflight)) await this.request("unsubscribe", { topic: filter });
  }

  /**
   * Forget everything a tab held (it closed).
   * @param {string} owner
   */
  dropOwner(owner) {
    for (const filter of [...this.subs.keys()]) {
      const sub = /** @type {Sub} */ (this.subs.get(filter));
      if (sub.owners.has(owner)) this.unsubscribe(filter, owner).catch(() => {});
    }
  }

  /**
   * A read-family command; the reply's `changed` ids are applied at once (the
   * push that follows is then a no-op) and its `unread` when no push came between.
   * @param {"read" | "unread" | "archive"} op
   * @param {string[] | null} ids null for all
   */
  async mark(op, ids) {
    const reply = await this.request(op, ids ? { ids } : { all: true });
    if (Array.isArray(reply.changed) && reply.changed.length) {
      this.inbox.applyChange(op, reply.changed);
    } else if (!ids && reply.all === true) {
      this.inbox.applyChange(op, null); // over 1000 changed: the reply lists none, it says all
    }
    this.#emitInbox();
    return reply;
  }

  /** @returns {Promise<import("./inbox.js").InboxItem[]>} */
  async loadMore() {
    if (this.inbox.loaded && this.inbox.next === null) return [];
    const before = this.inbox.loaded ? this.inbox.next : undefined;
    const reply = await this.request("inbox", { limit: this.pageSize, before: before ?? undefined });
    const count = this.inbox.items.length;
    this.inbox.applyPage(reply, before !== undefined);
    this.#emitInbox();
    return this.inbox.items.slice(before !== undefined ? count : 0);
  }

  /** Reload as many newest items as are loaded (at least a page, at most 100). */
  async #refreshInbox() {
    const limit = Math.max(this.pageSize, Math.min(100, this.inbox.items.length));
    const reply = await this.request("inbox", { limit });
    this.inbox.applyPage(reply, false);
    this.#emitInbox();
  }

  refreshInbox() {
    return this.#refreshInbox();
  }
}
