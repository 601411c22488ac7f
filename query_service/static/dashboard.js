// The operator dashboard: reads /v1/dashboard every few seconds and redraws (its charts with charts.js).
// Every field is read defensively: figures the control plane adds later (days until full, events) show when present.
"use strict";

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);
let timer = null;

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function fmtDays(d) {
  if (d === null || d === undefined) return "–";
  return d >= 365 ? "> 1 year" : d.toFixed(1) + " days";
}

function fmtRate(r, unit) {
  if (r === null || r === undefined) return "–";
  return (r >= 100 ? r.toFixed(0) : r.toFixed(r >= 10 ? 1 : 2)) + " " + unit;
}

function pct(ratio) {
  return ratio === null || ratio === undefined ? "–" : (ratio * 100).toFixed(1) + " %";
}

function levelOf(ratio) {
  if (ratio === null || ratio === undefined) return "";
  return ratio >= 0.95 ? "crit" : ratio >= 0.8 ? "warn" : "ok";
}

function tile(label, value, opts) {
  opts = opts || {};
  return el("div", { class: "tile " + (opts.level || ""), "data-tile": opts.name, "data-value": opts.raw },
    el("div", { class: "label", text: label }),
    el("div", { class: "value", text: value }),
    opts.sub ? el("div", { class: "sub", text: opts.sub }) : null);
}

function bar(used, capacity, ratio) {
  const pctWidth = ratio ? Math.min(100, ratio * 100) : 0;
  const fill = el("div", { class: "fill " + levelOf(ratio) });
  fill.style.width = pctWidth.toFixed(1) + "%";
  return el("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": capacity || 0,
                     "aria-valuenow": used || 0, "aria-label": "used space" }, fill);
}

// The span of usage history behind the forecast; none is shown before forecast_min_span_s of it.
function historyNote(s) {
  if (s.forecast_history_s == null) return "";
  if (s.forecast_min_span_s != null && s.forecast_history_s < s.forecast_min_span_s)
    return ` · forecast after ${fmtSeconds(s.forecast_min_span_s)} of history (${fmtSeconds(s.forecast_history_s)} so far)`;
  return ` · from ${fmtSeconds(s.forecast_history_s)} of history`;
}

function renderSummary(s) {
  const box = $("summary");
  const down = s.nodes - s.healthy_nodes;
  box.replaceChildren(
    tile("nodes healthy", `${s.healthy_nodes} / ${s.nodes}`,
         { name: "healthy", raw: s.healthy_nodes, level: down ? "crit" : "ok",
           sub: `${s.regions} region${s.regions === 1 ? "" : "s"} · ${s.sets} set${s.sets === 1 ? "" : "s"}` }),
    tile("used", humanBytes(s.used_bytes),
         { name: "used", raw: s.used_bytes, level: levelOf(s.used_ratio),
           sub: `${pct(s.used_ratio)} of ${humanBytes(s.capacity_bytes)} · ${humanBytes(s.free_bytes)} free` }),
    tile("objects", String(s.objects), { name: "objects", raw: s.objects, sub: "replicas on all nodes" }),
    tile("days until full", fmtDays(s.days_until_full),
         { name: "days", raw: s.days_until_full, level: s.days_until_full != null && s.days_until_full < 7 ? "warn" : "",
           sub: (s.days_until_open_sets_close != null ? "open sets close in " + fmtDays(s.days_until_open_sets_close)
                                                      : "soonest node") + historyNote(s) }),
    tile("uploads", fmtRate(s.uploads_per_s, "/s"), { name: "uploads", raw: s.uploads_per_s,
         sub: `${fmtRate(s.replicated_per_s, "copies/s")}` }),
    tile("serving", fmtRate(s.requests_per_s, "req/s"), { name: "serving", raw: s.requests_per_s,
         sub: humanBytes(s.bytes_per_s) + "/s" }),
    tile("replication backlog", String(s.pending_replicas),
         { name: "pending", raw: s.pending_replicas, level: s.pending_replicas ? "warn" : "ok",
           sub: "oldest " + fmtSeconds(s.oldest_pending_s) +
                (s.backfill_replicas ? ` · backfill ${s.backfill_replicas} apart` : "") }),
    tile("under-replicated", String(s.under_replicated),
         { name: "under", raw: s.under_replicated, level: s.under_replicated ? "warn" : "ok", sub: "images" }),
    tile("replication lag", fmtSeconds(s.replication_lag_p50_s),
         { name: "lag", raw: s.replication_lag_p50_s, sub: "median · max " + fmtSeconds(s.replication_lag_max_s) }),
  );
  const overall = $("overall");
  overall.textContent = down ? `${down} node${down > 1 ? "s" : ""} down` : "all nodes healthy";
  overall.className = "pill " + (down ? "crit" : "ok");
}

