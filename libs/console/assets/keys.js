// A project's proxy keys: list with status, bindings and locks; generate (shown once),
// locks, limits, unbind, resume, revoke.

import { h, mount, field } from "./dom.js";
import {
  badge, checkbox, code, confirmDialog, empty, failure, fieldGroup, formDialog, fromLocalInput, invalid, loading,
  numberOf, placeName, revealOnce, sdkBase, splitList, table, toLocalInput, when,
} from "./ui.js";

const enc = encodeURIComponent;

export async function renderKeys(section, ctx, focus) {
  mount(section, loading("Loading keys…"));
  const pid = enc(ctx.projectId);
  const [keys, conns] = await Promise.all([
    ctx.api.get(`/projects/${pid}/keys`).then((r) => r.data || []),
    ctx.api.get(`/projects/${pid}/connections`).then((r) => r.data || []),
  ]);
  // Locks and bindings of the keys still in use (revoked keys do nothing any more); the
  // list carries them.
  const locks = new Map(keys.filter((k) => k.status !== "revoked" && k.locks).map((k) => [k.id, k.locks]));
  // After an action: a failed reload shows in the section (a 401 signs out instead).
  const refresh = (sel) => renderKeys(section, ctx, sel).catch((err) => {
    if (err?.status === 401) return; // the signed-out handler took over
    mount(section, h("h2", { tabindex: "-1" }, "Keys"), failure(err));
    section.querySelector("h2").focus();
  });
  const connName = (id) => conns.find((c) => c.id === id)?.name || id;
  const generate = ctx.can.write
    ? h("button", { type: "button", class: "primary", onclick: (ev) => generateKey(ctx, conns, ev.currentTarget, refresh) }, "Generate key")
    : null;
  keys.sort((a, b) => (a.status === "revoked") - (b.status === "revoked") || String(b.created_at).localeCompare(String(a.created_at)));
  const columns = [
    { label: "Name", cell: (k) => k.name },
    { label: "Key", cell: (k) => code(k.hint) },
    { label: "Status", cell: (k) => statusOf(k, locks.get(k.id)) },
    { label: "Created", cell: (k) => when(k.created_at) },
    { label: "Last used", cell: (k) => (k.last_used_at ? when(k.last_used_at) : h("span", { class: "muted" }, "never")) },
    { label: "Connections", cell: (k) => (k.connection_ids.length ? h("ul", { class: "plain" }, k.connection_ids.map((c, i) => h("li", null, connName(c), i === 0 && k.connection_ids.length > 1 ? h("span", { class: "muted" }, " (default)") : null))) : h("span", { class: "muted" }, "none")) },
    { label: "Locks and bindings", cell: (k) => (k.status === "revoked" ? h("span", { class: "muted" }, "—") : lockSummary(locks.get(k.id), k)) },
    { label: "Actions", class: "actions-cell", cell: (k) => actions(ctx, k, locks.get(k.id), conns, refresh) },
  ];
  mount(section,
    h("div", { class: "section-head" }, h("h2", { tabindex: "-1" }, "Keys"), generate),
    h("p", { class: "intro" }, "Proxy keys are what your apps use instead of provider keys", sdkBase(ctx.me) ? [" (with any OpenAI SDK, base URL ", code(sdkBase(ctx.me)), ")"] : null, ". SecureGate stores only their hash: a key is shown once, when it is generated."),
    ctx.can.write && !conns.length
      ? h("p", { class: "notice" }, "This project has no connection yet. ", h("a", { href: `#/projects/${pid}/connections` }, "Add a connection"), " first: keys send their requests through it.")
      : null,
    keys.length
      ? table({ label: "Keys", columns, rows: keys, rowClass: (k) => (k.status === "revoked" ? "revoked" : null) })
      : empty("No keys yet.", ctx.can.write ? "Generate one with “Generate key”; you will see it once." : "An admin of this project generates keys."));
  if (focus) (section.querySelector(focus) || section.querySelector("h2"))?.focus();
}

