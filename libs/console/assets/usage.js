// Usage, request history and the audit trail of a project: three pages of the console.
// Everything from the API goes into the page as text (`h`), never as HTML. Charts are
// uPlot (the classic script index.html loads, `window.uPlot`), each with a data table of
// the same numbers for screen readers and keyboards.

import { get, ApiError } from "./api.js";
import { h, mount, field, fmt, uid } from "./dom.js";
import { clearErrors, failure, formError, fromLocalInput, loading, placeName, showErr, toLocalInput } from "./ui.js";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const RANGES = {
  "24h": { label: "Last 24 hours", ms: DAY, by: "hour" },
  "7d": { label: "Last 7 days", ms: 7 * DAY, by: "hour" },
  "30d": { label: "Last 30 days", ms: 30 * DAY, by: "day" },
};
const PAGE = 50;

// ---- shared -----------------------------------------------------------------------------

// The render a `main` is showing: an answer that arrives after another page took over is
// dropped.
const live = new WeakMap();
function claim(main, ctx) {
  const token = {};
  live.set(main, token);
  disposeCharts();
  return () => live.get(main) === token && main.isConnected && (!ctx.isCurrent || ctx.isCurrent());
}

/** Replaces the `?query` of the current hash without a new render (focus stays put). */
function setQuery(params) {
  const [path] = location.hash.split("?");
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
  const hash = q.toString() ? `${path}?${q}` : path;
  if (hash !== location.hash) history.replaceState(history.state, "", hash);
}

async function loadKeys(pid) {
  try {
    const r = await get(`/projects/${encodeURIComponent(pid)}/keys`);
    return new Map((r?.data || []).map((k) => [k.id, k]));
  } catch {
    return new Map(); // the pages still work with raw ids
  }
}

const keyName = (keys, id) => (id && keys.get(id)?.name) || id || "—";

function keyLabel(k) {
  return `${k.name} (${k.hint})${k.status === "revoked" ? " — revoked" : ""}`;
}

function keyOptions(keys, selected) {
  return [{ value: "", label: "All keys" },
    ...[...keys.values()].map((k) => ({ value: k.id, label: keyLabel(k), selected: k.id === selected }))];
}

/** A `<table>` with a caption, column headers and, per row, a row header first. */
function table(caption, columns, rows, hideCaption) {
  return h("div", { class: "rpt-scroll table-wrap" },
    h("table", { tabindex: "0", class: "rpt-table" },
      h("caption", { class: hideCaption ? "sr-only" : null }, caption),
      h("thead", null, h("tr", null, columns.map((c, i) =>
        h("th", { scope: "col", class: i && c.num ? "num" : null }, c.label)))),
      h("tbody", null, rows.map((r) => h("tr", null, r.map((cell, i) => i === 0
        ? h("th", { scope: "row" }, cell)
        : h("td", { class: columns[i].num ? "num" : null }, cell)))))));
}

/** Loads the next page; focus goes to its first row (the button may disappear). */
async function loadMore(tbody, load) {
  const before = tbody.rows.length;
  await load();
  const cell = tbody.rows[before]?.cells[0];
  if (cell) {
    cell.tabIndex = -1;
    cell.focus();
  }
}

/** A datetime-local filter as the API takes it (RFC 3339); undefined when empty. */
const isoOf = (local) => fromLocalInput(local)?.toISOString();

// The moment of a logged request or event, to the second: the logs need the exact time,
// where ui.js `when` says "3 minutes ago".
const shortFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "numeric", minute: "2-digit", second: "2-digit" });
const stamp = (iso) => h("time", { datetime: iso, title: fmt.time(iso) }, iso ? shortFmt.format(new Date(iso)) : "—");

// ---- charts -----------------------------------------------------------------------------

const charts = new Set();
function disposeCharts() {
  for (const c of charts) c.dispose();
  charts.clear();
}

function uplotReady() {
  if (window.uPlot || document.readyState === "complete") return Promise.resolve(window.uPlot);
  return new Promise((ok) => window.addEventListener("load", () => ok(window.uPlot), { once: true }));
}

// Okabe–Ito colours (distinguishable with colour-blindness); overridable in charts.css.
const PALETTE = ["#0072b2", "#d55e00", "#007a5a", "#a6448a"];
const DASHES = [undefined, [8, 4], [2, 3], [12, 3, 2, 3]];

