/**
 * Notifications while the app's tabs are closed: Web Push through the
 * service worker `tidings-sw.js` (docs/push.md).
 *
 * `tidings.push.enable()` asks for permission, registers the worker, subscribes
 * with the server's VAPID key (from the connect reply) and registers the
 * subscription for this device (`register_push`). While the device is
 * connected it gets notifications live and the server sends no OS push; when
 * it is away they come through the browser's push service. `disable()`
 * unsubscribes and removes the registration.
 * @module
 */

import { TidingsError } from "./errors.js";

/** @param {string} text unpadded base64url */
function base64urlBytes(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  const raw = atob(b64);
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

/**
 * The http(s) origin of a ws(s) URL: where the worker reports to.
 * @param {string} wsUrl
 */
export function serverOrigin(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  return u.origin;
}

/**
 * @typedef {object} PushOptions
 * @property {string} [serviceWorker] the worker's URL on your origin, default "/tidings-sw.js"
 * @property {string} [scope] the registration's scope (default: the worker's folder)
 */

export class PushControl {
  /**
   * @param {{call: (method: string, args: any[]) => Promise<any>, server: string}} deps
   */
  constructor(deps) {
    this._call = deps.call;
    this._server = deps.server;
  }

  /** Whether this browser can do Web Push at all. */
  get supported() {
    return typeof navigator !== "undefined" && "serviceWorker" in navigator
      && typeof globalThis.PushManager !== "undefined" && typeof globalThis.Notification !== "undefined";
  }

  /** The server's VAPID public key (null when Web Push is off there). */
  vapidKey() {
    return this._call("push.key", []);
  }

  /**
   * Register an endpoint for this device directly (what enable() does last;
   * also for apps that subscribe themselves, or FCM / APNs tokens in hybrid apps).
   * @param {{kind: "webpush", subscription: any} | {kind: "fcm", token: string} | {kind: "apns", token: string, topic: string}} endpoint
   * @returns {Promise<any[]>} the user's endpoints
   */
  async register(endpoint) {
    return (await this._call("push.register", [endpoint])).endpoints;
  }

  /** @returns {Promise<number>} endpoints removed (0 or 1) */
  async unregister() {
    return (await this._call("push.unregister", [])).removed;
  }

  /**
   * Ask for permission, register the worker, subscribe, register the subscription.
   * @param {PushOptions} [options]
   * @returns {Promise<any[]>} the user's endpoints
   */
  async enable(options = {}) {
    if (!this.supported) throw new TidingsError("unsupported", "this browser has no Web Push");
    const permission = await Notification.requestPermission();
    if (permission !== "granted") {
      throw new TidingsError("forbidden", `notifications are ${permission} in this browser`);
    }
    const key = await this.vapidKey();
    if (!key) throw new TidingsError("unsupported", "Web Push is off on this server");
    const url = new URL(options.serviceWorker ?? "/tidings-sw.js", location.href);
    url.searchParams.set("server", this._server);
    const reg = await navigator.serviceWorker.register(url.pathname + url.search,
      options.scope ? { scope: options.scope } : undefined);
    let sub = await reg.pushManager.getSubscription();
    if (!sub) {
      sub = await reg.pushManager.subscribe({ userVisibleOnly: true,
        applicationServerKey: base64urlBytes(key) });
    }
    return this.register({ kind: "webpush", subscription: sub.toJSON() });
  }

  /**
   * Unsubscribe from the push service and remove this device's endpoint.
   * @param {{scope?: string}} [options]
   */
  async disable(options = {}) {
    if (this.supported) {
      const reg = await navigator.serviceWorker.getRegistration(options.scope);
      const sub = reg ? await reg.pushManager.getSubscription() : null;
      if (sub) await sub.unsubscribe();
    }
    return this.unregister();
  }
}
