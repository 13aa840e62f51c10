// A project's settings: limits and budget with spend, the model registry, alert channels
// and abuse detection.

import { h, mount, field, fmt } from "./dom.js";
import { checkbox, clearErrors, code, empty, failure, formError, invalid, loading, numberOf, revealOnce, showErr, splitList, table, when } from "./ui.js";
import { limitsForm } from "./keys.js";

const enc = encodeURIComponent;

export async function renderSettings(section, ctx) {
  const parts = {
    limits: h("section", { class: "card", "aria-labelledby": "set-limits" }),
    models: h("section", { class: "card", "aria-labelledby": "set-models" }),
    alerts: h("section", { class: "card", "aria-labelledby": "set-alerts" }),
    abuse: h("section", { class: "card", "aria-labelledby": "set-abuse" }),
  };
  mount(section, h("h2", { class: "sr-only" }, "Settings"), parts.limits, parts.models, parts.alerts, parts.abuse);
  await Promise.all([
    guard(parts.limits, "set-limits", "Limits and budget", () => limitsSection(parts.limits, ctx)),
    guard(parts.models, "set-models", "Model registry", () => modelsSection(parts.models, ctx)),
    guard(parts.alerts, "set-alerts", "Alerts", () => alertsSection(parts.alerts, ctx)),
    guard(parts.abuse, "set-abuse", "Abuse detection", () => abuseSection(parts.abuse, ctx)),
  ]);
}

async function guard(el, id, title, fn) {
  mount(el, h("h3", { id }, title), loading());
  try {
    await fn();
  } catch (err) {
    if (err.status === 401) throw err;
    mount(el, h("h3", { id }, title), failure(err));
  }
}

/** A form whose submit runs `save`; errors land next to their field. */
function inlineForm(content, submitLabel, save, done) {
  const top = formError();
  const button = h("button", { type: "submit", class: "primary" }, submitLabel);
  const form = h("form", { novalidate: true }, top, content, h("div", { class: "actions" }, button));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const r = await save(form);
      clearErrors(form, top);
      await done?.(r);
    } catch (err) {
      if (err.status !== 401) showErr(form, err, top);
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
  return form;
}

function limitsText(lim) {
  const rows = [];
  const n = (v) => Number(v).toLocaleString("en-US");
  if (lim.rpm) rows.push(["Requests per minute", n(lim.rpm)]);
  if (lim.rpd) rows.push(["Requests per day", n(lim.rpd)]);
  if (lim.tpm) rows.push(["Tokens per minute", n(lim.tpm)]);
  if (lim.concurrent) rows.push(["Concurrent requests", n(lim.concurrent)]);
  if (lim.budget) rows.push(["Budget", `${fmt.usd(lim.budget.usd)} per ${lim.budget.period === "total" ? "lifetime (total)" : lim.budget.period}`]);
  return rows.length
    ? h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]))
    : h("p", { class: "muted" }, "No project-wide limits: only each key's own limits apply.");
}