function cssVar(el, name, fallback) {
  return getComputedStyle(el).getPropertyValue(name).trim() || fallback;
}

const INTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9];

function compact(v) {
  const a = Math.abs(v);
  const o = a >= 1000 ? { notation: "compact", maximumFractionDigits: 1 } : a < 1 ? { maximumSignificantDigits: 3 } : { maximumFractionDigits: 2 };
  return v.toLocaleString("en-US", o);
}

/**
 * One chart: a titled section with the uPlot canvas and a `<details>` data table.
 * `xs` are bucket starts (ms); `series` = [{label, values, fmt, axis?}].
 */
function chart({ title, xs, xLabel, series, ints, unit, axisFmt = compact }) {
  const titleId = uid("chart");
  const plot = h("div", { class: "rpt-plot", role: "img",
    "aria-label": `${title}: a line chart over time of ${series.map((s) => s.label).join(", ")}. The table below lists the same values.` });
  const rows = xs.map((x, i) => [xLabel(x), ...series.map((s) => s.values[i] == null ? "—" : s.fmt(s.values[i]))]);
  const details = h("details", { class: "rpt-data" },
    h("summary", null, `Data table: ${title}`),
    table(`${title}${unit ? ` (${unit})` : ""}, per ${xLabel.unit}`, [{ label: xLabel.unit === "day" ? "Day (UTC)" : "Hour" },
      ...series.map((s) => ({ label: s.label, num: true }))], rows));
  const section = h("section", { class: "rpt-chart", "aria-labelledby": titleId },
    h("h3", { id: titleId }, unit ? `${title} (${unit})` : title), plot, details);

  let u = null;
  let ro = null;
  const state = {
    dispose() {
      ro?.disconnect();
      u?.destroy();
      u = ro = null;
    },
  };
  charts.add(state);

  // Drawn once the section is in the page (its width is known).
  state.draw = async () => {
    const uPlot = await uplotReady();
    if (!charts.has(state)) return;
    if (!uPlot) {
      plot.hidden = true;
      details.open = true;
      return;
    }
    const fg = cssVar(plot, "--rpt-axis", getComputedStyle(plot).color || "#333");
    const grid = cssVar(plot, "--rpt-grid", "rgba(128,128,128,0.25)");
    const size = () => ({ width: Math.max(200, Math.floor(plot.clientWidth)), height: plot.clientWidth < 480 ? 180 : 220 });
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const many = xs.length > 40;
    const opts = {
      ...size(),
      series: [
        { label: xLabel.unit === "day" ? "Day" : "Time", value: (_, v) => (v == null ? "—" : xLabel(v * 1000)) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: cssVar(plot, `--rpt-series-${i + 1}`, PALETTE[i]),
          width: 2,
          dash: DASHES[i],
          spanGaps: false,
          // Dense charts draw points only where a value stands alone (no line shows it).
          points: { show: !many, size: 5, ...(many ? { filter: () => isolated(s.values) } : {}) },
          value: (_, v) => (v == null ? "—" : s.fmt(v)),
        })),
      ],
      axes: [
        { ...axis },
        { ...axis, size: (_, vals) => 18 + 7.5 * Math.max(4, ...(vals || []).map((v) => v.length)), values: (_, splits) => splits.map((v) => axisFmt(v)), ...(ints ? { incrs: INTS } : {}) },
      ],
      scales: {
        x: { time: true },
        y: { range: (_, min, max) => uPlot.rangeNum(0, max > 0 ? max : 1, 0.1, true) },
      },
      cursor: { drag: { x: false, y: false } },
    };
    if (xLabel.unit === "day") opts.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");
    const data = [xs.map((x) => x / 1000), ...series.map((s) => s.values)];
    u = new uPlot(opts, data, plot);
    ro = new ResizeObserver(() => {
      if (!plot.isConnected) return state.dispose(), charts.delete(state);
      const s = size();
      if (u && (s.width !== u.width || s.height !== u.height)) u.setSize(s);
    });
    ro.observe(plot);
  };
  section.chart = state;
  return section;
}

function isolated(v) {
  return v.flatMap((x, i) => (x != null && v[i - 1] == null && v[i + 1] == null ? [i] : []));
}