function statusOf(k, l) {
  if (k.status === "revoked") return h("span", null, badge("revoked", "bad"), k.revoked_at ? h("span", { class: "sub" }, when(k.revoked_at)) : null);
  if (k.suspension) {
    return h("span", null, badge("suspended", "warn"),
      h("span", { class: "sub" }, "ends ", when(k.suspension.until)),
      h("span", { class: "sub" }, `${k.suspension.rule}: ${k.suspension.reason}`));
  }
  const exp = l?.locks?.expires_at;
  if (exp && exp * 1000 <= Date.now()) return h("span", null, badge("expired", "bad"), h("span", { class: "sub" }, when(exp)));
  return h("span", null, badge("active", "ok"), exp ? h("span", { class: "sub" }, "expires ", when(exp)) : null);
}

/** One line per lock that is set, and the bindings. */
function lockSummary(l, k) {
  if (!l) return h("span", { class: "muted" }, "—");
  const s = l.locks || {};
  const items = [];
  const ip = s.ip || { mode: "auto_bind" };
  if (ip.mode === "allow") items.push(`IP: ${(ip.cidrs || []).join(", ") || "none allowed"}`);
  else if (ip.mode === "auto_bind") items.push(l.bound_ip ? `IP: bound to ${l.bound_ip}` : "IP: binds on first use");
  else items.push("IP: any");
  const dev = s.device || { mode: "off" };
  if (dev.mode === "auto_bind") items.push(l.bound_device ? "Device: bound" : "Device: binds on first use");
  if (dev.mode === "fixed") items.push("Device: fixed fingerprint");
  if (s.geo) {
    if (s.geo.mode === "auto_bind") {
      const place = placeName(l.bound_place);
      items.push(place ? `Place: bound to ${place}` : `Place: binds on first use (${s.geo.level || "country"})`);
    } else {
      const places = [...(s.geo.countries || []), ...(s.geo.cities || []).map((c) => `${c.city} (${c.country})`)];
      if (places.length) items.push(`Places: ${places.join(", ")}`);
    }
  }
  const models = s.models ?? k.allowed_models;
  items.push(models ? `Models: ${models.join(", ") || "none"}` : "Models: any");
  if (s.signature) items.push("Signed requests required");
  return h("ul", { class: "plain small" }, items.map((t) => h("li", null, t)));
}

function actions(ctx, k, l, conns, refresh) {
  const base = `#/projects/${enc(ctx.projectId)}`;
  const out = [h("a", { href: `${base}/usage?key=${enc(k.id)}`, class: "button-link small", "aria-label": `Usage of ${k.name}` }, "Usage")];
  if (ctx.can.write && k.status !== "revoked") {
    const btn = (label, aria, act, onclick) =>
      h("button", { type: "button", class: `small${act === "revoke" ? " danger-outline" : ""}`, "aria-label": aria, dataset: { key: k.id, act }, onclick: (ev) => onclick(ev.currentTarget) }, label);
    out.push(btn("Edit locks", `Edit locks of ${k.name}`, "locks", (b) => editLocks(ctx, k, conns, b, refresh)));
    out.push(btn("Limits", `Limits of ${k.name}`, "limits", (b) => editLimits(ctx, k, b, refresh)));
    if (l && (l.bound_ip || l.bound_device || l.bound_place)) out.push(btn("Unbind", `Unbind ${k.name}`, "unbind", (b) => unbind(ctx, k, l, b, refresh)));
    if (k.suspension) out.push(btn("Resume", `Resume ${k.name}`, "resume", (b) => resume(ctx, k, b, refresh)));
    out.push(btn("Rotate", `Rotate ${k.name}`, "rotate", (b) => rotateKey(ctx, k, b, refresh)));
    out.push(btn("Revoke", `Revoke ${k.name}`, "revoke", (b) => revoke(ctx, k, b, refresh)));
  }
  return h("div", { class: "row-actions" }, out);
}

const sel = (k, act) => `[data-key="${CSS.escape(k.id)}"][data-act="${act}"]`;

