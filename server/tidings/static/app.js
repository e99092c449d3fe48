// The demo page: a live inbox with an unread badge, a topic feed and a
// publish form, on the Tidings JS client (served from /client/, no CDN).
//
// Query parameters: ?user=NAME (default "demo"), ?device=ID (default: one id
// per browser profile, kept in localStorage).
import { Tidings } from "/client/index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const user = params.get("user") || "demo";
const device = params.get("device") || storedDevice();

function storedDevice() {
  const key = "tidings-demo-device";
  let id = localStorage.getItem(key);
  if (!id) {
    id = "web-" + Math.random().toString(36).slice(2, 10);
    localStorage.setItem(key, id);
  }
  return id;
}

/** A token for `user` from the dev-only endpoint (served only on a development node: no API keys or JWT secret configured, every listener on loopback). */
async function devToken() {
  const res = await fetch(`/dev/token?user=${encodeURIComponent(user)}`, { cache: "no-store" });
  if (res.status === 404) {
    showStatus("closed", "no dev token: this server is not a loopback-only development node");
    throw new Error("dev token endpoint not available");
  }
  const body = await res.json();
  if (!res.ok) throw new Error(body.error?.message || `dev token: ${res.status}`);
  return body.token;
}

const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const tidings = new Tidings(wsUrl, { token: devToken, device, maxBackoff: 5000 });
window.tidings = tidings; // for the browser tests and for poking around in the console

$("user").textContent = user;
$("device").textContent = device;
$("notify-hint").textContent =
  `curl -H "Authorization: Bearer $API_KEY" -H "Content-Type: application/json" \\\n` +
  `  -d '{"users": ["${user}"], "title": "Hello", "body": "from the API"}' \\\n` +
  `  http://${location.hostname}:8081/v1/notify`;

// -- connection state ---------------------------------------------------------

function showStatus(state, text) {
  const el = $("status");
  el.dataset.state = state;
  el.textContent = text;
}

tidings.on("connecting", () => showStatus("connecting", "connecting…"));
tidings.on("connected", (s) => {
  showStatus("connected", "live");
  $("node").textContent = s.node || "?";
  $("role").textContent = tidings.role === "follower" ? "shared (another tab holds it)"
    : tidings.role === "leader" ? "this tab (shared with other tabs)" : "this tab";
});
tidings.on("disconnected", (d) =>
  showStatus(d.willRetry ? "connecting" : "closed",
    d.willRetry ? "reconnecting…" : `disconnected (${d.code})`));
tidings.on("error", (e) => console.warn("tidings:", e.code, e.message));

// -- inbox ----------------------------------------------------------------------

const time = (ts) => (ts ? new Date(ts).toLocaleTimeString() : "");

function renderInbox({ items, unread, hasMore }) {
  const badge = $("unread");
  badge.textContent = String(unread);
  badge.dataset.count = String(unread);
  document.title = unread ? `(${unread}) Tidings demo` : "Tidings demo";
  const list = $("inbox-list");
  list.replaceChildren(...items.map(inboxItem));
  $("inbox-empty").hidden = items.length > 0;
  $("load-more").hidden = !hasMore || items.length === 0;
  $("read-all").disabled = unread === 0;
}

function inboxItem(n) {
  const li = document.createElement("li");
  li.dataset.id = n.id;
  li.className = n.read ? "read" : "unread";
  const dot = document.createElement("span");
  dot.className = "dot";
  const text = document.createElement("div");
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = n.title || "(no title)";
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = n.body || "";
  const when = document.createElement("div");
  when.className = "time";
  when.textContent = time(n.ts);
  text.append(title, body, when);
  li.append(dot, text);
  if (!n.read) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "read-btn";
    button.textContent = "Mark read";
    button.addEventListener("click", () => tidings.inbox.read(n.id).catch(report));
    li.append(button);
  }
  return li;
}

tidings.inbox.on("change", renderInbox);
renderInbox({ items: [], unread: 0, hasMore: false });
$("read-all").addEventListener("click", () => tidings.inbox.readAll().catch(report));

// Web Push while this tab is closed (docs/push.md): the service worker lives
// beside the client (/client/tidings-sw.js), so its scope is /client/.
const PUSH_OPTIONS = { serviceWorker: "/client/tidings-sw.js", scope: "/client/" };
const pushSwitch = /** @type {HTMLInputElement} */ ($("push-switch"));
pushSwitch.disabled = !tidings.push.supported;
$("push-status").textContent = tidings.push.supported ? "" : "This browser has no Web Push.";
if (tidings.push.supported) {
  navigator.serviceWorker.getRegistration("/client/").then(async (reg) => {
    pushSwitch.checked = Boolean(reg && await reg.pushManager.getSubscription());
  }).catch(() => {});
}
pushSwitch.addEventListener("change", async () => {
  const on = pushSwitch.checked;
  $("push-status").textContent = on ? "subscribing…" : "";
  try {
    if (on) {
      await tidings.push.enable(PUSH_OPTIONS);
      $("push-status").textContent = "On: notifications reach this browser while the tab is closed.";
    } else {
      await tidings.push.disable(PUSH_OPTIONS);
    }
  } catch (e) {
    pushSwitch.checked = !on;
    $("push-status").textContent = `Could not ${on ? "enable" : "disable"}: ${e.message}`;
  }
});
$("load-more").addEventListener("click", () => tidings.inbox.loadMore().catch(report));

let toastTimer = 0;
tidings.on("notification", (n) => {
  if (n.recovered || n.read) return;
  const toast = $("toast");
  toast.textContent = n.title || "New notification";
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, 4000);
});

// -- topic feed and publish -------------------------------------------------------

let current = null;

function showMessage(msg) {
  const li = document.createElement("li");
  li.dataset.topic = msg.topic;
  li.dataset.offset = msg.offset;
  const topic = document.createElement("span");
  topic.className = "topic";
  topic.textContent = msg.topic;
  const data = document.createElement("span");
  data.className = "data";
  const value = msg.data !== undefined ? msg.data : msg.data_b64;
  data.textContent = typeof value === "string" ? value
    : value && typeof value === "object" && typeof value.text === "string" ? value.text
      : JSON.stringify(value);
  const when = document.createElement("span");
  when.className = "time";
  when.textContent = time(msg.ts);
  li.append(topic, data);
  if (msg.retained) {
    const tag = document.createElement("span");
    tag.className = "retained";
    tag.textContent = "retained";
    li.append(tag);
  }
  li.append(when);
  const feed = $("feed");
  feed.append(li);
  while (feed.children.length > 200) feed.firstElementChild.remove();
  feed.scrollTop = feed.scrollHeight;
}

async function follow(filter) {
  $("pub-error").textContent = "";
  if (current) await tidings.unsubscribe(current).catch(report);
  current = null;
  $("feed").replaceChildren();
  try {
    await tidings.subscribe(filter, showMessage);
    current = filter;
  } catch (e) {
    report(e);
  }
}

$("subscribe-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  follow($("filter").value.trim());
});

$("publish-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("pub-text").value;
  if (!text) return;
  $("pub-error").textContent = "";
  try {
    await tidings.publish($("pub-topic").value.trim(), { text }, { retain: $("pub-retain").checked });
    $("pub-text").value = "";
  } catch (e) {
    report(e);
  }
});

function report(e) {
  $("pub-error").textContent = e && e.code ? `${e.code}: ${e.message}` : String(e);
}

follow($("filter").value.trim());
