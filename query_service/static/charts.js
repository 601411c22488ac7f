// Small hand-written SVG line charts for the dashboard: no chart library, since the page loads nothing from
// elsewhere (its CSP allows only its own origin). A chart is drawn at the pixel width of its box, so text
// keeps its real size from a phone to a laptop; each has a title, a text description for screen readers,
// axis labels with units, and a legend with the latest values. Uses el() from auth.js.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_H = 190;
const MIN_SPAN_S = 20;
const MARGIN = { left: 28, right: 14, top: 12, bottom: 40 };  // left: before the tick labels

function svgEl(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function niceStep(max, ticks) {
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const n = raw / mag;
  return (n <= 1 ? 1 : n <= 2 ? 2 : n <= 5 ? 5 : 10) * mag;
}

function fmtClock(t, seconds) {
  const d = new Date(t * 1000);
  const two = (x) => String(x).padStart(2, "0");
  return two(d.getHours()) + ":" + two(d.getMinutes()) + (seconds ? ":" + two(d.getSeconds()) : "");
}

function fmtCount(v) {
  return v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k" : String(Math.round(v * 100) / 100);
}

function latest(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

// spec: {id, title, yLabel, fmt, t: [epoch s], lines: [{key, label, values, cls}], forecast: {to: [t, v]} | null}
function drawChart(svg, spec, width) {
  const t = spec.t;
  const w = Math.max(240, Math.floor(width));
  const t1 = t[t.length - 1];
  const t0 = Math.min(t[0], t1 - MIN_SPAN_S);  // a few seconds of history are not stretched into a trend
  const tEnd = spec.forecast ? spec.forecast.to[0] : t1;
  let max = 0;
  for (const line of spec.lines) for (const v of line.values) if (v !== null && v > max) max = v;
  if (spec.forecast) max = Math.max(max, spec.forecast.to[1]);
  const step = niceStep(max > 0 ? max * 1.05 : 1, 4);
  const top = Math.max(step, Math.ceil((max > 0 ? max * 1.05 : 1) / step) * step);
  const ticks = [];
  for (let i = 0; i * step <= top + step / 2; i++) ticks.push([i * step, (spec.tick || spec.fmt)(i * step)]);
  // Room for the longest tick label (about 6.5 px a character at 11 px) and the rotated axis title.
  const left = MARGIN.left + Math.ceil(Math.max(...ticks.map(([, text]) => text.length)) * 6.5);
  const plotW = w - left - MARGIN.right, plotH = CHART_H - MARGIN.top - MARGIN.bottom;
  const x = (tt) => left + ((tt - t0) / (tEnd - t0)) * plotW;
  const y = (v) => MARGIN.top + plotH - (v / top) * plotH;
  const titleId = "chart-" + spec.id + "-title", descId = "chart-" + spec.id + "-desc";
  const desc = spec.lines.map((l) => `${l.label}: now ${spec.fmt(latest(l.values))}`).join("; ") +
    `; ${t.length} points from ${fmtClock(t[0], true)} to ${fmtClock(t1, true)}` +
    (spec.forecast ? `; ${spec.forecast.label}` : "");
  svg.setAttribute("viewBox", `0 0 ${w} ${CHART_H}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", CHART_H);
  svg.setAttribute("aria-labelledby", titleId + " " + descId);
  const grid = svgEl("g", { class: "grid" });
  for (const [v, text] of ticks) {
    grid.append(svgEl("line", { x1: left, x2: left + plotW, y1: y(v), y2: y(v) }),
                svgEl("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, text));
  }
  const seconds = tEnd - t0 < 600;
  const gaps = Math.max(1, Math.min(4, Math.floor(plotW / (seconds ? 85 : 60))));  // labels never overlap
  for (let i = 0; i <= gaps; i++) {
    const tt = t0 + ((tEnd - t0) * i) / gaps;
    grid.append(svgEl("text", { x: x(tt), y: MARGIN.top + plotH + 16,
                                "text-anchor": i === 0 ? "start" : i === gaps ? "end" : "middle" }, fmtClock(tt, seconds)));
  }
  const axes = svgEl("g", { class: "axis" },
    svgEl("line", { x1: left, x2: left, y1: MARGIN.top, y2: MARGIN.top + plotH }),
    svgEl("line", { x1: left, x2: left + plotW, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH }),
    svgEl("text", { class: "axis-label", x: left + plotW / 2, y: CHART_H - 4, "text-anchor": "middle" },
          "time (local)"),
    svgEl("text", { class: "axis-label", "text-anchor": "middle",
                    transform: `translate(12 ${MARGIN.top + plotH / 2}) rotate(-90)` }, spec.yLabel));
  const series = spec.lines.map((line) => {
    const g = svgEl("g", { class: "series " + line.cls, "data-series": line.key });
    let run = [], count = 0, last = null;
    const flush = () => {
      if (run.length > 1) g.append(svgEl("polyline", { points: run.join(" ") }));
      else if (run.length === 1) g.append(svgEl("circle", { r: 2.5, cx: run[0].split(",")[0], cy: run[0].split(",")[1] }));
      run = [];
    };
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) { flush(); return; }
      run.push(`${x(t[i]).toFixed(1)},${y(v).toFixed(1)}`);
      count++;
      last = [x(t[i]), y(v)];
    });
    flush();
    if (last) g.append(svgEl("circle", { class: "now", r: 3, cx: last[0].toFixed(1), cy: last[1].toFixed(1) }));
    g.setAttribute("data-points", count);
    return g;
  });
  const extra = [];
  if (!spec.lines.some((line) => latest(line.values) !== null)) {
    extra.push(svgEl("text", { class: "empty", x: left + plotW / 2, y: MARGIN.top + plotH / 2, "text-anchor": "middle" },
                     "no figures reported yet"));
  }
  if (spec.forecast) {
    const [ft, fv] = spec.forecast.to, from = spec.forecast.from;
    extra.push(svgEl("line", { class: "now-line", x1: x(t1), x2: x(t1), y1: MARGIN.top, y2: MARGIN.top + plotH }),
               svgEl("g", { class: "series forecast", "data-series": "forecast", "data-points": 2 },
                     svgEl("polyline", { points: `${x(from[0]).toFixed(1)},${y(from[1]).toFixed(1)} ` +
                                                 `${x(ft).toFixed(1)},${y(fv).toFixed(1)}` })));
  }
  svg.replaceChildren(svgEl("title", { id: titleId }, spec.title + " (" + spec.yLabel + ")"),
                      svgEl("desc", { id: descId }, desc), grid, axes, ...extra, ...series);
}

function chartFigure(spec) {
  const legend = el("ul", { class: "legend" }, ...spec.lines.map((l) =>
    el("li", { "data-series": l.key }, el("span", { class: "swatch " + l.cls, "aria-hidden": "true" }),
       `${l.label} `, el("b", { text: spec.fmt(latest(l.values)) }))));
  if (spec.forecast || spec.forecastNote) {
    legend.append(el("li", { "data-series": "forecast" },
      el("span", { class: "swatch forecast", "aria-hidden": "true" }), spec.forecast ? spec.forecast.label : spec.forecastNote));
  }
  const svg = svgEl("svg", { class: "chart", role: "img", "data-chart": spec.id });
  const fig = el("figure", { class: "chart-box", "data-chart": spec.id },
    el("figcaption", {}, el("h3", { text: spec.title }), spec.note ? el("div", { class: "muted small", text: spec.note }) : null),
    svg, legend);
  fig.chartSpec = spec;
  return fig;
}