async function generateKey(ctx, conns, opener, refresh) {
  const name = field("Key name", { name: "name", required: true, maxlength: 128, autocomplete: "off" }, "Who or what will use it, e.g. “billing-service”.");
  const conn = field("Connection", {
    tag: "select",
    name: "connection_ids",
    options: [
      { value: "", label: conns.length > 1 ? "All of the project's connections" : conns.length ? `${conns[0].name} (the project's connection)` : "The project's connections" },
      ...(conns.length > 1 ? conns.map((c) => ({ value: c.id, label: `Only ${c.name} (${c.provider})` })) : []),
    ],
  }, "Which provider connection the key sends its requests to.");
  const issued = await formDialog({
    title: "Generate key",
    fields: [name.row, conn.row],
    submitLabel: "Generate key",
    opener,
    onSubmit: () => {
      const n = name.input.value.trim();
      if (!n) throw invalid("name", "Give the key a name.");
      const body = { name: n };
      if (conn.input.value) body.connection_ids = [conn.input.value];
      return ctx.api.post(`/projects/${enc(ctx.projectId)}/keys`, body);
    },
  });
  const shown = await revealOnce(issued, "key", (r) => ({
    title: `Key “${r.name}” generated`,
    label: "Proxy key",
    opener,
    note: sdkBase(ctx.me)
      ? `Use it with any OpenAI SDK: base URL ${sdkBase(ctx.me)}, and this key as the API key.`
      : "Use it with any OpenAI SDK: set the base URL to your SecureGate gateway's /v1 and this key as the API key.",
  }));
  if (!shown) return;
  ctx.status(`Key ${issued.name} generated`);
  await refresh(sel(issued, "locks"));
}

/** Model names to offer as checkboxes: the price table's models of the key's providers, the registry, used and allowed ones. */
async function candidateModels(ctx, k, conns, current) {
  const providers = new Set(conns.filter((c) => !k.connection_ids.length || k.connection_ids.includes(c.id)).map((c) => c.provider));
  const patterns = {
    mock: /^mock-/,
    openai: /^(gpt-|o\d|text-embedding|chatgpt|dall-e|whisper|tts)/,
    azure_openai: /^(gpt-|o\d|text-embedding)/,
    anthropic: /^claude/,
    gemini: /^gemini/,
    mistral: /^(mistral|codestral|pixtral|ministral)/,
  };
  const names = new Set(current || []);
  const pid = enc(ctx.projectId);
  const [prices, routes, usage] = await Promise.all([
    ctx.api.get("/prices").then((r) => r.data || []).catch(() => []),
    ctx.api.get(`/projects/${pid}/models`).then((r) => r.data || []).catch(() => []),
    ctx.api.get(`/projects/${pid}/usage`, { group_by: "model" }).then((r) => r.data || []).catch(() => []),
  ]);
  for (const p of prices) if ([...providers].some((pr) => patterns[pr]?.test(p.model))) names.add(p.model);
  for (const r of routes) names.add(r.model);
  for (const u of usage) if (u.group) names.add(u.group);
  return [...names].sort();
}

function planHint(ctx, feature) {
  const plan = ctx.me.plan;
  if (!plan || plan.features.includes(feature)) return null;
  return h("p", { class: "hint plan-hint" }, `Not included in the ${plan.name} plan.`);
}

