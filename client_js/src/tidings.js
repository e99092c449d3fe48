/**
 * The client an app uses: `new Tidings(url, {token})`.
 *
 * It decides where the connection lives: in this tab (`solo`: Node, or a
 * browser without Web Locks / BroadcastChannel, or `sharedConnection:
 * false`), or shared by all tabs of the origin and user (`leader` holds it,
 * `follower` talks to the leader; see shared.js). Whatever the role, the app
 * sees the same API and the same events.
 * @module
 */

import { Core, tokenSubject } from "./core.js";
import { Emitter, report } from "./emitter.js";
import { TidingsError } from "./errors.js";
import { Inbox, InboxState } from "./inbox.js";
import { Preferences } from "./preferences.js";
import { Ledger } from "./ledger.js";
import { SharedLink } from "./shared.js";
import { PushControl, serverOrigin } from "./push.js";
import { matches } from "./topics.js";

/**
 * @typedef {object} TidingsOptions
 * @property {string | (() => string | Promise<string>)} token a JWT, or a function that
 *   fetches one (called for every connect, and again after the server refused one)
 * @property {string} [device] a stable id for this device (browser profile)
 * @property {"json" | "msgpack"} [encoding] default "json"
 * @property {{encode: (v: any) => Uint8Array, decode: (b: Uint8Array) => any}} [msgpack]
 *   `@msgpack/msgpack` (or anything with its encode/decode), for encoding "msgpack"
 * @property {number} [minBackoff] ms, default 500
 * @property {number} [maxBackoff] ms, default 30000
 * @property {number} [queueLimit] commands kept while disconnected, default 100
 * @property {number} [pageSize] inbox items per page, default 20
 * @property {boolean} [sharedConnection] one connection for all tabs, default true
 * @property {boolean} [autoConnect] connect right after construction, default true
 * @property {any} [WebSocket] a WebSocket constructor (Node 20 has none: pass `ws`)
 * @property {any} [locks] a Web Locks LockManager (default navigator.locks)
 * @property {any} [BroadcastChannel] default globalThis.BroadcastChannel
 * @property {() => number} [random] for tests: the backoff's random source
 */

/** @typedef {(msg: any) => void} MessageHandler */

/** Events passed on to the app as they come. */
const PLAIN_EVENTS = new Set(["notification", "read", "dismiss", "incomplete", "error"]);

export class Tidings extends Emitter {
  /**
   * @param {string} url the server's WebSocket URL, e.g. `wss://push.example.com/ws`
   * @param {TidingsOptions} options
   */
  constructor(url, options) {
    super();
    if (!options || (typeof options.token !== "string" && typeof options.token !== "function")) {
      throw new TypeError("Tidings: the token option (a string or a function) is required");
    }
    this.url = url;
    this.options = options;
    /** @type {"idle" | "connecting" | "connected" | "closed"} */
    this.state = "idle";
    /** @type {null | "solo" | "leader" | "follower"} */
    this.role = null;
    /** @type {{user: string | null, device: string, node: string} | null} */
    this.session = null;
    this._ledger = new Ledger();
    this._inboxState = new InboxState();
    this.inbox = new Inbox(this._inboxState, { call: (m, a) => this._call(m, a) });
    /** Web Push while the app is closed (push.js). */
    this.push = new PushControl({ call: (m, a) => this._call(m, a), server: serverOrigin(url) });
    /** the signed-in user's notification preferences: `get()`, `set(prefs, {merge})` */
    this.preferences = new Preferences({ call: (m, a) => this._call(m, a) });
    /** @type {Map<string, Set<MessageHandler>>} */
    this._handlers = new Map();
    /** @type {Set<string>} filters the server confirmed */
    this._established = new Set();
    /** @type {Core | null} */
    this._core = null;
    /** @type {SharedLink | null} */
    this._link = null;
    /** @type {Promise<void> | null} */
    this._starting = null;
    /** @type {{method: string, args: any[], resolve: (v: any) => void, reject: (e: any) => void}[]} */
    this._early = [];
    if (options.autoConnect !== false) {
      queueMicrotask(() => { if (this.role === null && this.state !== "closed") this.connect().catch(() => {}); });
    }
  }