// Bucket starts of a report's range, for filling the hours or days without requests.
function buckets(report, by) {
  const from = Date.parse(report.from);
  const to = Date.parse(report.to);
  const step = by === "day" ? DAY : HOUR;
  const start = by === "day" ? Math.floor(from / DAY) * DAY : from;
  const xs = [];
  for (let t = start; t < to; t += step) xs.push(t);
  return xs;
}

const hourFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "short", month: "short", day: "numeric", timeZone: "UTC" });
const hourLabel = Object.assign((t) => hourFmt.format(t), { unit: "hour" });
const dayLabel = Object.assign((t) => dayFmt.format(t), { unit: "day" });

// ---- usage ------------------------------------------------------------------------------

export async function renderUsage(main, ctx) {
  const current = claim(main, ctx);
  const pid = ctx.project.id;
  const q = ctx.query || new URLSearchParams();
  let range = RANGES[q.get("range")] ? q.get("range") : "24h";
  let keyId = q.get("key") || "";

  const rangeField = field("Range", { tag: "select", name: "range",
    options: Object.entries(RANGES).map(([v, r]) => ({ value: v, label: r.label, selected: v === range })) });
  const keyField = field("Key", { tag: "select", name: "key", options: [{ value: "", label: "All keys" }] });
  const results = h("div", { class: "rpt-results" }, loading());
  const said = h("p", { class: "sr-only", role: "status" });
  let show = null;
  mount(main,
    h("h2", null, "Usage"),
    h("p", { class: "rpt-lead" }, `Requests, tokens, cost and latency of ${ctx.project.name}, counted per UTC hour.`),
    h("form", { class: "rpt-filters", "aria-label": "Usage filters", onsubmit: (e) => { e.preventDefault(); show?.(); } },
      rangeField.row, keyField.row, h("div", { class: "rpt-actions" }, h("button", { type: "submit" }, "Refresh"))),
    said, results);

  const keys = await loadKeys(pid);
  if (!current()) return;
  if (keyId && !keys.has(keyId)) keys.set(keyId, { id: keyId, name: keyId, hint: "unknown key", status: "" });
  mount(keyField.input, keyOptions(keys, keyId).map((o) => h("option", { value: o.value, selected: o.selected }, o.label)));

  let seq = 0;
  show = async () => {
    const mine = ++seq;
    setQuery({ range: range === "24h" ? "" : range, key: keyId });
    results.setAttribute("aria-busy", "true");
    mount(results, loading("Loading usage…"));
    disposeCharts();
    try {
      const view = await usageView(pid, range, keyId, keys);
      if (!current() || mine !== seq) return;
      mount(results, view);
      said.textContent = `Usage of ${RANGES[range].label.toLowerCase()} shown.`;
      for (const s of results.querySelectorAll(".rpt-chart")) s.chart.draw();
    } catch (err) {
      if (current() && mine === seq) mount(results, failure(err));
    } finally {
      if (mine === seq) results.removeAttribute("aria-busy");
    }
  };
  rangeField.input.addEventListener("change", () => { range = rangeField.input.value; show(); });
  keyField.input.addEventListener("change", () => { keyId = keyField.input.value; show(); });
  await show();
}

async function usageView(pid, range, keyId, keys) {
  const r = RANGES[range];
  const base = keyId ? `/keys/${encodeURIComponent(keyId)}` : `/projects/${encodeURIComponent(pid)}`;
  const to = new Date();
  const from = new Date(to.getTime() - r.ms);
  const span = { from: from.toISOString(), to: to.toISOString() };
  const [series, byModel, byKey, spend] = await Promise.all([
    get(`${base}/usage`, { ...span, group_by: r.by }),
    get(`${base}/usage`, { ...span, group_by: "model" }),
    keyId ? null : get(`${base}/usage`, { ...span, group_by: "key" }),
    get(`${base}/spend`).catch((err) => ({ error: err })),
  ]);
  const t = series.totals;
  const who = keyId ? `key ${keyName(keys, keyId)}` : "all keys";
  const out = [
    h("h3", { class: "rpt-sub" }, `${r.label}, ${who}`),
    totalsList(t),
    spendView(spend, keyId ? "key" : "project"),
  ];
  if (!t.requests) {
    out.push(h("div", { class: "empty" }, h("p", null, "No requests in this range yet."),
      h("p", { class: "hint" }, "Requests made with this project's keys show up here within a few seconds.")));
    return out;
  }
  if (t.unpriced_requests) {
    out.push(h("p", { class: "rpt-note" },
      `${fmt.int(t.unpriced_requests)} request(s) used a model without a price and are counted at no cost.`));
  }
  out.push(h("div", { class: "rpt-charts" }, timeCharts(series, r.by)));
  out.push(breakdown("By model", byModel.data, (g) => g ?? "(no model named)", "Model"));
  if (byKey) out.push(breakdown("By key", byKey.data, (g) => keyName(keys, g), "Key"));
  return out;
}

