/**
 * One connection for all tabs of the same origin and user (issue 5, scope 4).
 *
 * Every tab asks for the same Web Lock; the tab that holds it is the
 * **leader** and runs the only WebSocket (a {@link Core}). The others are
 * **followers**: they send their commands to the leader over a
 * BroadcastChannel and get back the replies, and the leader sends every
 * push, inbox change and connection event to all of them. When the leader
 * tab closes, the browser releases its lock, the next tab in the lock's queue
 * becomes the leader, announces itself, and the followers attach their
 * subscriptions to it again (with the offsets they saw). The new leader
 * connects with `since` = the last notification offset this tab saw and
 * resubscribes with `since` per topic, so what was sent meanwhile is
 * recovered, and every tab's {@link Ledger} drops what it already showed.
 *
 * Messages on the channel (`v` is 1; `t` is the kind):
 * - `hello` {from}: a tab looks for the leader;
 * - `leader` {from, snapshot}: the leader's announcement (and answer to hello);
 * - `call` {from, to, rid, method, args} / `result` {to, rid, ok, value | error};
 * - `event` {from, name, data}: something the leader's connection emitted;
 * - `bye` {from}: a tab leaves; the leader drops its subscriptions.
 * @module
 */

import { TidingsError } from "./errors.js";

/** @param {unknown} err @returns {any} */
function cloneError(err) {
  if (err instanceof TidingsError) return err.toJSON();
  return { code: "internal", message: err instanceof Error ? err.message : String(err) };
}