async function limitsSection(el, ctx) {
  const pid = enc(ctx.projectId);
  const lim = await ctx.api.get(`/projects/${pid}/limits`);
  const period = lim.budget?.period || "month";
  const spend = await ctx.api.get(`/projects/${pid}/spend`, { period });
  const spendBox = h("div", { class: "spend" });
  const drawSpend = (s) => {
    const budget = s.budget_usd;
    const used = s.spent_usd + (s.reserved_usd || 0);
    const label = `Spend this ${s.period === "total" ? "lifetime" : s.period}`;
    mount(spendBox,
      h("p", { class: "spend-line" },
        h("strong", null, `${label}: `), fmt.usd(s.spent_usd),
        budget ? ` of ${fmt.usd(budget)}` : " (no budget for this period)",
        s.reserved_usd ? h("span", { class: "muted" }, ` · ${fmt.usd(s.reserved_usd)} reserved`) : null),
      budget ? h("progress", { max: String(budget), value: String(Math.min(used, budget)), "aria-label": `${label} against the budget` }) : null,
      s.period_start ? h("p", { class: "hint" }, "Window ", utc(s.period_start), " to ", utc(s.period_end), " (ends ", when(s.period_end), ").") : null);
  };
  drawSpend(spend);
  const intro = h("p", { class: "intro" }, "These limits bind all the project's keys together, across the whole cluster. A request over a limit gets 429.");
  if (!ctx.can.write) {
    mount(el, h("h3", { id: "set-limits" }, "Limits and budget"), intro, limitsText(lim), spendBox);
    return;
  }
  const f = limitsForm(lim, null, (body) => ctx.api.put(`/projects/${pid}/limits`, body));
  const form = inlineForm(f.fields, "Save limits", (form) => f.onSubmit(form), async (saved) => {
    ctx.status("Project limits saved");
    const s = await ctx.api.get(`/projects/${pid}/spend`, { period: saved?.budget?.period || "month" }).catch(() => null);
    if (s) drawSpend(s);
  });
  mount(el, h("h3", { id: "set-limits" }, "Limits and budget"), intro, spendBox, form);
}

async function modelsSection(el, ctx) {
  const pid = enc(ctx.projectId);
  const [routes, conns] = await Promise.all([
    ctx.api.get(`/projects/${pid}/models`).then((r) => r.data || []),
    ctx.api.get(`/projects/${pid}/connections`).then((r) => r.data || []),
  ]);
  const connName = (id) => conns.find((c) => c.id === id)?.name || id;
  const redraw = () => guard(el, "set-models", "Model registry", () => modelsSection(el, ctx));
  const columns = [
    { label: "Model name", cell: (r) => code(r.model) },
    { label: "Connection", cell: (r) => connName(r.connection_id) },
    { label: "Upstream model", cell: (r) => code(r.upstream_model) },
  ];
  if (ctx.can.write) {
    columns.push({
      label: "Actions",
      cell: (r) => h("button", { type: "button", class: "small danger-outline", "aria-label": `Remove model ${r.model}`, onclick: async (ev) => {
        const b = ev.currentTarget;
        b.disabled = true;
        try {
          await ctx.api.post(`/projects/${pid}/models/remove`, { model: r.model });
          ctx.status(`Model ${r.model} removed`);
          await redraw();
        } catch (err) {
          b.disabled = false;
          ctx.status(`Could not remove ${r.model}: ${err.message}`);
        }
      } }, "Remove"),
    });
  }
  const content = [
    h("h3", { id: "set-models" }, "Model registry"),
    h("p", { class: "intro" }, "Map the names clients ask for to a connection and an exact upstream model; the gateway's /v1/models then lists them."),
    routes.length ? table({ label: "Model routes", columns, rows: routes }) : empty("No model routes.", "Without routes, a request's model goes to the key's default connection unchanged."),
  ];
  if (ctx.can.write && conns.length) {
    const model = field("Model name", { name: "model", required: true, autocomplete: "off", spellcheck: "false", placeholder: "gpt-4" });
    const conn = field("Connection", { tag: "select", name: "connection_id", options: conns.map((c) => ({ value: c.id, label: `${c.name} (${c.provider})` })) });
    const up = field("Upstream model", { name: "upstream_model", required: true, autocomplete: "off", spellcheck: "false", placeholder: "gpt-4-0613" });
    content.push(h("h4", null, "Add or replace a route"), inlineForm(h("div", { class: "grid3" }, model.row, conn.row, up.row), "Save route", () => {
      const body = { model: model.input.value.trim(), connection_id: conn.input.value, upstream_model: up.input.value.trim() };
      if (!body.model) throw invalid("model", "Enter the name clients use.");
      if (!body.upstream_model) throw invalid("upstream_model", "Enter the provider's model name.");
      return ctx.api.put(`/projects/${pid}/models`, body);
    }, async (r) => {
      ctx.status(`Model ${r?.model || ""} saved`);
      await redraw();
    }));
  }
  mount(el, content);
}