function totalsList(t) {
  const pair = (k, v) => [h("dt", null, k), h("dd", null, v)];
  const l = t.latency_ms || {};
  return h("dl", { class: "rpt-totals", "aria-label": "Totals" },
    h("div", null, pair("Requests", fmt.int(t.requests))),
    h("div", null, pair("Errors", fmt.int(t.errors))),
    h("div", null, pair("Tokens", [fmt.int(t.total_tokens), " ",
      h("span", { class: "rpt-detail" }, `prompt ${fmt.int(t.prompt_tokens)} · completion ${fmt.int(t.completion_tokens)}`)])),
    h("div", null, pair("Cost", fmt.usd(t.cost_usd))),
    h("div", null, pair("Latency p50", fmt.ms(l.p50))),
    h("div", null, pair("Latency p95", fmt.ms(l.p95))),
    h("div", null, pair("Latency p99", fmt.ms(l.p99))));
}

function spendView(s, scope) {
  if (!s) return null;
  if (s.error) return h("p", { class: "rpt-note" }, `Spend is unavailable: ${s.error.message}`);
  const period = { day: "today (UTC)", month: "this month (UTC)", total: "in total" }[s.period] || s.period;
  const parts = [`Spent ${period}: ${fmt.usd(s.spent_usd)}`];
  if (s.budget_usd != null) {
    const pct = s.budget_usd > 0 ? (100 * s.spent_usd) / s.budget_usd : 0;
    parts.push(` of a ${fmt.usd(s.budget_usd)} budget (${pct.toLocaleString("en-US", { maximumFractionDigits: 1 })} %)`);
  } else {
    parts.push(`; no ${s.period === "total" ? "total" : s.period + "ly"} budget is set for this ${scope}`);
  }
  parts.push(".");
  if (s.reserved_usd > 0) parts.push(` ${fmt.usd(s.reserved_usd)} is reserved by gateways for requests in flight.`);
  const meterId = uid("meter");
  return h("section", { class: "rpt-spend", "aria-label": "Spend against budget" },
    h("p", null, parts.join("")),
    s.budget_usd != null ? h("div", { class: "rpt-meter" },
      h("label", { for: meterId }, "Budget used"),
      h("meter", { id: meterId, min: 0, max: s.budget_usd, value: Math.min(s.spent_usd, s.budget_usd),
        low: s.budget_usd * 0.5, high: s.budget_usd * 0.8, optimum: 0 },
      `${fmt.usd(s.spent_usd)} of ${fmt.usd(s.budget_usd)}`)) : null);
}

function timeCharts(report, by) {
  const xs = buckets(report, by);
  const at = new Map();
  for (const g of report.data) {
    const t = by === "day" ? Date.parse(`${g.group}T00:00:00Z`) : Date.parse(g.group);
    at.set(t, g);
  }
  const col = (f, empty = 0) => xs.map((x) => (at.has(x) ? f(at.get(x)) : empty));
  const label = by === "day" ? dayLabel : hourLabel;
  const lat = (p) => col((g) => g.latency_ms?.[p] ?? null, null);
  return [
    chart({ title: "Requests and errors", xs, xLabel: label, ints: true, series: [
      { label: "Requests", values: col((g) => g.requests), fmt: fmt.int },
      { label: "Errors", values: col((g) => g.errors), fmt: fmt.int }] }),
    chart({ title: "Tokens", xs, xLabel: label, ints: true, series: [
      { label: "Prompt tokens", values: col((g) => g.prompt_tokens), fmt: fmt.int },
      { label: "Completion tokens", values: col((g) => g.completion_tokens), fmt: fmt.int }] }),
    chart({ title: "Cost", unit: "USD", xs, xLabel: label, axisFmt: (v) => "$" + compact(v), series: [
      { label: "Cost", values: col((g) => g.cost_usd), fmt: fmt.usd }] }),
    chart({ title: "Latency", unit: "ms", xs, xLabel: label, series: [
      { label: "p50", values: lat("p50"), fmt: fmt.ms },
      { label: "p95", values: lat("p95"), fmt: fmt.ms },
      { label: "p99", values: lat("p99"), fmt: fmt.ms }] }),
  ];
}