/** @returns {string} */
function randomId() {
  const c = /** @type {any} */ (globalThis).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/**
 * What the {@link SharedLink} needs from the client of its tab.
 * @typedef {object} LinkHost
 * @property {(token: string | undefined) => void} lead become the leader: start a Core
 * @property {() => any} snapshot the leader's state for a new follower
 * @property {(snapshot: any) => void} follow a (new) leader announced itself
 * @property {(name: string, data: any) => void} relay an event from the leader
 * @property {(method: string, args: any[], owner: string) => Promise<any>} exec run a call on the Core
 * @property {(owner: string) => void} drop a tab left
 * @property {() => {method: string, args: any[]}[]} reattach calls that restore this tab's subscriptions
 */

/**
 * @typedef {object} Call
 * @property {string} method
 * @property {any[]} args
 * @property {(v: any) => void} resolve
 * @property {(e: TidingsError) => void} reject
 * @property {string | null} sentTo the leader it went to
 */

export class SharedLink {
  /**
   * @param {LinkHost} host
   * @param {{name: string, locks: any, BroadcastChannel: any, queueLimit: number, token?: string}} options
   */
  constructor(host, options) {
    this.host = host;
    this.name = options.name;
    this.locks = options.locks;
    this.queueLimit = options.queueLimit;
    this.tab = randomId();
    /** @type {string | null} */
    this.leader = null;
    this.isLeader = false;
    this.closed = false;
    this.rid = 1;
    /** @type {Map<number, Call>} */
    this.calls = new Map();
    /** @type {string | undefined} a token fetched at start, for a tab that leads at once */
    this.token = options.token;
    /** @type {(() => void) | null} releases the lock */
    this.release = null;
    /** @type {((ev: any) => void) | null} */
    this.onPageHide = null;
    this.channel = new options.BroadcastChannel(this.name);
    this.channel.onmessage = (/** @type {{data: any}} */ ev) => this.#receive(ev.data);
  }

  start() {
    this.locks.request(this.name, () => new Promise((release) => {
      if (this.closed) {
        release(undefined);
        return;
      }
      this.release = () => release(undefined);
      this.#lead();
    })).catch(() => { /* the lock manager went away with the page */ });
    this.#post({ t: "hello", from: this.tab });
    // A follower that goes away says so, so the leader drops its subscriptions
    // (a leader's lock is released by the browser itself).
    const g = /** @type {any} */ (globalThis);
    if (typeof g.addEventListener === "function") {
      this.onPageHide = (/** @type {any} */ ev) => {
        if (!ev.persisted && !this.isLeader) this.#post({ t: "bye", from: this.tab });
      };
      g.addEventListener("pagehide", this.onPageHide);
    }
  }

  /** Leave: a leader lets the next tab take over; a follower's calls fail with `closed`. */
  close() {
    if (this.closed) return;
    this.closed = true;
    if (!this.isLeader) this.#post({ t: "bye", from: this.tab });
    for (const call of this.calls.values()) {
      call.reject(new TidingsError("closed", "the client was closed", { op: call.method }));
    }
    this.calls.clear();
    this.release?.();
    this.channel.close();
    const g = /** @type {any} */ (globalThis);
    if (this.onPageHide) g.removeEventListener("pagehide", this.onPageHide);
  }

  /** @param {any} msg */
  #post(msg) {
    if (!this.closed || msg.t === "bye") this.channel.postMessage({ v: 1, ...msg });
  }

  #lead() {
    this.isLeader = true;
    this.leader = this.tab;
    const token = this.token;
    this.token = undefined;
    this.host.lead(token);
    this.#post({ t: "leader", from: this.tab, snapshot: this.host.snapshot() });
    // Calls that went to the old leader and got no answer: run them here.
    const calls = [...this.calls.values()];
    this.calls.clear();
    for (const call of calls) this.#runHere(call);
  }

  /** @param {Call} call */
  #runHere(call) {
    if (call.sentTo !== null && call.method === "publish") {
      call.reject(new TidingsError("connection_lost",
        "the tab holding the connection closed before the reply to publish; " +
        "it may or may not have happened", { op: "publish" }));
      return;
    }
    this.host.exec(call.method, call.args, "local").then(call.resolve, call.reject);
  }

  /**
   * Run `method` on the leader's connection (this tab's, when it leads).
   * @param {string} method
   * @param {any[]} args
   * @returns {Promise<any>}
   */
  call(method, args) {
    if (this.closed) {
      return Promise.reject(new TidingsError("closed", "the client was closed", { op: method }));
    }
    if (this.isLeader) return this.host.exec(method, args, "local");
    return new Promise((resolve, reject) => {
      if (this.leader === null && this.calls.size >= this.queueLimit) {
        reject(new TidingsError("queue_full",
          `${this.queueLimit} commands are already waiting for the connection`, { op: method }));
        return;
      }
      const rid = this.rid++;
      /** @type {Call} */
      const call = { method, args, resolve, reject, sentTo: null };
      this.calls.set(rid, call);
      if (this.leader !== null) this.#send(rid, call);
    });
  }

  /**
   * @param {number} rid
   * @param {Call} call
   */
  #send(rid, call) {
    call.sentTo = this.leader;
    this.#post({ t: "call", from: this.tab, to: this.leader, rid, method: call.method,
      args: call.args });
  }

  /**
   * The leader tells every tab what its connection did.
   * @param {string} name
   * @param {any} data
   */
  broadcast(name, data) {
    if (!this.isLeader || this.closed) return;
    this.#post({ t: "event", from: this.tab, name,
      data: data instanceof TidingsError ? { $error: data.toJSON() } : data });
  }

  /** @param {any} msg */
  #receive(msg) {
    if (this.closed || !msg || msg.v !== 1) return;
    switch (msg.t) {
      case "hello":
        if (this.isLeader) this.#post({ t: "leader", from: this.tab, snapshot: this.host.snapshot() });
        break;
      case "leader":
        if (!this.isLeader && msg.from !== this.leader) this.#follow(msg.from, msg.snapshot);
        break;
      case "call":
        if (this.isLeader && msg.to === this.tab) this.#serve(msg);
        break;
      case "result":
        if (msg.to === this.tab) this.#result(msg);
        break;
      case "event":
        if (!this.isLeader && msg.from === this.leader) {
          const data = msg.data && msg.data.$error ? TidingsError.fromJSON(msg.data.$error) : msg.data;
          this.host.relay(msg.name, data);
        }
        break;
      case "bye":
        if (this.isLeader) this.host.drop(msg.from);
        break;
      default:
        break;
    }
  }

  /**
   * A new leader: take its state, attach this tab's subscriptions to it and
   * send it the calls the old one never answered (a publish among them fails).
   * @param {string} leader
   * @param {any} snapshot
   */
  #follow(leader, snapshot) {
    const first = this.leader === null;
    this.leader = leader;
    this.token = undefined;
    this.host.follow(snapshot);
    if (!first) {
      for (const { method, args } of this.host.reattach()) {
        this.call(method, args).catch(() => { /* reported by the leader as an error event */ });
      }
    }
    for (const [rid, call] of [...this.calls]) {
      if (call.sentTo !== null && call.method === "publish") {
        this.calls.delete(rid);
        call.reject(new TidingsError("connection_lost",
          "the tab holding the connection closed before the reply to publish; " +
          "it may or may not have happened", { op: "publish" }));
      } else {
        this.#send(rid, call);
      }
    }
  }

  /** @param {any} msg */
  #serve(msg) {
    const reply = (/** @type {any} */ fields) =>
      this.#post({ t: "result", from: this.tab, to: msg.from, rid: msg.rid, ...fields });
    this.host.exec(msg.method, msg.args, msg.from).then(
      (value) => reply({ ok: true, value }),
      (err) => reply({ ok: false, error: cloneError(err) }));
  }

  /** @param {any} msg */
  #result(msg) {
    const call = this.calls.get(msg.rid);
    if (!call || call.sentTo !== msg.from) return;
    this.calls.delete(msg.rid);
    if (msg.ok) call.resolve(msg.value);
    else call.reject(TidingsError.fromJSON(msg.error));
  }
}