function renderRegions(regions) {
  $("regions").replaceChildren(...regions.map((r) =>
    tile(r.region, `${r.healthy_nodes} / ${r.nodes} up`,
         { name: "region-" + r.region, raw: r.used_bytes, level: r.healthy_nodes < r.nodes ? "crit" : levelOf(r.used_ratio),
           sub: `${humanBytes(r.used_bytes)} of ${humanBytes(r.capacity_bytes)} (${pct(r.used_ratio)})` })));
}

function nodeCard(n) {
  const health = n.healthy ? "healthy" : "down";
  const fields = [
    ["heartbeat", n.heartbeat_age_s === null ? "never" : fmtSeconds(n.heartbeat_age_s) + " ago", "heartbeat_age_s", n.heartbeat_age_s],
    ["used", humanBytes(n.used_bytes), "used_bytes", n.used_bytes],
    ["free", humanBytes(n.free_bytes), "free_bytes", n.free_bytes],
    ["capacity", humanBytes(n.capacity_bytes), "capacity_bytes", n.capacity_bytes],
    ["objects", String(n.objects), "objects", n.objects],
    // Storage tiers: hot always, cold only on a node with a cold directory; variants are the hot tier's cache.
    ...Object.entries(n.tiers || {}).map(([tier, t]) =>
      [tier + " tier", `${humanBytes(t.used_bytes)} · ${t.originals} originals`,
       "tier_" + tier + "_used_bytes", t.used_bytes]),
    ["variant cache", humanBytes(n.variant_bytes || 0), "variant_bytes", n.variant_bytes],
    ["days until full", fmtDays(n.days_until_full), "days_until_full", n.days_until_full],
    ["growth", n.growth_bytes_per_day == null ? "–" : humanBytes(n.growth_bytes_per_day) + "/day",
     "growth_bytes_per_day", n.growth_bytes_per_day],
    ["pending copies", String(n.pending_replicas ?? 0), "pending_replicas", n.pending_replicas],
    ["serving", fmtRate(n.requests_per_s, "req/s"), "requests_per_s", n.requests_per_s],
    ["replication lag", fmtSeconds(n.replication_lag_p50_s), "replication_lag_p50_s", n.replication_lag_p50_s],
  ];
  const dl = el("dl", { class: "kv" });
  for (const [label, text, name, raw] of fields) {
    dl.append(el("dt", { text: label }), el("dd", { "data-field": name, "data-value": raw ?? "", text }));
  }
  return el("article", { class: "node " + health, "data-node-id": n.node_id, "data-healthy": String(n.healthy) },
    el("header", {},
      el("h3", { text: n.node_id }),
      el("span", { class: "badge " + (n.healthy ? "ok" : "crit"), "data-field": "health", text: health }),
      el("span", { class: "badge state-" + n.state, "data-field": "state", text: n.state })),
    el("div", { class: "muted small", text: `${n.region} · ${n.base_url}` }),
    bar(n.used_bytes, n.capacity_bytes, n.used_ratio),
    el("div", { class: "small", text: `${pct(n.used_ratio)} used` }),
    dl);
}

function renderSets(sets, nodes) {
  const byId = Object.fromEntries(nodes.map((n) => [n.node_id, n]));
  $("sets").replaceChildren(...sets.map((s) => el("section", { class: "set", "data-set-id": s.set_id },
    el("h3", {}, `${s.set_id} `, el("span", { class: "badge state-" + (s.state || "unknown"), text: s.state || "?" }),
       el("span", { class: "muted small",
                    text: ` ${s.regions.join(", ")} · ${humanBytes(s.used_bytes)} of ${humanBytes(s.capacity_bytes)}` +
                          (s.days_until_full != null ? ` · full in ${fmtDays(s.days_until_full)}` : "") +
                          (s.days_until_closed != null ? ` · closes in ${fmtDays(s.days_until_closed)}` : "") })),
    el("div", { class: "cards" }, ...s.node_ids.map((id) => nodeCard(byId[id]))))));
}

function renderEvents(events) {
  const box = $("events");
  if (!events || !events.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No provisioning or repair events yet." }));
    return;
  }
  const cols = ["created_at", "kind", "state", "set_id", "node_id", "reason", "outcome"];
  const head = el("tr", {}, ...cols.map((c) => el("th", { text: c.replace("_", " ") })));
  const rows = events.map((ev) => el("tr", {}, ...cols.map((c) => el("td", { text: ev[c] ?? "" }))));
  box.replaceChildren(el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))));
}

// --- Charts (drawn by charts.js) of the history every /v1/dashboard answer carries: the query service keeps
// it, so a reload shows it at once.
let lastHistory = null;