async function alertsSection(el, ctx) {
  const pid = enc(ctx.projectId);
  const ch = await ctx.api.get(`/projects/${pid}/alerts`);
  const head = [
    h("h3", { id: "set-alerts" }, "Alerts"),
    h("p", { class: "intro" }, "Lock refusals, suspensions, budget thresholds and expiring keys are sent here. Webhooks are signed (Standard Webhooks)."),
  ];
  if (!ctx.can.write) {
    mount(el, head, h("dl", { class: "facts" },
      h("dt", null, "Emails"), h("dd", null, ch.emails.length ? ch.emails.join(", ") : "none"),
      h("dt", null, "Webhooks"), h("dd", null, ch.webhooks.length ? ch.webhooks.map((w) => w.url).join(", ") : "none")));
    return;
  }
  const emails = field("Email addresses", { tag: "textarea", name: "emails", rows: 3, spellcheck: "false", autocomplete: "off", placeholder: "owner@example.com" }, "One per line, up to 20.");
  emails.input.value = ch.emails.join("\n");
  const hooks = field("Webhook URLs", { tag: "textarea", name: "webhooks", rows: 3, spellcheck: "false", autocomplete: "off", placeholder: "https://hooks.example.com/securegate" }, "One https URL per line, up to 10. A new URL gets a signing secret, shown once.");
  hooks.input.value = ch.webhooks.map((w) => w.url).join("\n");
  const form = inlineForm(h("div", { class: "grid2" }, emails.row, hooks.row), "Save alert channels", () => {
    const urls = splitList(hooks.input.value);
    return ctx.api.put(`/projects/${pid}/alerts`, { emails: splitList(emails.input.value), webhooks: urls.map((url) => ({ url })) });
  }, async (r) => {
    ctx.status("Alert channels saved");
    const button = form.querySelector("button[type=submit]");
    for (const w of r?.webhooks || []) {
      await revealOnce(w, "secret", (x) => ({ title: "Webhook signing secret", label: `Signing secret for ${x.url}`, noun: "secret", opener: button, note: "Verify each delivery's webhook-signature with it (Standard Webhooks)." }));
    }
  });
  // The API names a bad entry as emails[1] / webhooks[0].url: findField strips the index.
  mount(el, head, form);
}

const WINDOW = "Enter the window in seconds.";
/**
 * The abuse rules, as the form shows them: each threshold is a number or empty (that
 * rule off), each window in seconds. `scale` converts what is typed to what the API
 * keeps (dollars to micro-dollars). A field that is no threshold is required: `empty`
 * says what to enter when it is left empty.
 */
const ABUSE_RULES = [
  { legend: "Velocity", fields: [
    { path: "velocity.requests", label: "Velocity: requests per window", off: true },
    { path: "velocity.tokens", label: "Velocity: tokens per window", off: true },
    { path: "velocity.cost_micros", label: "Velocity: cost per window (USD)", off: true, scale: 1e6, step: "any" },
    { path: "velocity.window_seconds", label: "Velocity window (seconds)", max: 86400, empty: WINDOW },
    { path: "velocity.spike_factor", label: "Spike: times the key's usual rate", off: true, step: "any", hint: "Above 1. Empty: the spike rule is off." },
    { path: "velocity.spike_min_requests", label: "Spike: at least this many requests", empty: "Enter the least number of requests." },
  ] },
  { legend: "Spread", fields: [
    { path: "spread.ips", label: "Spread: client IPs per window", off: true, max: 1000 },
    { path: "spread.countries", label: "Spread: countries per window", off: true, max: 1000 },
    { path: "spread.window_seconds", label: "Spread window (seconds)", max: 86400, empty: WINDOW },
  ] },
  { legend: "Lock violations", fields: [
    { path: "violations.count", label: "Lock violations per window", off: true },
    { path: "violations.window_seconds", label: "Lock violations window (seconds)", max: 86400, empty: WINDOW },
  ] },
  { legend: "Model probing", fields: [
    { path: "model_probing.count", label: "Refused models per window", off: true },
    { path: "model_probing.window_seconds", label: "Model probing window (seconds)", max: 86400, empty: WINDOW },
  ] },
];