  // -- connection ------------------------------------------------------------

  /**
   * Connect (idempotent; also after the client stopped retrying, e.g. once the
   * app has a new token). Resolves when connected; rejects if the client
   * stops without retrying.
   * @returns {Promise<void>}
   */
  connect() {
    if (this.state === "closed") return Promise.reject(new TidingsError("closed", "the client was closed"));
    const done = new Promise((resolve, reject) => {
      if (this.state === "connected") { resolve(undefined); return; }
      const offs = [
        this.on("connected", () => { offs.forEach((f) => f()); resolve(undefined); }),
        this.on("disconnected", (/** @type {any} */ d) => {
          if (!d.willRetry) { offs.forEach((f) => f()); reject(new TidingsError(
            d.code === 4001 || d.code === 4003 ? "unauthorized" : "disconnected",
            `disconnected (${d.code} ${d.reason})`, { closeCode: d.code })); }
        }),
      ];
    });
    if (this.role === null) this._starting ??= this.#start();
    else if (this._core) this._core.start();
    else this._link?.call("connect", []).catch(() => {}); // a follower restarts the leader's
    return /** @type {Promise<void>} */ (done);
  }

  async #start() {
    const g = /** @type {any} */ (globalThis);
    const locks = this.options.locks ?? g.navigator?.locks;
    const BC = this.options.BroadcastChannel ?? g.BroadcastChannel;
    const shared = this.options.sharedConnection !== false && locks && typeof BC === "function";
    if (!shared) {
      this.#becomeSolo();
      return;
    }
    /** @type {string | undefined} */
    let token;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (e) {
      this.emit("error", new TidingsError("token_unavailable",
        `the token callback failed: ${e instanceof Error ? e.message : e}`));
    }
    if (this.state === "closed") return;
    if (token === undefined) {
      this.#becomeSolo(); // no user to share with: keep this tab's own connection
      return;
    }
    const user = tokenSubject(token) ?? "?";
    this._link = new SharedLink({
      lead: (t) => this.#lead(t),
      snapshot: () => this.#snapshot(),
      follow: (s) => this.#follow(s),
      relay: (name, data) => this.#event(name, data, true),
      exec: (method, args, owner) => this.#exec(method, args, owner),
      drop: (owner) => this._core?.dropOwner(owner),
      reattach: () => [...this._established].map((filter) => ({ method: "subscribe",
        args: [filter, { since: this._ledger.sinceFor(filter), established: true }] })),
    }, { name: `tidings:v1:${this.url}:${user}`, locks, BroadcastChannel: BC,
      queueLimit: this.options.queueLimit ?? 100, token });
    this.role = "follower";
    this.#flushEarly();
    this._link.start();
  }

  #becomeSolo() {
    this.role = "solo";
    this.#makeCore();
    this.#flushEarly();
    /** @type {Core} */ (this._core).start();
  }

  #makeCore() {
    const core = new Core({ ...this.options, url: this.url }, this._ledger, this._inboxState);
    for (const name of ["connecting", "connected", "disconnected", "notification", "message", "read",
      "dismiss", "incomplete", "error", "inbox", "offsets"]) {
      core.on(name, (data) => {
        this._link?.broadcast(name, data);
        this.#event(name, data, false);
      });
    }
    this._core = core;
  }

  /** @param {string | undefined} token */
  #lead(token) {
    this.role = "leader";
    this.#makeCore();
    const core = /** @type {Core} */ (this._core);
    for (const filter of this._established) {
      core.subscribe(filter, "local", { established: true }).catch(() => {});
    }
    core.start(token);
  }

  #snapshot() {
    return { state: this.state, session: this.session, inbox: this._inboxState.snapshot(),
      userOffset: this._ledger.userOffset, topics: Object.fromEntries(this._ledger.topicOffsets) };
  }

  /** @param {any} s the leader's snapshot */
  #follow(s) {
    if (s.userOffset && !this._ledger.userOffset) this._ledger.userOffset = s.userOffset;
    for (const [topic, offset] of Object.entries(s.topics ?? {})) {
      if (!this._ledger.topicOffsets.has(topic)) this._ledger.recordTopicOffset(topic, /** @type {string} */ (offset));
    }
    this._inboxState.restore(s.inbox);
    this.inbox._changed();
    if (s.state !== this.state) {
      this.state = s.state;
      this.session = s.session;
      if (s.state === "connected") this.emit("connected", { ...s.session, unread: s.inbox.unread });
    }
  }

  /** Close this client: its connection (a leader's passes to another tab), its calls fail. */
  close() {
    if (this.state === "closed") return;
    this._core?.close();
    this._link?.close();
    this.state = "closed";
    for (const e of this._early.splice(0)) e.reject(new TidingsError("closed", "the client was closed"));
  }

  // -- events ----------------------------------------------------------------

  /**
   * Everything the connection emits, in this tab: from its own Core, or
   * relayed from the leader's (then passed through this tab's ledger too).
   * @param {string} name
   * @param {any} data
   * @param {boolean} relayed
   */
  #event(name, data, relayed) {
    switch (name) {
      case "message":
        if (relayed && !this._ledger.acceptMessage(data)) return;
        this.#dispatch(data);
        return;
      case "notification":
        if (relayed && !this._ledger.acceptNotification(data)) return;
        this.emit("notification", data);
        return;
      case "read":
        if (relayed) this._ledger.acceptEvent(data);
        this.emit("read", data);
        return;
      case "inbox":
        if (relayed) this._inboxState.restore(data);
        this.inbox._changed();
        return;
      case "offsets":
        if (relayed) {
          if (data.user) this._ledger.userOffset = data.user;
          for (const [t, o] of Object.entries(data.topics ?? {})) this._ledger.recordTopicOffset(t, /** @type {string} */ (o));
        }
        return;
      case "connecting":
        this.state = "connecting";
        this.emit(name, data);
        return;
      case "connected":
        this.state = "connected";
        this.session = { user: data.user, device: data.device, node: data.node };
        this.emit(name, data);
        return;
      case "disconnected":
        this.state = data.willRetry ? "connecting" : "idle";
        this.session = null;
        this.emit(name, data);
        return;
      default:
        if (PLAIN_EVENTS.has(name)) this.emit(name, data);
    }
  }

  /** @param {any} msg a message push: to every handler of a filter that matches */
  #dispatch(msg) {
    let any = false;
    for (const [filter, handlers] of this._handlers) {
      if (!matches(filter, msg.topic)) continue;
      for (const handler of [...handlers]) {
        any = true;
        try { handler(msg); } catch (err) { report(err); }
      }
    }
    if (any) this.emit("message", msg);
  }

  // -- commands --------------------------------------------------------------

  /**
   * Run a command wherever the connection is.
   * @param {string} method
   * @param {any[]} args
   * @returns {Promise<any>}
   */
  _call(method, args) {
    if (this.state === "closed") {
      return Promise.reject(new TidingsError("closed", "the client was closed", { op: method }));
    }
    if (this._link) return this._link.call(method, args);
    if (this._core) return this.#exec(method, args, "local");
    return new Promise((resolve, reject) => {
      if (this._early.length >= (this.options.queueLimit ?? 100)) {
        reject(new TidingsError("queue_full", "too many commands before the client started", { op: method }));
        return;
      }
      this._early.push({ method, args, resolve, reject });
      if (this.options.autoConnect === false && this.role === null) return;
      if (this.role === null) this.connect().catch(() => {});
    });
  }

  #flushEarly() {
    for (const e of this._early.splice(0)) this._call(e.method, e.args).then(e.resolve, e.reject);
  }

  /**
   * A command on this tab's Core (solo, or the leader serving any tab).
   * @param {string} method
   * @param {any[]} args
   * @param {string} owner "local" or a follower's tab id
   * @returns {Promise<any>}
   */
  async #exec(method, args, owner) {
    const core = this._core;
    if (!core) throw new TidingsError("closed", "no connection in this tab", { op: method });
    switch (method) {
      case "subscribe": return core.subscribe(args[0], owner, args[1] ?? {});
      case "unsubscribe": return core.unsubscribe(args[0], owner);
      case "publish": return core.request("publish", { topic: args[0], data: args[1], retain: args[2] || undefined });
      case "track": return core.request("track", { notification: args[0], event: args[1], action: args[2] });
      case "devices": return (await core.request("devices")).devices;
      case "ping": return core.request("ping");
      case "push.key": return core.vapidKey;
      case "push.register": return core.request("register_push", args[0]);
      case "push.unregister": return core.request("unregister_push");
      case "connect": return core.start();
      case "inbox.read": return core.mark("read", args[0]);
      case "inbox.readAll": return core.mark("read", null);
      case "inbox.markUnread": return core.mark("unread", args[0]);
      case "inbox.archive": return core.mark("archive", args[0]);
      case "inbox.feedback":
        return core.request("feedback", { notification: args[0], reason: args[1], comment: args[2] });
      case "inbox.loadMore": return core.loadMore();
      case "inbox.refresh": return core.refreshInbox();
      case "preferences.get": return (await core.request("preferences")).preferences;
      case "preferences.set":
        return (await core.request("set_preferences", { preferences: args[0], merge: args[1] })).preferences;
      default: throw new TidingsError("unknown_op", `unknown method ${method}`, { op: method });
    }
  }

  /**
   * Subscribe to a topic filter (`news/+`, `home/#`); `handler` gets every
   * `message` push on a matching topic. Resolves with the server's reply
   * (`offset`, `recovered`, `complete`); rejects with a {@link TidingsError}
   * (`forbidden`, `bad_topic`, ...). After a reconnect the client resubscribes
   * by itself, with `since`.
   * @param {string} filter
   * @param {MessageHandler} handler
   * @returns {Promise<any>}
   */
  async subscribe(filter, handler) {
    let set = this._handlers.get(filter);
    if (!set) this._handlers.set(filter, (set = new Set()));
    set.add(handler);
    try {
      const reply = await this._call("subscribe", [filter, {}]);
      this._established.add(filter);
      return reply;
    } catch (err) {
      set.delete(handler);
      if (set.size === 0 && this._handlers.get(filter) === set) this._handlers.delete(filter);
      throw err;
    }
  }

  /**
   * Stop calling `handler` (or every handler of `filter`); the server
   * subscription ends with the last handler.
   * @param {string} filter
   * @param {MessageHandler} [handler]
   * @returns {Promise<void>}
   */
  async unsubscribe(filter, handler) {
    const set = this._handlers.get(filter);
    if (!set) return;
    if (handler) set.delete(handler);
    else set.clear();
    if (set.size > 0) return;
    this._handlers.delete(filter);
    this._established.delete(filter);
    await this._call("unsubscribe", [filter]);
  }

  /**
   * Publish `data` (any JSON value; bytes in msgpack mode) on `topic`.
   * @param {string} topic
   * @param {any} data
   * @param {{retain?: boolean}} [options]
   * @returns {Promise<{offset: string}>}
   */
  publish(topic, data, options = {}) {
    return this._call("publish", [topic, data, Boolean(options.retain)]);
  }

  /**
   * Report what the user did with a notification (`delivered`, `opened`,
   * `clicked`, `dismissed`).
   * @param {string} id
   * @param {string} event
   * @param {string} [action]
   * @returns {Promise<{recorded: boolean}>}
   */
  track(id, event, action) {
    return this._call("track", [id, event, action]);
  }

  /** @returns {Promise<{device: string, edge: string, node: string, since: number}[]>} */
  devices() {
    return this._call("devices", []);
  }

  /** @returns {Promise<{}>} an application-level round trip */
  ping() {
    return this._call("ping", []);
  }
}