async function editLocks(ctx, k, conns, opener, refresh) {
  let current;
  let models;
  try {
    current = await ctx.api.get(`/keys/${enc(k.id)}/locks`);
    models = await candidateModels(ctx, k, conns, current.locks?.models);
  } catch (err) {
    ctx.status(`Could not load the locks: ${err.message}`);
    return;
  }
  const s = current.locks || {};

  // IP
  const ipMode = field("IP lock", {
    tag: "select", name: "ip",
    options: [
      { value: "auto_bind", label: "Bind to the first client address (auto-bind)", selected: (s.ip?.mode || "auto_bind") === "auto_bind" },
      { value: "allow", label: "Allow only these addresses and ranges", selected: s.ip?.mode === "allow" },
      { value: "off", label: "Any address", selected: s.ip?.mode === "off" },
    ],
  }, current.bound_ip ? `Currently bound to ${current.bound_ip}.` : "Not bound to an address yet.");
  const cidrs = field("Allowed IPs and CIDR ranges", { tag: "textarea", name: "ip.cidrs", rows: 2, spellcheck: "false", placeholder: "203.0.113.0/24, 2001:db8::/32" }, "One per line or comma-separated.");
  cidrs.input.value = (s.ip?.cidrs || []).join("\n");

  // Places
  const geoMode = s.geo ? (s.geo.mode === "auto_bind" ? `auto_${s.geo.level || "country"}` : "allow") : "off";
  const geo = field("Location lock", {
    tag: "select", name: "geo.mode",
    options: [
      { value: "off", label: "Anywhere", selected: geoMode === "off" },
      { value: "allow", label: "Only these countries and cities", selected: geoMode === "allow" },
      { value: "auto_country", label: "Bind to the first request's country", selected: geoMode === "auto_country" },
      { value: "auto_city", label: "Bind to the first request's city", selected: geoMode === "auto_city" },
    ],
  }, current.bound_place ? `Currently bound to ${placeName(current.bound_place)}.` : "Needs the gateway's GeoIP database.");
  const countries = field("Countries", { name: "geo.countries", spellcheck: "false", placeholder: "DE, FR", autocomplete: "off" }, "ISO 3166 two-letter codes, comma-separated.");
  countries.input.value = (s.geo?.countries || []).join(", ");
  const cities = field("Cities", { tag: "textarea", name: "geo.cities", rows: 2, placeholder: "GB: London" }, "One per line: country code, a colon, the city's English name.");
  cities.input.value = (s.geo?.cities || []).map((c) => `${c.country}: ${c.city}`).join("\n");

  // Device
  const device = field("Device lock", {
    tag: "select", name: "device",
    options: [
      { value: "off", label: "Any device", selected: (s.device?.mode || "off") === "off" },
      { value: "auto_bind", label: "Bind to the first device (x-device-fingerprint)", selected: s.device?.mode === "auto_bind" },
      { value: "fixed", label: "Only this fingerprint", selected: s.device?.mode === "fixed" },
    ],
  }, current.bound_device ? "Currently bound to a device." : "Devices identify themselves with the x-device-fingerprint header.");
  const fingerprint = field("Device fingerprint", { name: "device.fingerprint", spellcheck: "false", autocomplete: "off" });
  fingerprint.input.value = s.device?.fingerprint || "";

  // Models
  const allowed = new Set(s.models || []);
  const boxes = models.map((m) => checkbox(m, { name: "models", value: m, checked: allowed.has(m) }));
  const extra = field("Other models", { name: "models_extra", spellcheck: "false", autocomplete: "off", placeholder: "my-model, another-model" }, "Exact names, comma-separated; they are added to the checked ones.");
  const modelsGroup = fieldGroup("Allowed models", "models",
    h("p", { class: "hint" }, "Check the models this key may call. None checked: any model."),
    boxes.length ? h("div", { class: "checks" }, boxes.map((b) => b.row)) : h("p", { class: "muted" }, "No known models for this key's providers; type them below."),
    extra.row,
    planHint(ctx, "model"));

  // Expiry and signatures
  const expires = field("Expires", { type: "datetime-local", name: "expires_at" }, "Your local time. Empty: the key does not expire.");
  expires.input.value = toLocalInput(s.expires_at);
  const sig = checkbox("Require signed requests (Ed25519)", { name: "signature_on", checked: !!s.signature });
  const pub = field("Public key (base64)", { name: "signature", spellcheck: "false", autocomplete: "off" }, "The client signs each request with the matching private key; the gateway stores only this public key.");
  pub.input.value = s.signature?.public_key || "";

  const sync = () => {
    cidrs.row.hidden = ipMode.input.value !== "allow";
    countries.row.hidden = cities.row.hidden = geo.input.value !== "allow";
    fingerprint.row.hidden = device.input.value !== "fixed";
    pub.row.hidden = !sig.input.checked;
  };
  for (const el of [ipMode.input, geo.input, device.input, sig.input]) el.addEventListener("change", sync);
  sync();

  const saved = await formDialog({
    title: `Locks of ${k.name}`,
    wide: true,
    opener,
    intro: "Every gateway enforces a change within about a second; a refused request gets 403 and is recorded as lock.violated.",
    fields: [
      h("div", { class: "grid2" },
        h("div", null, ipMode.row, planHint(ctx, "ip"), cidrs.row, device.row, planHint(ctx, "device"), fingerprint.row),
        h("div", null, geo.row, countries.row, cities.row, expires.row, h("div", { class: "field" }, sig.row, planHint(ctx, "signature")), pub.row)),
      modelsGroup,
    ],
    submitLabel: "Save locks",
    onSubmit: async (form) => {
      const body = {};
      body.ip = ipMode.input.value === "allow" ? { mode: "allow", cidrs: splitList(cidrs.input.value) } : { mode: ipMode.input.value };
      body.device = device.input.value === "fixed"
        ? { mode: "fixed", fingerprint: fingerprint.input.value.trim() }
        : { mode: device.input.value };
      const g = geo.input.value;
      if (g === "allow") {
        const cityList = [];
        for (const line of cities.input.value.split("\n").map((x) => x.trim()).filter(Boolean)) {
          const m = line.match(/^([A-Za-z]{2})\s*[:/,]\s*(.+)$/);
          if (!m) throw invalid("geo.cities", `“${line}”: write the country code, a colon, then the city (GB: London).`);
          cityList.push({ country: m[1].toUpperCase(), city: m[2].trim() });
        }
        const countryList = splitList(countries.input.value).map((c) => c.toUpperCase());
        if (!countryList.length && !cityList.length) throw invalid("geo.countries", "List at least one country or city, or choose “Anywhere”.");
        body.geo = { countries: countryList, cities: cityList };
      } else if (g === "auto_country" || g === "auto_city") {
        body.geo = { mode: "auto_bind", level: g === "auto_city" ? "city" : "country" };
      } else {
        body.geo = null;
      }
      const chosen = [...form.querySelectorAll('input[name="models"]:checked')].map((i) => i.value);
      for (const m of splitList(extra.input.value)) if (!chosen.includes(m)) chosen.push(m);
      body.models = chosen.length ? chosen : null;
      const exp = fromLocalInput(expires.input.value);
      if (expires.input.value && !exp) throw invalid("expires_at", "Enter a date and time.");
      body.expires_at = exp ? Math.floor(exp.getTime() / 1000) : null;
      if (sig.input.checked) {
        const pk = pub.input.value.trim();
        if (!pk) throw invalid("signature", "Paste the client's base64 Ed25519 public key.");
        body.signature = { public_key: pk };
      } else {
        body.signature = null;
      }
      return await ctx.api.put(`/keys/${enc(k.id)}/locks`, body);
    },
  });
  if (saved) {
    ctx.status(`Locks of ${k.name} saved`);
    await refresh(sel(k, "locks"));
  }
}