function chartSpecs(h, summary) {
  const s = h.series, t = h.t;
  const usedNow = latest(s.used_bytes);
  const f = h.forecast || {};
  let forecast = null, forecastNote = null;
  if (f.growth_bytes_per_day !== null && f.growth_bytes_per_day !== undefined && usedNow !== null) {
    const t1 = t[t.length - 1];
    const ahead = (t1 - Math.min(t[0], t1 - MIN_SPAN_S)) / 3;  // the projection takes the last quarter of the chart
    forecast = { from: [t1, usedNow], to: [t1 + ahead, usedNow + (f.growth_bytes_per_day * ahead) / 86400],
                 label: `forecast +${humanBytes(f.growth_bytes_per_day)}/day · soonest node full in ` +
                        fmtDays(f.days_until_full) };
  } else {
    forecastNote = "forecast: not enough history yet";
  }
  const capacity = latest(s.capacity_bytes) ?? summary.capacity_bytes;
  // Backfill (a new or replacement member catching up) is charted apart from replication, when reported.
  const optional = (key, label, cls) => s[key] && s[key].some((v) => v !== null) ? [{ key, label, values: s[key], cls }] : [];
  return [
    { id: "rates", title: "Served, uploaded, copied", yLabel: "per second", fmt: (v) => v === null ? "–" : fmtCount(v),
      note: `serving ${humanBytes(summary.bytes_per_s)}/s now`, t,
      lines: [{ key: "requests_per_s", label: "served req/s", values: s.requests_per_s, cls: "c1" },
              { key: "uploads_per_s", label: "uploads/s", values: s.uploads_per_s, cls: "c2" },
              { key: "replicated_per_s", label: "copies/s", values: s.replicated_per_s, cls: "c3" },
              ...optional("backfilled_per_s", "backfill/s", "c4")] },
    { id: "used", title: "Used space", yLabel: "bytes", fmt: humanBytes, t, forecast, forecastNote,
      tick: (v) => humanBytes(v).replace(/\.0+ /, " "),
      note: `of ${humanBytes(capacity)} capacity`,
      lines: [{ key: "used_bytes", label: "used", values: s.used_bytes, cls: "c1" }] },
    { id: "lag", title: "Replication lag", yLabel: "seconds", fmt: fmtSeconds, t,
      note: "from upload to the copy landing on a replica",
      lines: [{ key: "replication_lag_p50_s", label: "median", values: s.replication_lag_p50_s, cls: "c1" },
              { key: "replication_lag_max_s", label: "max", values: s.replication_lag_max_s, cls: "c2" }] },
    { id: "backlog", title: "Replication backlog", yLabel: "copies", fmt: (v) => v === null ? "–" : fmtCount(v), t,
      note: `oldest waiting ${fmtSeconds(summary.oldest_pending_s)}`,
      lines: [{ key: "pending_replicas", label: "new uploads' copies", values: s.pending_replicas, cls: "c2" },
              ...optional("backfill_replicas", "backfill", "c4")] },
  ];
}

function renderCharts(h, summary) {
  const box = $("charts");
  lastHistory = [h, summary];
  if (!h || !h.t || !h.t.length) {
    box.replaceChildren(el("p", { class: "muted", text: "No history yet: the first samples arrive within seconds." }));
    return;
  }
  const minutes = Math.round(h.window_s / 60);
  $("charts-title").textContent = minutes === 60 ? "Last hour" : `Last ${minutes} min`;
  const figures = chartSpecs(h, summary).map(chartFigure);
  box.replaceChildren(...figures);
  for (const fig of figures) {  // sized to the box they got, so text stays its real size on a phone
    const style = getComputedStyle(fig);
    const inner = fig.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    drawChart(fig.querySelector("svg"), fig.chartSpec, inner);
  }
}

window.addEventListener("resize", () => { if (lastHistory) renderCharts(...lastHistory); });

function showLogin(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  if (timer) { clearTimeout(timer); timer = null; }
}

async function refresh() {
  if (!minicdnAuth.key()) { showLogin(""); return; }
  try {
    const data = await minicdnAuth.api("GET", "/v1/dashboard");
    $("login").hidden = true;
    $("main").hidden = false;
    renderSummary(data.summary);
    $("charts").hidden = $("charts-title").hidden = !data.history;  // a server without history: no charts
    if (data.history) renderCharts(data.history, data.summary);
    renderRegions(data.regions);
    renderSets(data.sets, data.nodes);
    renderEvents(data.events);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("updated").dataset.generatedAt = data.generated_at;
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      minicdnAuth.setKey("");
      showLogin(err.status === 403 ? "That key has no admin scope." : "Unknown or revoked key.");
      return;
    }
    $("updated").textContent = "update failed: " + err.message + " (retrying)";
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

$("interval").textContent = String(REFRESH_MS / 1000);
minicdnAuth.bindLogin($("login-form"), refresh);
$("logout").addEventListener("click", () => { minicdnAuth.setKey(""); showLogin(""); });
refresh();
