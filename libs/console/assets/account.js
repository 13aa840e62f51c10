// The account page: plan and its terms, the caller's token, and for owners the tenant's
// members and tokens.

import { h, mount, field } from "./dom.js";
import { badge, checkbox, code, confirmDialog, empty, failure, fieldGroup, formDialog, fromLocalInput, invalid, loading, revealOnce, sdkBase, table, when } from "./ui.js";
import { listProjects } from "./projects.js";

const enc = encodeURIComponent;

const FEATURES = {
  ip: "IP lock",
  model: "Model allow-list",
  city: "City lock",
  country: "Country lock",
  device: "Device lock",
  signature: "Signed requests",
  geo_auto_bind: "Location auto-bind",
};

const limitText = (v, unit) => (v === null || v === undefined ? "unlimited" : `${Number(v).toLocaleString("en-US")}${unit}`);

function planFacts(p) {
  return h("dl", { class: "facts" },
    h("dt", null, "Connections"), h("dd", null, limitText(p.max_connections, "")),
    h("dt", null, "Requests per key"), h("dd", null, `${limitText(p.key_rpm, " a minute")}, ${limitText(p.key_rpd, " a day")}`),
    h("dt", null, "Locks"), h("dd", null, p.features.length ? p.features.map((f) => FEATURES[f] || f).join(", ") : "none"));
}

export async function renderAccount(view, ctx) {
  const me = ctx.me;
  const planBox = h("section", { class: "card", "aria-labelledby": "acc-plan" });
  const tokenBox = h("section", { class: "card", "aria-labelledby": "acc-token" });
  const members = h("section", { class: "card", "aria-labelledby": "acc-members" });
  mount(view, h("div", { class: "page-head" }, h("h1", null, "Account")), tokenBox, planBox, members);

  // Who you are.
  const t = me.token;
  mount(tokenBox, h("h2", { id: "acc-token" }, "Your access"),
    h("dl", { class: "facts" },
      h("dt", null, "Signed in as"), h("dd", null, me.caller === "operator" ? "the operator (every tenant)" : t ? t.name : "a token"),
      h("dt", null, "Role"), h("dd", null, badge(me.role, "role"), " ", roleText(me.role)),
      me.tenant ? [h("dt", null, "Tenant"), h("dd", null, me.tenant.name, " ", code(me.tenant.id))] : null,
      t ? [
        h("dt", null, "Token"), h("dd", null, code(t.hint)),
        h("dt", null, "Projects"), h("dd", null, t.project_ids ? t.project_ids.join(", ") : "all of the tenant's"),
        h("dt", null, "Expires"), h("dd", null, t.expires_at ? when(t.expires_at) : "never"),
      ] : null,
      me.gateway_url ? [h("dt", null, "Gateway"), h("dd", null, code(me.gateway_url), h("span", { class: "sub" }, "OpenAI SDKs: base URL ", code(sdkBase(me))))] : null));

  // The plan and the catalog.
  mount(planBox, h("h2", { id: "acc-plan" }, "Plan"), loading());
  let plans = [];
  try {
    plans = (await ctx.api.get("/plans")).data || [];
  } catch (err) {
    if (err.status === 401) throw err;
  }
  const current = me.plan;
  mount(planBox, h("h2", { id: "acc-plan" }, current ? `Plan: ${current.name}` : "Plans"),
    current ? planFacts(current) : h("p", { class: "muted" }, me.caller === "operator" ? "The operator is on no plan; tenants are." : "Your tenant has no plan: every feature, no plan limits."),
    plans.length ? table({
      label: "Available plans",
      columns: [
        { label: "Plan", cell: (p) => [p.name, current && p.name === current.name ? h("span", { class: "muted" }, " (yours)") : null] },
        { label: "Connections", cell: (p) => limitText(p.max_connections, "") },
        { label: "Requests per key", cell: (p) => `${limitText(p.key_rpm, "/min")}, ${limitText(p.key_rpd, "/day")}` },
        { label: "Locks", cell: (p) => p.features.map((f) => FEATURES[f] || f).join(", ") },
      ],
      rows: plans,
    }) : null,
    current ? h("p", { class: "hint" }, "To change plans, ask the operator of this SecureGate installation.") : null);

  // Members and tokens (owners of the whole tenant, and the operator for the chosen tenant).
  const tenantId = me.tenant?.id || ctx.tenantId;
  const mayManage = ctx.can.own && !(t?.project_ids?.length) && tenantId;
  if (!mayManage) {
    members.remove();
    return;
  }
  let tenantName = me.tenant?.name;
  if (!tenantName) {
    tenantName = await ctx.api.get(`/tenants/${enc(tenantId)}`).then((x) => x.name).catch(() => tenantId);
  }
  await renderTokens(members, { ...ctx, tenantId, tenantName: ctx.can.operator ? tenantName : null });
}

function roleText(role) {
  return {
    viewer: "— reads everything of the tenant; changes nothing.",
    admin: "— also manages connections, keys, locks, limits and models.",
    owner: "— also manages projects and the tenant's tokens.",
    operator: "— manages the whole installation.",
  }[role] || "";
}