async function editLimits(ctx, k, opener, refresh) {
  let lim;
  try {
    lim = await ctx.api.get(`/keys/${enc(k.id)}/limits`);
  } catch (err) {
    ctx.status(`Could not load the limits: ${err.message}`);
    return;
  }
  const plan = ctx.me.plan;
  const saved = await formDialog({
    title: `Limits of ${k.name}`,
    opener,
    intro: "Empty: no limit of that kind of its own (the project's limits still apply). Limits hold for the whole cluster.",
    ...limitsForm(lim, plan, (body) => ctx.api.put(`/keys/${enc(k.id)}/limits`, body)),
    submitLabel: "Save limits",
  });
  if (saved) {
    ctx.status(`Limits of ${k.name} saved`);
    await refresh(sel(k, "limits"));
  }
}

/** The fields of a limits form and its submit function (shared with the project settings). */
export function limitsForm(lim, plan, save) {
  const num = (label, name, hint, extra = {}) => {
    const f = field(label, { type: "number", name, min: 1, step: 1, inputmode: "numeric", ...extra }, hint);
    const v = name.includes(".") ? lim?.budget?.usd : lim?.[name];
    if (v !== undefined && v !== null) f.input.value = String(v);
    return f;
  };
  const planDefault = (v, what) => (plan && v ? `Plan default and maximum: ${Number(v).toLocaleString("en-US")} ${what}.` : undefined);
  const rpm = num("Requests per minute", "rpm", planDefault(plan?.key_rpm, "a minute"));
  const rpd = num("Requests per day", "rpd", planDefault(plan?.key_rpd, "a day"));
  const tpm = num("Tokens per minute", "tpm", "Prompt and completion tokens.");
  const conc = num("Concurrent requests", "concurrent");
  const usd = num("Budget (US dollars)", "budget.usd", "Empty: no budget.", { min: 0.000001, step: "any", inputmode: "decimal" });
  const period = field("Budget period", {
    tag: "select", name: "budget.period",
    options: [["day", "Per UTC day"], ["month", "Per calendar month (UTC)"], ["total", "In total (never renews)"]]
      .map(([value, label]) => ({ value, label, selected: (lim?.budget?.period || "month") === value })),
  });
  return {
    fields: [h("div", { class: "grid2" }, rpm.row, rpd.row, tpm.row, conc.row, usd.row, period.row)],
    onSubmit: () => {
      const body = {};
      for (const [f, key] of [[rpm, "rpm"], [rpd, "rpd"], [tpm, "tpm"], [conc, "concurrent"]]) {
        const n = numberOf(f.input);
        if (n === null) continue;
        if (!Number.isInteger(n) || n < 1) throw invalid(key, "Enter a whole number of at least 1, or leave it empty.");
        body[key] = n;
      }
      const u = numberOf(usd.input);
      if (u !== null) {
        if (!(u > 0)) throw invalid("budget.usd", "Enter an amount above 0, or leave it empty.");
        body.budget = { usd: u, period: period.input.value };
      }
      return save(body);
    },
  };
}

