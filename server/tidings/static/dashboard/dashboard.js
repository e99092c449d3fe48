// The Tidings dashboard: live figures from the node's HTTP API, polled. The
// session cookie authorises GET requests; a change (cancel) also sends
// X-Tidings-Dashboard, which no other site can make a browser send.
/* global uPlot */

const POLL_MS = 2000;
const WINDOW_S = 300; // seconds of traffic the chart shows
const $ = (id) => document.getElementById(id);

async function get(path) {
  const res = await fetch(path, { credentials: "same-origin" });
  if (res.status === 401) { location.href = "/dashboard"; throw new Error("signed out"); }
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en", { maximumFractionDigits: 1 }) : "–");

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function rows(tbody, list, make) {
  tbody.replaceChildren(...list.map((x, i) => {
    const tr = document.createElement("tr");
    tr.append(...make(x, i));
    return tr;
  }));
}

// -- traffic ------------------------------------------------------------------------------

const series = { t: [], in: [], out: [] };
let last = null;
let chart = null;

function drawChart() {
  if (typeof uPlot === "undefined") return; // a checkout without client_js's npm packages
  const el = $("traffic-chart");
  const data = [series.t, series.in, series.out];
  if (chart === null) {
    chart = new uPlot({
      width: Math.max(320, el.clientWidth), height: 220,
      series: [{}, { label: "in / s", stroke: "#3b6ef5", width: 2 },
        { label: "out / s", stroke: "#16a34a", width: 2 }],
      axes: [{}, { size: 60 }],
    }, data, el);
  } else {
    chart.setData(data);
  }
}

async function traffic() {
  const s = await get("/v1/dashboard/summary");
  $("node").textContent = s.node;
  $("conn-ws").textContent = fmt(s.connections.ws);
  $("conn-mqtt").textContent = fmt(s.connections.mqtt);
  if (last !== null && s.ts > last.ts) {
    const dt = s.ts - last.ts;
    const rin = Math.max(0, (s.messages_in - last.messages_in) / dt);
    const rout = Math.max(0, (s.messages_out - last.messages_out) / dt);
    $("rate-in").textContent = fmt(rin);
    $("rate-out").textContent = fmt(rout);
    series.t.push(s.ts); series.in.push(rin); series.out.push(rout);
    while (series.t.length && series.t[0] < s.ts - WINDOW_S) {
      series.t.shift(); series.in.shift(); series.out.shift();
    }
    drawChart();
  }
  last = s;
}

// -- notifications ------------------------------------------------------------------------

const FUNNEL = ["targets", "pushed", "held", "silent", "suppressed", "delivered", "opened",
  "clicked", "dismissed"];

function interval(r) {
  const box = document.createElement("span");
  box.className = "interval";
  box.title = `${(100 * r.rate).toFixed(1)}% (95% CI ${(100 * r.low).toFixed(1)}-${(100 * r.high).toFixed(1)}%)`;
  const span = document.createElement("span");
  span.style.left = `${100 * r.low}%`;
  span.style.width = `${100 * (r.high - r.low)}%`;
  const mark = document.createElement("i");
  mark.style.left = `${100 * r.rate}%`;
  box.append(span, mark);
  return box;
}

function variantsTable(id, stats) {
  if (!stats || !Array.isArray(stats.variants) || stats.variants.length === 0) return null;
  const wrap = document.createElement("div");
  const h = document.createElement("h3");
  h.textContent = `${id}: ${stats.metric}, winner ${stats.winner ?? "not yet"}`;
  const table = document.createElement("table");
  table.className = "table";
  const tbody = document.createElement("tbody");
  rows(tbody, stats.variants, (v) => {
    const rate = v.rates?.[stats.metric];
    const bar = document.createElement("td");
    if (rate) bar.append(interval(rate), ` ${(100 * rate.rate).toFixed(1)}%`);
    const p = v.vs_control ? `p=${v.vs_control.p_value.toPrecision(2)}` : "control";
    return [cell(v.name), cell(fmt(v.targets)), bar, cell(p)];
  });
  table.append(tbody);
  wrap.append(h, table);
  return wrap;
}

async function recent() {
  const list = await get("/v1/notifications?limit=10");
  const items = list.notifications ?? [];
  const stats = await Promise.all(items.map((n) => get(`/v1/notifications/${encodeURIComponent(n.id)}/stats`)
    .catch(() => null)));
  rows($("recent").tBodies[0], items, (n, i) => {
    const s = { ...(n.outcomes ?? {}), ...n, ...(stats[i] ?? {}) };
    const silent = (s.silent_quiet_hours ?? 0) + (s.silent_capped ?? 0);
    const values = { ...s, silent: s.silent ?? silent, suppressed: s.suppressed ?? s.suppressed_category };
    return [cell(n.id), cell(n.status ?? "sent"), ...FUNNEL.map((k) => cell(fmt(values[k] ?? 0)))];
  });
  const tables = items.map((n, i) => variantsTable(n.id, stats[i])).filter(Boolean);
  $("variants").replaceChildren(...tables);
}

async function categories() {
  const { categories: cats } = await get("/v1/stats/categories");
  const names = Object.keys(cats).sort();
  rows($("categories").tBodies[0], names, (c) => [cell(c),
    ...["notifications", "targets", "delivered", "opened", "clicked", "dismissed"].map((k) => cell(fmt(cats[c][k] ?? 0)))]);
}

async function cancel(id) {
  const res = await fetch(`/v1/notifications/${encodeURIComponent(id)}`, {
    method: "DELETE", credentials: "same-origin", headers: { "X-Tidings-Dashboard": "1" } });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    $("sched-error").textContent = `could not cancel ${id}: ${body.error?.message ?? res.status}`;
  } else {
    $("sched-error").textContent = "";
  }
  await scheduled();
}

async function scheduled() {
  const list = await get("/v1/notifications?status=scheduled&limit=50");
  const items = list.notifications ?? [];
  rows($("scheduled").tBodies[0], items, (n) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Cancel";
    button.dataset.cancel = n.id;
    button.addEventListener("click", () => cancel(n.id));
    const td = document.createElement("td");
    td.append(button);
    const due = n.due ? new Date(n.due * 1000).toLocaleString() : "–";
    return [cell(n.id), cell(n.title ?? ""), cell(due), td];
  });
}

// -- the loop -----------------------------------------------------------------------------

async function tick() {
  const parts = [traffic(), recent(), categories(), scheduled()];
  const results = await Promise.allSettled(parts);
  const failed = results.filter((r) => r.status === "rejected");
  $("updated").textContent = failed.length
    ? `update failed: ${failed[0].reason?.message ?? failed[0].reason}`
    : `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.ticks = String(Number(document.body.dataset.ticks ?? 0) + 1);
}

tick();
setInterval(tick, POLL_MS);
