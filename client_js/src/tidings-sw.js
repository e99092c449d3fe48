/**
 * tidings-sw.js: the service worker that shows Tidings notifications while the
 * app's tabs are closed (Web Push, RFC 8030).
 *
 * Serve it from your origin (copy it from the package, or let the Tidings
 * server serve it at /client/tidings-sw.js) and register it through
 * `tidings.push.enable()`, which passes the Tidings server's origin as
 * `?server=` in the script URL. A push carries one JSON payload:
 *
 *   {"type": "notification", "id", "title", "body", "image"?, "data"?,
 *    "actions"?, "category", "track"?}
 *   {"type": "dismiss", "id"}
 *
 * A notification is shown with its id as the tag (a newer one with the same
 * id replaces it) and reported `delivered`; a click reports `clicked` (an
 * action button) or `opened` and focuses the tab showing `data.url` (or
 * opens it; with no `data.url`, focuses any tab of the app); closing it
 * reports `dismissed`; a `dismiss` push closes it
 * (the notification was read on another device). Reports go to
 * `{server}/push/track?u=&n=&e=&t=` with the signed `track` token the payload
 * carries, so no user credentials live in the worker.
 */

/* global self, clients, fetch, URL */

const SERVER = new URL(self.location.href).searchParams.get("server") || self.location.origin;
const EVENTS = new Set(["delivered", "opened", "clicked", "dismissed"]);

/**
 * Tell the server what happened to a notification (never throws).
 * @param {any} data the payload the notification was shown with
 * @param {string} event delivered, opened, clicked or dismissed
 */
async function report(data, event) {
  if (!data || !data.track || !EVENTS.has(event)) return;
  const url = new URL("/push/track", SERVER);
  url.searchParams.set("u", data.track.user);
  url.searchParams.set("n", data.id);
  url.searchParams.set("e", event);
  url.searchParams.set("t", data.track.token);
  try {
    await fetch(url.toString(), { method: "GET", mode: "cors", credentials: "omit" });
  } catch {
    // offline: the report is lost, the notification is not
  }
}

/** @param {any} event */
function payloadOf(event) {
  if (!event.data) return null;
  try {
    return event.data.json();
  } catch {
    return null;
  }
}

self.addEventListener("install", () => {
  // a new version takes over at once: notifications must not wait for a reload
  self.skipWaiting();
});

self.addEventListener("activate", (event) => {
  event.waitUntil(clients.claim());
});

self.addEventListener("push", (event) => {
  const msg = payloadOf(event);
  if (!msg || typeof msg.id !== "string") return;
  if (msg.type === "dismiss") {
    event.waitUntil(self.registration.getNotifications({ tag: msg.id })
      .then((shown) => shown.forEach((n) => n.close())));
    return;
  }
  /** @type {NotificationOptions & {image?: string, actions?: any[]}} */
  const options = {
    body: msg.body || "",
    tag: msg.id,
    data: msg,
    timestamp: Date.now(),
  };
  if (msg.image) options.image = msg.image;
  if (Array.isArray(msg.actions)) options.actions = msg.actions.slice(0, 2);
  event.waitUntil(self.registration.showNotification(msg.title || "", options)
    .then(() => report(msg, "delivered")));
});

/**
 * Bring the user to what a clicked notification is about: the open tab that
 * already shows its `data.url`, else that URL in a new window, else (no URL)
 * any open tab of the app. The browser allows one focus or openWindow while
 * it dispatches a click, and refuses them at any other time.
 * @param {string | null} url the payload's `data.url`, relative to the worker
 */
async function bringUp(url) {
  const target = url ? new URL(url, self.location.href).href : null;
  const tabs = await clients.matchAll({ type: "window", includeUncontrolled: true });
  const showing = target ? tabs.find((c) => c.url === target && "focus" in c) : undefined;
  if (showing) return showing.focus();
  if (target) return clients.openWindow(target);
  const tab = tabs.find((c) => "focus" in c);
  return tab ? tab.focus() : undefined;
}

self.addEventListener("notificationclick", (event) => {
  const msg = event.notification.data;
  event.notification.close();
  const url = msg && msg.data && typeof msg.data.url === "string" ? msg.data.url : null;
  event.waitUntil(Promise.all([
    report(msg, event.action ? "clicked" : "opened"),
    bringUp(url),
  ]));
});

self.addEventListener("notificationclose", (event) => {
  event.waitUntil(report(event.notification.data, "dismissed"));
});
