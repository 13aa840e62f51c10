// Projects: the list (with the operator's tenant picker) and a project's page with its tabs.

import { h, mount, field } from "./dom.js";
import { code, empty, failure, formDialog, loading, table, when } from "./ui.js";
import { renderKeys } from "./keys.js";
import { renderConnections } from "./connections.js";
import { renderSettings } from "./settings.js";

const TABS = [
  ["keys", "Keys"],
  ["connections", "Connections"],
  ["usage", "Usage"],
  ["requests", "Requests"],
  ["events", "Events"],
  ["settings", "Settings"],
];

/** The projects this caller sees: the tenant's, or those its token is limited to. */
export async function listProjects(ctx, tenantId) {
  const limited = ctx.me.token?.project_ids;
  if (limited && limited.length) {
    const out = [];
    for (const id of limited) {
      try {
        out.push(await ctx.api.get(`/projects/${encodeURIComponent(id)}`));
      } catch (err) {
        if (err.status !== 404) throw err;
      }
    }
    return out;
  }
  const r = await ctx.api.get(`/tenants/${encodeURIComponent(tenantId)}/projects`);
  return r.data || [];
}

// The render a view is showing: an answer that arrives after a newer render (another
// tenant chosen) or another page took over is dropped.
const live = new WeakMap();
function claim(view, ctx) {
  const token = {};
  live.set(view, token);
  return () => live.get(view) === token && view.isConnected && (!ctx.isCurrent || ctx.isCurrent());
}

/** Renders the list again (another tenant, a new one); a 401 is the signed-out handler's. */
function rerender(view, ctx) {
  renderProjects(view, ctx).catch((err) => {
    if (err?.status !== 401) throw err;
  });
}

export async function renderProjects(view, ctx) {
  const current = claim(view, ctx);
  const list = h("section", { "aria-labelledby": "projects-h" });
  const picker = h("div", { class: "toolbar" });
  mount(view, h("div", { class: "page-head" }, h("h1", { id: "projects-h" }, "Projects")), picker, list);

  let tenantId = ctx.tenantId;
  if (ctx.can.operator) {
    mount(picker, loading("Loading tenants…"));
    let tenants;
    try {
      tenants = (await ctx.api.get("/tenants")).data || [];
    } catch (err) {
      if (err?.status === 401) throw err;
      if (current()) {
        mount(picker);
        mount(list, failure(err));
      }
      return;
    }
    if (!current()) return;
    if (!tenants.some((t) => t.id === tenantId)) tenantId = tenants[0]?.id || null;
    ctx.setTenant(tenantId);
    const { row, input: select } = field("Tenant", {
      tag: "select",
      name: "tenant",
      options: tenants.map((t) => ({ value: t.id, label: `${t.name}${t.plan ? ` (${t.plan})` : ""}`, selected: t.id === tenantId })),
    });
    select.addEventListener("change", () => {
      ctx.setTenant(select.value);
      rerender(view, { ...ctx, tenantId: select.value });
    });
    const newTenant = h("button", { type: "button", onclick: (ev) => createTenant(ctx, ev.currentTarget, view) }, "New tenant");
    mount(picker, tenants.length ? row : null, newTenant);
    if (!tenants.length) {
      mount(list, empty("No tenants yet.", "Create one with “New tenant”: a tenant is an organisation with its own projects, tokens and plan."));
      return;
    }
  }
  await renderProjectList(list, { ...ctx, tenantId }, current);
}

async function createTenant(ctx, opener, view) {
  let plans = [];
  try {
    plans = (await ctx.api.get("/plans")).data || [];
  } catch {
    plans = [];
  }
  const name = field("Name", { name: "name", required: true, maxlength: 128, autocomplete: "off" });
  const plan = field("Plan", {
    tag: "select",
    name: "plan",
    options: [{ value: "", label: "The installation's default" }, ...plans.map((p) => ({ value: p.name, label: p.name }))],
  });
  const t = await formDialog({
    title: "New tenant",
    fields: [name.row, plan.row],
    submitLabel: "Create tenant",
    opener,
    onSubmit: () => ctx.api.post("/tenants", { name: name.input.value.trim(), plan: plan.input.value || undefined }),
  });
  if (t && t.id) {
    ctx.setTenant(t.id);
    ctx.status(`Tenant ${t.name} created`);
    rerender(view, { ...ctx, tenantId: t.id });
  }
}