async function unbind(ctx, k, l, opener, refresh) {
  const ip = checkbox(`IP address${l.bound_ip ? ` (${l.bound_ip})` : ""}`, { name: "ip", checked: !!l.bound_ip, disabled: !l.bound_ip });
  const dev = checkbox("Device", { name: "device", checked: !!l.bound_device, disabled: !l.bound_device });
  const place = checkbox(`Place${l.bound_place ? ` (${placeName(l.bound_place)})` : ""}`, { name: "place", checked: !!l.bound_place, disabled: !l.bound_place });
  const ok = await formDialog({
    title: `Unbind ${k.name}`,
    opener,
    intro: "Clears the bindings you check; with auto-bind, the key's next request binds it again.",
    fields: fieldGroup("Clear these bindings", undefined, ip.row, dev.row, place.row),
    submitLabel: "Unbind",
    onSubmit: () => ctx.api.post(`/keys/${enc(k.id)}/unbind`, { ip: ip.input.checked, device: dev.input.checked, place: place.input.checked }),
  });
  if (ok) {
    ctx.status(`Bindings of ${k.name} cleared`);
    await refresh(sel(k, "locks"));
  }
}

async function resume(ctx, k, opener, refresh) {
  const ok = await confirmDialog({
    title: `Resume ${k.name}?`,
    message: `Abuse detection suspended this key (${k.suspension.rule}: ${k.suspension.reason}). Resuming lets it serve requests again at once.`,
    confirmLabel: "Resume key",
    opener,
    action: () => ctx.api.post(`/keys/${enc(k.id)}/resume`, {}),
  });
  if (ok) {
    ctx.status(`Key ${k.name} resumed`);
    await refresh(sel(k, "locks"));
  }
}

async function rotateKey(ctx, k, opener, refresh) {
  const grace = field("The old key keeps working for", {
    tag: "select", name: "grace_secs",
    options: [["0", "No time: it stops now"], ["3600", "1 hour"], ["86400", "1 day"], ["604800", "7 days"], ["2592000", "30 days"]]
      .map(([value, label]) => ({ value, label, selected: value === "86400" })),
  }, "Time to deploy the new key; then every gateway refuses the old one.");
  const issued = await formDialog({
    title: `Rotate ${k.name}`,
    opener,
    intro: "Issues a new key with this key's connections, locks, bindings and limits.",
    fields: grace.row,
    submitLabel: "Rotate key",
    onSubmit: () => ctx.api.post(`/keys/${enc(k.id)}/rotate`, { grace_secs: Number(grace.input.value) }),
  });
  const shown = await revealOnce(issued, "key", (r) => ({
    title: `Key “${r.name}” rotated`,
    label: "Proxy key",
    opener,
    note: `The old key (${k.hint}) works until ${new Date(r.replaced_key_retires_at).toLocaleString()}.`,
  }));
  if (!shown) return;
  ctx.status(`Key ${k.name} rotated`);
  await refresh(sel(issued, "locks"));
}

async function revoke(ctx, k, opener, refresh) {
  const reason = field("Reason (optional)", { name: "reason", maxlength: 500, autocomplete: "off" }, "Kept in the audit trail.");
  const ok = await confirmDialog({
    title: `Revoke ${k.name}?`,
    message: "Every gateway refuses this key within about a second. This cannot be undone.",
    extra: reason.row,
    confirmLabel: "Revoke key",
    opener,
    action: () => ctx.api.post(`/keys/${enc(k.id)}/revoke`, reason.input.value.trim() ? { reason: reason.input.value.trim() } : {}),
  });
  if (ok) {
    ctx.status(`Key ${k.name} revoked`);
    await refresh();
  }
}