async function renderTokens(el, ctx, focusSel) {
  const tid = enc(ctx.tenantId);
  mount(el, h("h2", { id: "acc-members" }, "Members and tokens"), loading());
  let tokens;
  let projects = [];
  try {
    [tokens, projects] = await Promise.all([
      ctx.api.get(`/tenants/${tid}/tokens`).then((r) => r.data || []),
      listProjects(ctx, ctx.tenantId).catch(() => []),
    ]);
  } catch (err) {
    if (err.status === 401) throw err;
    mount(el, h("h2", { id: "acc-members" }, "Members and tokens"), failure(err));
    return;
  }
  const projectName = (id) => projects.find((p) => p.id === id)?.name || id;
  const redraw = (sel) => renderTokens(el, ctx, sel);
  const myId = ctx.me.token?.id;
  tokens.sort((a, b) => (a.status !== "active") - (b.status !== "active") || String(b.created_at).localeCompare(String(a.created_at)));
  const issue = h("button", { type: "button", class: "primary", onclick: (ev) => issueToken(ctx, projects, ev.currentTarget, redraw) }, "Issue token");
  mount(el,
    h("div", { class: "section-head" }, h("h2", { id: "acc-members", tabindex: "-1" }, "Members and tokens", ctx.tenantName ? ` of ${ctx.tenantName}` : null), issue),
    h("p", { class: "intro" }, "Each person or system gets its own admin API token with a role. Only a hash is stored; a token is shown once, when it is issued."),
    tokens.length ? table({
      label: "Tokens of this tenant",
      columns: [
        { label: "Name", cell: (x) => [x.name, x.id === myId ? h("span", { class: "muted" }, " (you)") : null] },
        { label: "Role", cell: (x) => x.role },
        { label: "Projects", cell: (x) => (x.project_ids ? x.project_ids.map(projectName).join(", ") : "all") },
        { label: "Token", cell: (x) => code(x.hint) },
        { label: "Created", cell: (x) => when(x.created_at) },
        { label: "Expires", cell: (x) => (x.expires_at ? when(x.expires_at) : "never") },
        { label: "Status", cell: (x) => badge(x.status, x.status === "active" ? "ok" : "bad") },
        { label: "Actions", cell: (x) => (x.status === "active" && x.id !== myId
          ? h("button", { type: "button", class: "small danger-outline", "aria-label": `Revoke token ${x.name}`, dataset: { token: x.id }, onclick: (ev) => revokeToken(ctx, x, ev.currentTarget, redraw) }, "Revoke")
          : null) },
      ],
      rows: tokens,
    }) : empty("No tokens yet.", "Issue one for each person or system that manages this tenant."));
  if (focusSel) (el.querySelector(focusSel) || el.querySelector("h2"))?.focus();
}

async function issueToken(ctx, projects, opener, redraw) {
  const name = field("Token name", { name: "name", required: true, maxlength: 128, autocomplete: "off" }, "Who or what holds it, e.g. “alice” or “ci”.");
  const role = field("Role", {
    tag: "select", name: "role",
    options: [
      { value: "viewer", label: "Viewer — reads only" },
      { value: "admin", label: "Admin — manages connections, keys, locks, limits", selected: true },
      { value: "owner", label: "Owner — also projects and tokens" },
    ],
  });
  const projectBoxes = projects.map((p) => checkbox(p.name, { name: "project_ids", value: p.id }));
  const projectsGroup = fieldGroup("Projects (optional)", "project_ids",
    h("p", { class: "hint" }, "None checked: every project of the tenant, now and later."),
    projectBoxes.length ? h("div", { class: "checks" }, projectBoxes.map((b) => b.row)) : h("p", { class: "muted" }, "No projects yet."));
  const expires = field("Expires (optional)", { type: "datetime-local", name: "expires_at" }, "Your local time. Empty: it does not expire.");
  const issued = await formDialog({
    title: "Issue token",
    fields: [name.row, role.row, projectsGroup, expires.row],
    submitLabel: "Issue token",
    opener,
    onSubmit: () => {
      const n = name.input.value.trim();
      if (!n) throw invalid("name", "Give the token a name.");
      const body = { name: n, role: role.input.value };
      const ids = projectBoxes.filter((b) => b.input.checked).map((b) => b.input.value);
      if (ids.length) body.project_ids = ids;
      if (expires.input.value) {
        const d = fromLocalInput(expires.input.value);
        if (!d) throw invalid("expires_at", "Enter a date and time.");
        body.expires_at = d.toISOString().replace(/\.\d{3}Z$/, "Z");
      }
      return ctx.api.post(`/tenants/${enc(ctx.tenantId)}/tokens`, body);
    },
  });
  const shown = await revealOnce(issued, "token", (r) => ({
    title: `Token “${r.name}” issued`,
    label: "Admin API token",
    noun: "token",
    opener,
    note: `Give it to its holder over a safe channel. They sign in to this console with it, or use it with the securegate CLI (role: ${r.role}).`,
  }));
  if (!shown) return;
  ctx.status(`Token ${issued.name} issued`);
  await redraw();
}

async function revokeToken(ctx, tok, opener, redraw) {
  const ok = await confirmDialog({
    title: `Revoke token ${tok.name}?`,
    message: "Its holder is signed out of the console and the CLI at once. This cannot be undone.",
    confirmLabel: "Revoke token",
    opener,
    action: () => ctx.api.post(`/tokens/${enc(tok.id)}/revoke`, {}),
  });
  if (ok) {
    ctx.status(`Token ${tok.name} revoked`);
    await redraw();
  }
}