/** The project list of `ctx.tenantId` in `list`, while `current()`; a failure shows there. */
async function renderProjectList(list, ctx, current) {
  mount(list, loading("Loading projects…"));
  let projects;
  try {
    projects = await listProjects(ctx, ctx.tenantId);
  } catch (err) {
    if (err?.status === 401) throw err;
    if (current()) mount(list, failure(err));
    return;
  }
  if (!current()) return;
  const canCreate = ctx.can.own && !(ctx.me.token?.project_ids?.length);
  const create = canCreate
    ? h("button", { type: "button", class: "primary", onclick: (ev) => createProject(ctx, ev.currentTarget) }, "New project")
    : null;
  mount(list,
    h("div", { class: "section-head" }, h("h2", { class: "sr-only" }, "Your projects"), create),
    projects.length
      ? table({
        label: "Projects",
        columns: [
          { label: "Name", cell: (p) => h("a", { href: `#/projects/${encodeURIComponent(p.id)}/keys` }, p.name) },
          { label: "ID", cell: (p) => code(p.id) },
          { label: "Created", cell: (p) => when(p.created_at) },
          { label: "Pages", cell: (p) => h("span", { class: "links" },
            h("a", { href: `#/projects/${encodeURIComponent(p.id)}/connections`, "aria-label": `Connections of ${p.name}` }, "Connections"),
            h("a", { href: `#/projects/${encodeURIComponent(p.id)}/usage`, "aria-label": `Usage of ${p.name}` }, "Usage")) },
        ],
        rows: projects,
      })
      : empty("No projects yet.", canCreate
        ? "Create one with “New project”: a project holds provider connections and the keys your apps use."
        : "An owner of your tenant creates projects."));
}

async function createProject(ctx, opener) {
  const name = field("Project name", { name: "name", required: true, maxlength: 128, autocomplete: "off" }, "For example the app or team that will use its keys.");
  const p = await formDialog({
    title: "New project",
    fields: [name.row],
    submitLabel: "Create project",
    opener,
    onSubmit: () => ctx.api.post(`/tenants/${encodeURIComponent(ctx.tenantId)}/projects`, { name: name.input.value.trim() }),
  });
  if (p && p.id) {
    ctx.status(`Project ${p.name} created`);
    ctx.go(`#/projects/${encodeURIComponent(p.id)}/connections`);
  }
}

export async function renderProject(view, ctx) {
  const pid = ctx.projectId;
  mount(view, loading("Loading the project…"));
  const project = await ctx.api.get(`/projects/${encodeURIComponent(pid)}`);
  if (!ctx.isCurrent()) return;
  if (ctx.can.operator) ctx.setTenant(project.tenant_id);
  const tab = TABS.find(([id]) => id === ctx.tab) || TABS[0];
  ctx.setTitle(`${tab[1]} · ${project.name}`);
  const base = `#/projects/${encodeURIComponent(pid)}`;
  const tabs = h("nav", { class: "tabs", "aria-label": "Project sections" },
    h("ul", null, TABS.map(([id, label]) => h("li", null,
      h("a", { href: `${base}/${id}`, "aria-current": id === tab[0] ? "page" : false }, label)))));
  const section = h("section", { class: "tab-panel", "aria-label": tab[1] });
  mount(view,
    h("div", { class: "page-head" },
      h("p", { class: "crumbs" }, h("a", { href: "#/projects" }, "Projects"), h("span", { "aria-hidden": "true" }, " / "), h("span", null, project.name)),
      h("h1", null, project.name, " ", h("span", { class: "h1-id" }, code(project.id)))),
    tabs,
    section);
  const pctx = { ...ctx, project, projectId: pid, tenantId: project.tenant_id, keyId: ctx.query.get("key") || null };
  switch (tab[0]) {
    case "keys": return renderKeys(section, pctx);
    case "connections": return renderConnections(section, pctx);
    case "settings": return renderSettings(section, pctx);
    default: {
      let mod;
      try {
        mod = await import("./usage.js");
      } catch (err) {
        mount(section, failure(err, "This page is not available"));
        return;
      }
      const fn = { usage: mod.renderUsage, requests: mod.renderRequests, events: mod.renderEvents }[tab[0]];
      return fn(section, pctx);
    }
  }
}
