/**
 * The user's notification inbox as a client sees it: the loaded items (newest
 * first), the unread count and the cursor for older items.
 *
 * {@link InboxState} is plain state changed by what the server says (the
 * `connect` reply, `inbox` replies, `notification` and `read`/`unread`/
 * `archive` pushes); {@link Inbox} is the app's view of it, with the commands.
 * The unread count is only ever the server's: it is set from a reply or a
 * push, never counted here (docs/protocol.md, "A client's checklist" 4).
 * @module
 */

import { Emitter } from "./emitter.js";

/**
 * @typedef {object} InboxItem
 * @property {string} id
 * @property {string} title
 * @property {string} body
 * @property {any} data
 * @property {string} category
 * @property {string} priority
 * @property {any} media
 * @property {number} ts
 * @property {string | null} variant the A/B variant this user was sent (null: none)
 * @property {boolean} read
 * @property {boolean} archived
 */

/**
 * @typedef {object} InboxSnapshot
 * @property {InboxItem[]} items
 * @property {number} unread
 * @property {string | null} next
 * @property {boolean} loaded
 */

const ITEM_FIELDS = ["id", "title", "body", "data", "category", "priority", "media", "ts",
  "variant"];

/**
 * An inbox item from a `notification` push or an `inbox` reply item.
 * @param {any} n
 * @returns {InboxItem}
 */
export function toItem(n) {
  /** @type {any} */
  const item = {};
  for (const key of ITEM_FIELDS) item[key] = n[key] ?? null;
  item.read = Boolean(n.read);
  item.archived = Boolean(n.archived);
  return item;
}

export class InboxState {
  constructor() {
    /** @type {InboxItem[]} */
    this.items = [];
    this.unread = 0;
    /** @type {string | null} */
    this.next = null;
    this.loaded = false;
  }

  /** @returns {InboxSnapshot} a copy that can cross a BroadcastChannel */
  snapshot() {
    return { items: this.items.map((i) => ({ ...i })), unread: this.unread, next: this.next,
      loaded: this.loaded };
  }

  /** @param {InboxSnapshot} s */
  restore(s) {
    this.items = s.items.map((i) => ({ ...i }));
    this.unread = s.unread;
    this.next = s.next;
    this.loaded = s.loaded;
  }

  /**
   * An `inbox` reply: the first page replaces the items, a later page is appended.
   * @param {{items: any[], next: string | null}} reply
   * @param {boolean} append
   */
  applyPage(reply, append) {
    const page = reply.items.map(toItem);
    if (append) {
      const known = new Set(this.items.map((i) => i.id));
      this.items.push(...page.filter((i) => !known.has(i.id)));
    } else {
      // Notifications pushed after the page was read are kept on top.
      const inPage = new Set(page.map((i) => i.id));
      const newest = page.length ? page[0].ts : -Infinity;
      const kept = this.items.filter((i) => !inPage.has(i.id) && i.ts > newest);
      this.items = [...kept, ...page];
    }
    this.next = reply.next;
    this.loaded = true;
  }

  /**
   * A new notification (a push, or one recovered at connect): on top of the list.
   * @param {any} n
   */
  applyNotification(n) {
    // `replaces`: collapsed by this one; `pruned`: dropped for the inbox cap
    const gone = new Set([...(Array.isArray(n.replaces) ? n.replaces : []),
      ...(Array.isArray(n.pruned) ? n.pruned : [])]);
    this.items = this.items.filter((i) => i.id !== n.id && !gone.has(i.id));
    this.items.unshift(toItem(n));
    if (typeof n.unread === "number") this.unread = n.unread;
  }

