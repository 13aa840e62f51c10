// A project's provider connections: list, add, rotate the provider key.

import { h, mount, field } from "./dom.js";
import { code, empty, failure, formDialog, invalid, loading, table, when } from "./ui.js";

let providersCache = null;

/** The provider catalog (GET /providers), cached for the session. */
export async function providers(api) {
  if (!providersCache) providersCache = (await api.get("/providers")).data || [];
  return providersCache;
}

/** Only the built-in mock answers without a provider key. */
const needsKey = (p) => p && p.id !== "mock";

export async function renderConnections(section, ctx) {
  mount(section, loading("Loading connections…"));
  const pid = encodeURIComponent(ctx.projectId);
  const [conns, catalog] = await Promise.all([
    ctx.api.get(`/projects/${pid}/connections`).then((r) => r.data || []),
    providers(ctx.api).catch(() => []),
  ]);
  const providerName = (id) => catalog.find((p) => p.id === id)?.name || id;
  const add = ctx.can.write
    ? h("button", { type: "button", class: "primary", onclick: (ev) => addConnection(ctx, catalog, ev.currentTarget, section) }, "Add connection")
    : null;
  const columns = [
    { label: "Name", cell: (c) => c.name },
    { label: "Provider", cell: (c) => providerName(c.provider) },
    { label: "Base URL", cell: (c) => c.base_url ? code(c.base_url) : h("span", { class: "muted" }, defaultUrl(catalog, c.provider)) },
    { label: "Created", cell: (c) => when(c.created_at) },
    { label: "ID", cell: (c) => code(c.id) },
  ];
  if (ctx.can.write) {
    columns.push({
      label: "Actions",
      cell: (c) => h("button", { type: "button", class: "small", "aria-label": `Rotate provider key of ${c.name}`, onclick: (ev) => rotate(ctx, c, ev.currentTarget) }, "Rotate provider key"),
    });
  }
  mount(section,
    h("div", { class: "section-head" }, h("h2", null, "Connections"), add),
    h("p", { class: "intro" }, "A connection holds one provider API key, sealed with envelope encryption. Keys of this project send their requests through its connections; the provider key is never shown again."),
    conns.length
      ? table({ label: "Connections", columns, rows: conns })
      : empty("No connections yet.", ctx.can.write
        ? "Add one with “Add connection”; the built-in mock provider works without a provider account."
        : "An admin of this project adds connections."));
}

function defaultUrl(catalog, provider) {
  const p = catalog.find((x) => x.id === provider);
  return p?.default_base_url ? `default (${p.default_base_url})` : "default";
}

async function addConnection(ctx, catalog, opener, section) {
  const provider = field("Provider", {
    tag: "select",
    name: "provider",
    required: true,
    options: catalog.map((p) => ({ value: p.id, label: `${p.name} (${p.id})`, selected: p.id === "openai" })),
  });
  const name = field("Name (optional)", { name: "name", maxlength: 128, autocomplete: "off" }, "Defaults to the provider's name.");
  const apiKey = field("Provider API key", { name: "api_key", type: "password", autocomplete: "off", spellcheck: "false" }, "Sealed before it is stored and never shown again.");
  const baseUrl = field("Base URL (optional)", { name: "base_url", type: "url", autocomplete: "off", spellcheck: "false" }, "The provider's API base.");
  const org = field("OpenAI organization (optional)", { name: "openai_organization", autocomplete: "off" }, "Sent as OpenAI-Organization; clients cannot choose it.");
  const proj = field("OpenAI project (optional)", { name: "openai_project", autocomplete: "off" }, "Sent as OpenAI-Project.");
  const apiVersion = field("API version (optional)", { name: "api_version", autocomplete: "off", placeholder: "2024-10-21" }, "Azure OpenAI's api-version, YYYY-MM-DD or YYYY-MM-DD-preview.");
  const mockNote = h("p", { class: "notice" }, "The built-in mock answers locally with deterministic replies: no provider account, key or URL needed. Its models: mock-gpt-4o, mock-gpt-4o-mini, mock-embedding.");
  const urlHint = baseUrl.row.querySelector(".hint");
  const sync = () => {
    const p = catalog.find((x) => x.id === provider.input.value);
    const mock = p?.id === "mock";
    // The built-in mock answers in-process: no key, no URL.
    apiKey.row.hidden = baseUrl.row.hidden = mock;
    apiKey.input.required = needsKey(p);
    const def = p?.default_base_url;
    baseUrl.input.required = !def && !mock;
    baseUrl.row.querySelector("label").textContent = def ? "Base URL (optional)" : "Base URL";
    baseUrl.input.placeholder = def || "https://…";
    urlHint.textContent = def ? `Defaults to ${def}.` : "Required for this provider: its API base, e.g. https://llm.internal.example/v1.";
    org.row.hidden = proj.row.hidden = p?.id !== "openai";
    apiVersion.row.hidden = p?.id !== "azure_openai";
    mockNote.hidden = !mock;
  };
  provider.input.addEventListener("change", sync);
  sync();
  const c = await formDialog({
    title: "Add connection",
    fields: [provider.row, mockNote, name.row, apiKey.row, baseUrl.row, org.row, proj.row, apiVersion.row],
    submitLabel: "Add connection",
    opener,
    onSubmit: async () => {
      const p = catalog.find((x) => x.id === provider.input.value);
      const body = { provider: provider.input.value };
      const v = (f) => f.input.value.trim() || undefined;
      body.name = v(name);
      body.api_key = apiKey.input.value.trim() || undefined;
      if (needsKey(p) && !body.api_key) throw invalid("api_key", "Enter the provider's API key.");
      body.base_url = v(baseUrl);
      if (p?.id === "mock") { delete body.api_key; delete body.base_url; }
      if (!p?.default_base_url && p?.id !== "mock" && !body.base_url) throw invalid("base_url", "This provider needs a base URL.");
      if (p?.id === "openai") {
        body.openai_organization = v(org);
        body.openai_project = v(proj);
      }
      if (p?.id === "azure_openai") body.api_version = v(apiVersion);
      const created = await ctx.api.post(`/projects/${encodeURIComponent(ctx.projectId)}/connections`, body);
      apiKey.input.value = "";
      return created;
    },
  });
  if (c && c.id) {
    ctx.status(`Connection ${c.name} added`);
    try {
      await renderConnections(section, ctx);
    } catch (err) {
      if (err?.status === 401) return; // the signed-out handler took over
      mount(section, h("h2", { tabindex: "-1" }, "Connections"), failure(err));
    }
    section.querySelector("h2")?.focus?.();
  }
}

async function rotate(ctx, conn, opener) {
  const apiKey = field("New provider API key", { name: "api_key", type: "password", autocomplete: "off", required: true, spellcheck: "false" },
    "Requests switch to it as soon as each gateway has it, without errors. It is sealed and never shown again.");
  const r = await formDialog({
    title: `Rotate provider key of ${conn.name}`,
    fields: [apiKey.row],
    submitLabel: "Rotate provider key",
    opener,
    onSubmit: async () => {
      const k = apiKey.input.value.trim();
      if (!k) throw invalid("api_key", "Enter the new provider API key.");
      const r = await ctx.api.post(`/connections/${encodeURIComponent(conn.id)}/rotate`, { api_key: k });
      apiKey.input.value = "";
      return r;
    },
  });
  if (r) ctx.status(`Provider key of ${conn.name} replaced`);
}