function breakdown(title, groups, name, what) {
  const rows = [...groups]
    .sort((a, b) => b.requests - a.requests || b.cost_usd - a.cost_usd)
    .map((g) => [name(g.group), fmt.int(g.requests), fmt.int(g.errors), fmt.int(g.total_tokens),
      fmt.usd(g.cost_usd), fmt.ms(g.latency_ms?.p50), fmt.ms(g.latency_ms?.p95)]);
  const cols = [{ label: what }, ...["Requests", "Errors", "Tokens", "Cost", "Latency p50", "Latency p95"].map((label) => ({ label, num: true }))];
  const id = uid("bd");
  return h("section", { class: "rpt-breakdown", "aria-labelledby": id },
    h("h3", { id }, title),
    rows.length ? table(`Usage ${title.toLowerCase()}`, cols, rows, true) : h("p", { class: "empty" }, "Nothing to show."));
}

/**
 * The filtered, cursor-paged list of the Requests and Events pages: a filter form, a
 * status line, a table that grows by "Load more", and where an error shows (next to the
 * filter it names, else above the list). `fields` are `field()`s named as the API's query
 * parameters; `read()` gives their values (the keys are the filters the API may name in
 * an error); `row(item)` a `<tr>`. The elements are the page's to place; `load(true)`
 * starts over from the filters, `load(false)` appends the next page. An answer that a
 * newer `load(true)` overtook is dropped.
 */
