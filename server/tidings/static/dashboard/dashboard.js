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

// The funnel's steps, as GET /v1/notifications/{id}/stats counts them.
const FUNNEL = ["targets", "pushed", "held", "silent", "suppressed", "delivered", "opened",
  "clicked", "dismissed", "feedback"];
const RECENT = 8; // notifications shown

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const pts = (d) => `${d > 0 ? "+" : d < 0 ? "−" : "±"}${Math.abs(100 * d).toFixed(1)} pts`;

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A rate with its 95% interval: a bar (the interval shaded, the rate marked) and the %. */
function rateCell(r) {
  const td = el("td", "rate");
  if (!r) { td.textContent = "–"; return td; }
  const box = el("span", "interval");
  box.title = `${pct(r.rate)} (95% interval ${pct(r.low)} – ${pct(r.high)})`;
  Object.assign(box.dataset, { rate: String(r.rate), low: String(r.low), high: String(r.high) });
  const span = el("span");
  span.style.left = `${100 * r.low}%`;
  span.style.width = `${Math.max(0.5, 100 * (r.high - r.low))}%`;
  const mark = el("i");
  mark.style.left = `calc(${100 * r.rate}% - 1px)`;
  box.append(span, mark);
  td.append(box, el("span", "pct", pct(r.rate)));
  return td;
}

/**
 * The stats in the shape ({total, variants, metric, winner}); when its
 * /stats could not be read, the item's own counts stand in for the total (no rates).
 */
function normalise(item, stats) {
  if (stats && stats.total) return stats;
  const o = item.outcomes ?? {};
  const flat = { ...(stats ?? {}), ...item };
  const total = { ...flat, pushed: o.pushed ?? 0, held: o.held ?? 0,
    silent: (o.silent_quiet_hours ?? 0) + (o.silent_capped ?? 0),
    suppressed: o.suppressed_category ?? 0 };
  return { total, variants: [], metric: "opened", winner: null };
}

function funnelBars(total) {
  const wrap = el("div", "funnel");
  const top = Math.max(1, total.targets ?? 0);
  for (const k of ["targets", "delivered", "opened", "clicked"]) {
    const row = el("div", "step");
    const bar = el("span", `fill ${k}`);
    bar.style.width = `${(100 * (total[k] ?? 0)) / top}%`;
    row.append(el("span", "label", k), el("span", "track"), el("b", "", fmt(total[k] ?? 0)));
    row.children[1].append(bar);
    wrap.append(row);
  }
  return wrap;
}

function verdict(stats) {
  const p = el("p", "verdict");
  if (!stats.variants.length) return null;
  if (stats.winner) {
    const w = stats.variants.find((v) => v.name === stats.winner);
    const vs = w?.vs_control;
    p.classList.add("won");
    p.textContent = `Winner by ${stats.metric}: ${stats.winner}` +
      (vs ? ` (${pts(vs.diff)} against the control, p = ${vs.p_value.toPrecision(2)})` : "");
  } else {
    p.textContent = `No winner by ${stats.metric} yet: no variant beats the others at p < 0.05.`;
  }
  return p;
}

/** One notification: its funnel (total and per variant), rates, comparison, verdict. */
function notificationCard(item, raw) {
  const stats = normalise(item, raw);
  const card = el("article", "notification");
  card.dataset.id = item.id;
  const head = el("header");
  const created = item.created; // seconds
  head.append(el("b", "nid", item.id), el("span", `status ${item.status ?? "sent"}`, item.status ?? "sent"),
    el("span", "category", item.category || "(no category)"),
    el("span", "muted", created ? new Date(created * 1000).toLocaleString() : ""));
  if (item.status === "scheduled" || item.status === "cancelled") { // nothing sent: no funnel
    const at = item.send_at ? new Date(item.send_at * 1000).toLocaleString() : "–";
    card.append(head, el("p", "when", item.status === "scheduled"
      ? `Scheduled for ${at}, to ${fmt(item.targets)} users.` : "Cancelled before it was sent."));
    return card;
  }
  const table = el("table", "table stats");
  const thead = el("thead");
  const hr = el("tr");
  hr.append(el("th", "", ""), ...FUNNEL.map((k) => el("th", "", k)),
    el("th", "", `${stats.metric} rate`), el("th", "", "vs control"));
  thead.append(hr);
  const tbody = el("tbody");
  const groups = [{ name: "total", ...stats.total }, ...stats.variants];
  rows(tbody, groups, (g, i) => {
    const vs = g.vs_control;
    const cmp = i === 0 ? "" : vs ? `${pts(vs.diff)}, p = ${vs.p_value.toPrecision(2)}` : "control";
    return [cell(i === 0 ? "total" : g.name), ...FUNNEL.map((k) => cell(fmt(g[k] ?? 0))),
      rateCell(g.rates?.[stats.metric]), cell(cmp)];
  });
  [...tbody.rows].forEach((tr, i) => {
    tr.dataset.group = i === 0 ? "total" : groups[i].name;
    if (i > 0 && groups[i].name === stats.winner) tr.classList.add("winner");
  });
  table.append(thead, tbody);
  const body = el("div", "body");
  body.append(funnelBars(stats.total), table);
  card.append(head, body);
  const v = verdict(stats);
  if (v) card.append(v);
  return card;
}

async function recent() {
  const { notifications: items } = await get(`/v1/dashboard/recent?limit=${RECENT}`);
  const stats = await Promise.all(items.map((n) =>
    get(`/v1/notifications/${encodeURIComponent(n.id)}/stats`).catch(() => null)));
  const cards = items.map((n, i) => notificationCard(n, stats[i]));
  $("recent").replaceChildren(...(cards.length ? cards : [el("p", "muted", "No notifications yet.")]));
}

async function categories() {
  const { categories: cats } = await get("/v1/stats/categories");
  const names = Object.keys(cats).sort();
  rows($("categories").tBodies[0], names, (c) => [cell(c),
    ...["notifications", "targets", "delivered", "opened", "clicked", "dismissed", "feedback"]
      .map((k) => cell(fmt(cats[c][k] ?? 0))),
    rateCell(cats[c].rates?.opened), rateCell(cats[c].rates?.clicked)]);
}

async function cancel(id, button) {
  button.disabled = true;
  const res = await fetch(`/v1/notifications/${encodeURIComponent(id)}`, {
    method: "DELETE", credentials: "same-origin", headers: { "X-Tidings-Dashboard": "1" } });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    $("sched-error").textContent = `could not cancel ${id}: ${body.error?.message ?? res.status}`;
    button.disabled = false;
  } else {
    $("sched-error").textContent = "";
  }
  await Promise.allSettled([scheduled(), recent()]);
}

async function scheduled() {
  const list = await get("/v1/notifications?status=scheduled&limit=50");
  const items = list.notifications ?? [];
  $("sched-empty").hidden = items.length > 0;
  rows($("scheduled").tBodies[0], items, (n) => {
    const button = el("button", "", "Cancel");
    button.type = "button";
    button.dataset.cancel = n.id;
    button.addEventListener("click", () => cancel(n.id, button));
    const td = el("td");
    td.append(button);
    return [cell(n.id), cell(n.category || "–"), cell(fmt(n.targets)),
      cell(n.send_at ? new Date(n.send_at * 1000).toLocaleString() : "–"), td];
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