  /**
   * A change of state: a `read`/`unread`/`archive`/`expire` push, or the
   * `changed` ids of this client's own command.
   * @param {"read" | "unread" | "archive" | "expire"} action
   * @param {string[] | null} ids null for all
   * @returns {string[]} the ids to dismiss (read or archived, known here and
   *   unread before; all of `ids` when they are not known here)
   */
  applyChange(action, ids) {
    const chosen = ids ? new Set(ids) : null;
    const hit = (/** @type {InboxItem} */ i) => !chosen || chosen.has(i.id);
    /** @type {string[]} */
    let dismissed = [];
    if (action === "archive" || action === "expire") {
      dismissed = ids ? [...ids] : this.items.map((i) => i.id);
      this.items = this.items.filter((i) => !hit(i));
    } else if (action === "read") {
      dismissed = ids ? [...ids] : this.items.filter((i) => !i.read).map((i) => i.id);
      for (const i of this.items) if (hit(i)) i.read = true;
    } else if (action === "unread") {
      for (const i of this.items) if (hit(i)) i.read = false;
    }
    return dismissed;
  }
}

/**
 * What the {@link Inbox} needs from the client that owns it.
 * @typedef {object} InboxOwner
 * @property {(method: string, args: any[]) => Promise<any>} call
 */

/**
 * The inbox of the signed-in user. `change` fires with `{items, unread,
 * hasMore}` whenever the items or the count change, in every tab.
 */
export class Inbox extends Emitter {
  /**
   * @param {InboxState} state
   * @param {InboxOwner} owner
   */
  constructor(state, owner) {
    super();
    this._state = state;
    this._owner = owner;
  }

  /** @returns {InboxItem[]} loaded items, newest first */
  get items() {
    return this._state.items;
  }

  /** @returns {number} the server's unread count */
  get unread() {
    return this._state.unread;
  }

  /** @returns {boolean} whether `loadMore()` can fetch older items */
  get hasMore() {
    return !this._state.loaded || this._state.next !== null;
  }

  /**
   * Mark notifications read on every device of the user.
   * @param {string | string[]} ids
   * @returns {Promise<{unread: number, changed: string[]}>}
   */
  read(ids) {
    return this._owner.call("inbox.read", [Array.isArray(ids) ? ids : [ids]]);
  }

  /** @returns {Promise<{unread: number, changed: string[]}>} */
  readAll() {
    return this._owner.call("inbox.readAll", []);
  }

  /**
   * Mark notifications unread again.
   * @param {string | string[]} ids
   * @returns {Promise<{unread: number, changed: string[]}>}
   */
  markUnread(ids) {
    return this._owner.call("inbox.markUnread", [Array.isArray(ids) ? ids : [ids]]);
  }

  /**
   * Remove notifications from the inbox (on every device).
   * @param {string | string[]} ids
   * @returns {Promise<{unread: number, changed: string[]}>}
   */
  archive(ids) {
    return this._owner.call("inbox.archive", [Array.isArray(ids) ? ids : [ids]]);
  }

  /**
   * Tell the server what the user thinks of a notification in the inbox
   * (docs/notifications.md, "Feedback"): counted once per user and
   * notification (the first wins), sent to backends as a `feedback` event.
   * `not_interested` stops the user counting as engaged with its category;
   * `too_many` halves their cap on it (see `tidings.preferences`).
   * @param {string} id
   * @param {"not_interested" | "too_many" | "wrong_time" | "other"} reason
   * @param {string} [comment] at most 500 characters
   * @returns {Promise<{recorded: boolean}>} false: already given, or not in the inbox
   */
  feedback(id, reason, comment) {
    return this._owner.call("inbox.feedback", [id, reason, comment]);
  }

  /** @returns {Promise<InboxItem[]>} the next page of older items (empty at the end) */
  loadMore() {
    return this._owner.call("inbox.loadMore", []);
  }

  /** @returns {Promise<void>} reload the first page from the server */
  refresh() {
    return this._owner.call("inbox.refresh", []);
  }

  /** @internal tell listeners the state changed */
  _changed() {
    this.emit("change", { items: this.items, unread: this.unread, hasMore: this.hasMore });
  }
}