function pagedList({ current, label, caption, tableClass, columns, fields, read, path, row, noun }) {
  const top = formError();
  const status = h("p", { class: "rpt-count", role: "status" });
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Load more");
  const listError = h("div");
  const tableBox = h("div", { class: "rpt-scroll table-wrap" },
    h("table", { tabindex: "0", class: `rpt-table ${tableClass}` },
      h("caption", null, caption),
      h("thead", null, h("tr", null, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      tbody));
  const form = h("form", { class: "rpt-filters", "aria-label": label, novalidate: true },
    fields.map((f) => f.row),
    h("div", { class: "rpt-actions" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("button", { type: "reset" }, "Clear")),
    top);

  let cursor = null;
  let shown = 0;
  let seq = 0;
  const load = async (reset) => {
    const mine = reset ? ++seq : seq;
    const f = read();
    if (reset) {
      cursor = null;
      shown = 0;
      tbody.replaceChildren();
      status.textContent = `Loading ${noun}s…`;
      // The page's address keeps the filters (`key` for key_id).
      setQuery(Object.fromEntries(Object.entries(f).map(([k, v]) => [k === "key_id" ? "key" : k, v])));
    }
    mount(listError);
    more.disabled = true;
    try {
      const page = await get(path, { ...f, limit: PAGE, cursor: reset ? undefined : cursor });
      if (!current() || mine !== seq) return;
      clearErrors(form, top);
      tbody.append(...page.data.map(row));
      shown += page.data.length;
      cursor = page.next_cursor;
      status.textContent = shown ? `Showing ${fmt.int(shown)} ${noun}${shown === 1 ? "" : "s"}${cursor ? " (more available)" : ""}.`
        : Object.values(f).some(Boolean) ? `No ${noun}s match these filters.` : `No ${noun}s yet.`;
      tableBox.hidden = !shown;
      more.hidden = !cursor;
    } catch (err) {
      if (!current() || mine !== seq) return;
      status.textContent = "";
      tableBox.hidden = !tbody.rows.length;
      if (reset) more.hidden = true;
      if (err.param && Object.keys(f).includes(err.param)) showErr(form, err, top);
      else mount(listError, failure(err));
    } finally {
      more.disabled = false;
    }
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); load(true); });
  form.addEventListener("reset", () => setTimeout(() => load(true)));
  more.addEventListener("click", () => loadMore(tbody, () => load(false)));
  return { form, status, listError, tableBox, more, load };
}

// ---- request history --------------------------------------------------------------------

export async function renderRequests(main, ctx) {
  const current = claim(main, ctx);
  const pid = ctx.project.id;
  const q = ctx.query || new URLSearchParams();
  const init = { key_id: q.get("key") || "", model: q.get("model") || "", status: q.get("status") || "", from: q.get("from") || "", to: q.get("to") || "" };

  const keyF = field("Key", { tag: "select", name: "key_id", options: [{ value: "", label: "All keys" }] });
  const modelF = field("Model", { name: "model", value: init.model, autocomplete: "off", spellcheck: "false", placeholder: "e.g. gpt-4o-mini" });
  const statusF = field("Status", { name: "status", value: init.status, inputmode: "numeric", maxlength: 3, placeholder: "e.g. 429" });
  const fromF = field("From", { type: "datetime-local", name: "from", value: toLocalInput(init.from) });
  const toF = field("To", { type: "datetime-local", name: "to", value: toLocalInput(init.to) });
  const read = () => ({
    key_id: keyF.input.value, model: modelF.input.value.trim(), status: statusF.input.value.trim(),
    from: isoOf(fromF.input.value), to: isoOf(toF.input.value),
  });
  const apiPath = `/projects/${encodeURIComponent(pid)}/requests`;
  let keys = new Map();
  const list = pagedList({
    current, read, path: apiPath, noun: "request",
    label: "Filter requests", caption: "Request history", tableClass: "rpt-requests",
    fields: [keyF, modelF, statusF, fromF, toF],
    columns: ["Time", "Key", "Model", "Endpoint", "Status", "Tokens", "Cost", "Latency", "Streamed", "Request ID"]
      .map((label, i) => ({ label, num: i >= 5 && i <= 7 })),
    row: (r) => requestRow(r, keys),
  });
  const csv = h("button", { type: "button" }, "Download CSV");
  mount(main,
    h("h2", null, "Requests"),
    h("p", { class: "rpt-lead" }, `Every request made with the keys of ${ctx.project.name}, newest first.`),
    list.form,
    h("div", { class: "rpt-toolbar" }, list.status, csv),
    list.listError, list.tableBox, list.more);

  keys = await loadKeys(pid);
  if (!current()) return;
  mount(keyF.input, keyOptions(keys, init.key_id).map((o) => h("option", { value: o.value, selected: o.selected }, o.label)));

  csv.addEventListener("click", async () => {
    csv.disabled = true;
    const old = csv.textContent;
    csv.textContent = "Preparing CSV…";
    try {
      await downloadCsv(apiPath, read(), `requests-${pid}.csv`);
    } catch (err) {
      mount(list.listError, failure(err));
    } finally {
      csv.disabled = false;
      csv.textContent = old;
    }
  });
  await list.load(true);
}

function requestRow(r, keys) {
  const ok = r.status < 400;
  const tokens = h("span", { title: `prompt ${fmt.int(r.prompt_tokens)} (cached ${fmt.int(r.cached_prompt_tokens)}) / completion ${fmt.int(r.completion_tokens)}` },
    fmt.int(r.total_tokens));
  return h("tr", null,
    h("td", null, stamp(r.started_at)),
    h("td", { title: r.key_id }, keyName(keys, r.key_id)),
    h("td", null, r.model ?? "—"),
    h("td", null, h("code", null, r.endpoint)),
    h("td", { class: ok ? "rpt-ok" : "rpt-bad" }, String(r.status)),
    h("td", { class: "num" }, tokens),
    h("td", { class: "num" }, r.priced ? fmt.usd(r.cost_usd) : h("span", { title: "The model has no price: counted at no cost" }, "unpriced")),
    h("td", { class: "num" }, fmt.ms(r.latency_ms)),
    h("td", null, r.streamed ? "yes" : "no"),
    h("td", null, h("code", { class: "rpt-id" }, r.request_id)));
}

// The API answers CSV for `Accept: text/csv` (there is no query parameter for it), which a
// link cannot ask for: fetched here, then saved from a Blob.
async function downloadCsv(path, filters, filename) {
  const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  const url = `/admin/v1${path}${q.toString() ? "?" + q : ""}`;
  let res;
  try {
    res = await fetch(url, { headers: { Accept: "text/csv" }, credentials: "same-origin" });
  } catch {
    throw new ApiError(0, { error: { message: "the admin service cannot be reached; check that it is running" } });
  }
  if (!res.ok) {
    let body = null;
    try { body = JSON.parse(await res.text()); } catch { /* not JSON */ }
    if (res.status === 401) get(path, { limit: 1 }).catch(() => {}); // lets the shell sign out
    throw new ApiError(res.status, body);
  }
  const blob = await res.blob();
  const href = URL.createObjectURL(blob);
  const a = h("a", { href, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 30_000);
}

// ---- events -----------------------------------------------------------------------------

const EVENT_TYPES = [
  ["lock.violated", "Lock refusals"],
  ["key.suspended", "Suspensions"],
  ["key.resumed", "Resumptions"],
  ["key.revoked", "Revocations"],
  ["key.rotated", "Rotations"],
  ["key.locks_set", "Lock changes"],
  ["key.bound", "Bindings"],
  ["key.unbound", "Bindings cleared"],
  ["budget.threshold", "Budget thresholds"],
  ["budget.reset", "Budget windows"],
  ["alert.raised", "Alerts raised"],
  ["alert.delivered", "Alert deliveries"],
  ["project.abuse_set", "Abuse settings"],
  ["project.alerts_set", "Alert settings"],
];

const LOCKS = {
  ip_not_allowed: "IP address", model_not_allowed: "model", city_not_allowed: "location",
  country_not_allowed: "location", device_required: "device", device_not_allowed: "device",
  signature_required: "signature", signature_expired: "signature", signature_invalid: "signature",
  signature_replayed: "signature", key_expired: "expiry",
};

const unix = (s) => (s ? fmt.time(s * 1000) : "—");
const usdMicros = (m) => fmt.usd((m ?? 0) / 1e6);

/** A one-line description of an audit event, from its data. */
function describe(e, keys) {
  const d = e.data || {};
  switch (e.type) {
    case "lock.violated": {
      const lock = LOCKS[d.code] || "a";
      const seen = [d.model && `model ${d.model}`, d.client_ip && `IP ${d.client_ip}${placeName(d) ? ` (${placeName(d)})` : ""}`,
        d.device_hash && `device ${d.device_hash}`, d.endpoint && `on ${d.endpoint}`].filter(Boolean);
      return `Refused by the ${lock} lock (${d.code || "unknown"})${seen.length ? ": " + seen.join(", ") : ""}.`;
    }
    case "key.suspended":
      return `Suspended by the ${d.rule || "abuse"} rule until ${unix(d.until)}${d.reason ? `: ${d.reason}` : ""}.`;
    case "key.resumed":
      return d.early ? "Resumed before its suspension ended." : "Its suspension ended.";
    case "key.revoked":
      return `Revoked${d.reason ? `: ${d.reason}` : "."}`;
    case "key.rotated":
      return `Replaced by ${keyName(keys, d.new_key_id)}${d.hint ? ` (${d.hint})` : ""}; this key works until ${unix(d.retires_at)}.`;
    case "key.locks_set": {
      const l = d.locks || {};
      const mode = (x) => x && x.mode !== "off" && (x.mode === "auto_bind" ? "bound on first use" : x.mode || "set");
      const set = [
        mode(l.ip) && `IP ${l.ip.mode === "allow" ? (l.ip.cidrs || []).join(", ") : mode(l.ip)}`,
        mode(l.device) && `device ${mode(l.device)}`,
        l.geo && l.geo.mode !== "off" && `location ${(l.geo.mode && mode(l.geo)) || [...(l.geo.countries || []), ...(l.geo.cities || []).map((c) => c.city)].join(", ")}`,
        l.models && `models ${l.models.join(", ")}`,
        l.signature && "signed requests",
        l.expires_at && `expires ${unix(l.expires_at)}`,
      ].filter(Boolean);
      return `Locks set: ${set.join("; ") || "none"}.`;
    }
    case "key.bound": {
      const to = [d.ip && `IP ${d.ip}`, d.device && "a device", d.place && `place ${placeName(d.place)}`].filter(Boolean);
      return `Bound to ${to.join(", ") || "its first client"}${d.request_id ? " on first use" : ""}.`;
    }
    case "key.unbound": {
      const what = ["ip", "device", "place"].filter((k) => d[k]).map((k) => (k === "ip" ? "IP" : k));
      return `Bindings cleared: ${what.join(", ") || "none"}.`;
    }
    case "budget.threshold":
      return `${d.percent}% of the ${d.key_id ? "key's" : "project's"} ${d.period} budget used: ${usdMicros(d.spent_micros)} of ${usdMicros(d.budget_micros)} (${d.window}).`;
    case "budget.reset":
      return `A new ${d.period} budget window began (${d.window}).`;
    case "alert.raised":
      return `${d.subject || "Alert"}${d.kind ? ` [${d.kind}]` : ""}`;
    case "alert.delivered":
      return d.ok ? `Alert delivered to ${d.channel}.`
        : `Alert delivery to ${d.channel} failed after ${d.attempts} attempt(s)${d.reason ? `: ${d.reason}` : ""}.`;
    case "project.abuse_set":
      return "Abuse detection settings changed.";
    case "project.alerts_set":
      return `Alert recipients set: ${(d.emails || []).length} email address(es), ${(d.webhooks || []).length} webhook(s).`;
    default:
      return d.subject || (e.type.startsWith("alert.") ? "Alert." : "");
  }
}

function actor(a) {
  if (!a) return "—";
  if (a === "operator") return "operator";
  const [kind, rest] = a.split(/:(.*)/s);
  const label = { token: "admin token", node: "SecureGate node" }[kind];
  return label ? h("span", null, `${label} `, h("code", null, rest)) : a;
}

export async function renderEvents(main, ctx) {
  const current = claim(main, ctx);
  const pid = ctx.project.id;
  const q = ctx.query || new URLSearchParams();
  const init = { type: q.get("type") || "", key_id: q.get("key") || "", from: q.get("from") || "", to: q.get("to") || "" };

  const typeF = field("Type", { tag: "select", name: "type", options: [{ value: "", label: "All types" },
    ...EVENT_TYPES.map(([t, what]) => ({ value: t, label: what, selected: t === init.type }))] });
  const keyF = field("Key", { tag: "select", name: "key_id", options: [{ value: "", label: "All keys" }] });
  const fromF = field("From", { type: "datetime-local", name: "from", value: toLocalInput(init.from) });
  const toF = field("To", { type: "datetime-local", name: "to", value: toLocalInput(init.to) });
  let keys = new Map();
  const list = pagedList({
    current, noun: "event",
    read: () => ({ type: typeF.input.value, key_id: keyF.input.value, from: isoOf(fromF.input.value), to: isoOf(toF.input.value) }),
    path: `/projects/${encodeURIComponent(pid)}/events`,
    label: "Filter events", caption: "Events and alerts", tableClass: "rpt-events",
    fields: [typeF, keyF, fromF, toF],
    columns: ["Time", "Type", "Actor", "Subject", "What happened"].map((label) => ({ label })),
    row: (e) => eventRow(e, keys),
  });
  mount(main,
    h("h2", null, "Events"),
    h("p", { class: "rpt-lead" }, `The audit trail of ${ctx.project.name}: lock refusals, suspensions, revocations, key changes, budget signals and alerts, newest first.`),
    list.form, list.status, list.listError, list.tableBox, list.more);

  keys = await loadKeys(pid);
  if (!current()) return;
  mount(keyF.input, keyOptions(keys, init.key_id).map((o) => h("option", { value: o.value, selected: o.selected }, o.label)));
  await list.load(true);
}

function eventRow(e, keys) {
  const key = e.key_id || e.data?.key_id;
  const subject = key ? h("span", { title: key }, keyName(keys, key))
    : e.data?.connection_id ? h("code", null, e.data.connection_id)
    : e.data?.channel || "project";
  const warn = e.type === "lock.violated" || e.type === "key.suspended" || e.type.startsWith("alert.raised") || e.type === "budget.threshold";
  return h("tr", { class: warn ? "rpt-warn" : null },
    h("td", { dataset: { label: "Time" } }, stamp(e.time)),
    h("td", { dataset: { label: "Type" } }, h("code", { class: "rpt-type" }, e.type)),
    h("td", { dataset: { label: "Actor" } }, actor(e.actor)),
    h("td", { dataset: { label: "Subject" } }, subject),
    h("td", null, describe(e, keys),
      h("details", { class: "rpt-raw" }, h("summary", null, "Data"),
        h("pre", null, JSON.stringify(e.data, null, 2)))));
}