const at = (obj, path) => path.split(".").reduce((o, k) => o?.[k], obj);

function setAt(obj, path, value) {
  const keys = path.split(".");
  const last = keys.pop();
  let o = obj;
  for (const k of keys) o = o[k] ??= {};
  o[last] = value;
}

/** A rule's value as shown: in the form's unit; `null` (off) as empty. */
function shownValue(rule, value) {
  if (value === null || value === undefined) return "";
  return String(rule.scale ? value / rule.scale : value);
}

async function abuseSection(el, ctx) {
  const pid = enc(ctx.projectId);
  const a = await ctx.api.get(`/projects/${pid}/abuse`);
  const head = [
    h("h3", { id: "set-abuse" }, "Abuse detection"),
    h("p", { class: "intro" }, "A rule fires when a key goes above its threshold within the rule's window; the key is then suspended (403 key_suspended) until the suspension ends or someone resumes it. An empty threshold turns that rule off."),
  ];
  if (!ctx.can.write) {
    const facts = [h("dt", null, "Detection"), h("dd", null, a.enabled ? "on" : "off")];
    for (const group of ABUSE_RULES) {
      for (const rule of group.fields) {
        const v = shownValue(rule, at(a, rule.path));
        facts.push(h("dt", null, rule.label), h("dd", null, v === "" ? "off" : v));
      }
    }
    facts.push(h("dt", null, "Suspension (seconds)"), h("dd", null, String(a.suspend_seconds)));
    mount(el, head, h("dl", { class: "facts" }, ...facts));
    return;
  }
  const on = checkbox("Detect abuse and suspend keys", { name: "enabled", checked: a.enabled });
  const inputs = [];
  const groups = ABUSE_RULES.map((group) => h("fieldset", null, h("legend", null, group.legend),
    h("div", { class: "grid3" }, group.fields.map((rule) => {
      const f = field(rule.label, { type: "number", name: rule.path, required: !rule.off, min: rule.off ? 0 : 1, max: rule.max, step: rule.step || 1 }, rule.hint || (rule.off ? "Empty: off." : undefined));
      f.input.value = shownValue(rule, at(a, rule.path));
      inputs.push({ rule, input: f.input });
      return f.row;
    }))));
  const sus = field("Suspension (seconds)", { type: "number", name: "suspend_seconds", required: true, min: 1, max: 2592000, step: 1 }, "1 s to 30 days.");
  sus.input.value = a.suspend_seconds ?? 900;
  const form = inlineForm([h("div", { class: "field" }, on.row), h("div", { class: "stack" }, groups), h("div", { class: "narrow" }, sus.row)], "Save abuse settings", () => {
    // Fields this form does not show are kept as they are.
    const body = structuredClone(a);
    body.enabled = on.input.checked;
    for (const { rule, input } of inputs) {
      const typed = numberOf(input, rule.off ? null : rule.empty);
      setAt(body, rule.path, typed !== null && rule.scale ? Math.round(typed * rule.scale) : typed);
    }
    body.suspend_seconds = numberOf(sus.input, "Enter the suspension in seconds.");
    return ctx.api.put(`/projects/${pid}/abuse`, body);
  }, () => ctx.status("Abuse settings saved"));
  mount(el, head, form);
}

/** A window boundary as the API counts it: UTC, to the minute. */
function utc(s) {
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return String(s);
  return h("time", { datetime: d.toISOString() }, `${d.toISOString().slice(0, 16).replace("T", " ")} UTC`);
}
