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
 * action button) or `opened` and focuses an open tab of the app (or opens
 * `data.url`); closing it reports `dismissed`; a `dismiss` push closes it
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

self.addEventListener("notificationclick", (event) => {
  const msg = event.notification.data;
  event.notification.close();
  const target = msg && msg.data && typeof msg.data.url === "string" ? msg.data.url : null;
  event.waitUntil(Promise.all([
    report(msg, event.action ? "clicked" : "opened"),
    clients.matchAll({ type: "window", includeUncontrolled: true }).then((tabs) => {
      const tab = tabs.find((c) => "focus" in c);
      if (tab) return tab.focus();
      return target ? clients.openWindow(target) : undefined;
    }),
  ]));
});

self.addEventListener("notificationclose", (event) => {
  event.waitUntil(report(event.notification.data, "dismissed"));
});
