// Shared pieces of the console's pages: dialogs, tables, messages, error placement.
// Everything is built with `h` (text stays text); no inline styles or handlers (strict CSP).

import { h, mount, uid } from "./dom.js";

/** The polite live region: short confirmations ("Key revoked"). Never secrets. */
export function announce(message) {
  const region = document.getElementById("status");
  if (!region) return;
  // The region stays in the accessibility tree (never `hidden`): emptied, then filled a
  // moment later so a repeated message is announced too; it empties itself after a while.
  region.textContent = "";
  clearTimeout(announce.timer);
  setTimeout(() => {
    region.textContent = message;
    announce.timer = setTimeout(() => { region.textContent = ""; }, 5000);
  }, 30);
}

/** A loading placeholder (a status: screen readers hear what is loading). */
export const loading = (what = "Loading…") => h("p", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), what);

/** An empty state: a sentence and a hint. */
export const empty = (text, hint) => h("div", { class: "empty" }, h("p", null, text), hint ? h("p", { class: "hint" }, hint) : null);

/** A page-level error (the request that filled the page failed). */
export const failure = (err, what = "This could not be loaded") =>
  h("div", { class: "notice error", role: "alert" }, h("strong", null, `${what}: `), err.message || String(err));

/** An error slot at the top of a form. */
export const formError = () => h("p", { class: "form-error", role: "alert", hidden: true });

/**
 * Shows an API error next to the field it names. `param` may be nested
 * (`locks.geo.cities`, `budget.usd`, `emails[1]`): the field whose `name` matches the
 * longest prefix gets it; else the form's top error slot.
 */
export function showErr(form, err, top) {
  clearErrors(form, top);
  const target = findField(form, err.param);
  const message = err.message || String(err);
  if (target) {
    // The field's own slot (a group's, not that of a field inside the group).
    const slot = target.closest(".field")?.querySelector(":scope > .field-error");
    if (slot) {
      // Next to its field, the body-level preamble says nothing the place does not.
      slot.textContent = message.replace(/^the request body has the wrong shape: /, "");
      slot.hidden = false;
      const input = target.matches("input, select, textarea") ? target : target.querySelector("input, select, textarea");
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.focus();
      }
      return;
    }
  }
  if (top) {
    top.textContent = message;
    top.hidden = false;
    top.scrollIntoView?.({ block: "nearest" });
  }
}

/** Empties a form's field errors, their aria-invalid marks and its top error slot `top`. */
export function clearErrors(form, top) {
  for (const e of form.querySelectorAll(".field-error")) { e.hidden = true; e.textContent = ""; }
  for (const i of form.querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
  if (top) { top.hidden = true; top.textContent = ""; }
}

function findField(form, param) {
  if (!param) return null;
  let p = String(param);
  const candidates = [];
  for (const prefix of ["locks.", "limits."]) if (p.startsWith(prefix)) candidates.push(p.slice(prefix.length));
  candidates.push(p);
  for (let c of candidates) {
    while (c) {
      const el = form.querySelector(`[name="${CSS.escape(c)}"]`);
      if (el) return el;
      const cut = Math.max(c.lastIndexOf("."), c.lastIndexOf("["));
      if (cut <= 0) break;
      c = c.slice(0, cut);
    }
  }
  return null;
}

/**
 * A native modal dialog. Esc closes it; focus returns to `opener` (default: the
 * element focused when it opened); it is removed from the DOM once closed.
 * Returns {dialog, body, close}.
 */
export function openDialog({ title, content, wide = false, opener, onClose, describedBy }) {
  const titleId = uid("dlg");
  const returnTo = opener || document.activeElement;
  const body = h("div", { class: "dialog-body" });
  const dialog = h("dialog", { class: wide ? "wide" : null, "aria-labelledby": titleId, "aria-describedby": describedBy },
    h("div", { class: "dialog-head" },
      h("h2", { id: titleId }, title),
      h("button", { type: "button", class: "icon", "aria-label": "Close dialog", onclick: () => dialog.close() }, "×")),
    body);
  if (content) mount(body, content);
  dialog.addEventListener("close", () => {
    onClose?.();
    dialog.remove();
    if (returnTo && returnTo.isConnected && typeof returnTo.focus === "function") returnTo.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body, close: () => dialog.close() };
}

/**
 * A dialog with a form: `fields(form)` returns the form's content; `onSubmit(form)` runs
 * the request (throw an ApiError to show it next to its field); resolves with its result
 * after the dialog closed, or null when cancelled.
 */
export function formDialog({ title, intro, fields, submitLabel, onSubmit, wide, opener, danger = false }) {
  return new Promise((resolve) => {
    let result = null;
    const top = formError();
    const submit = h("button", { type: "submit", class: danger ? "danger" : "primary" }, submitLabel);
    const form = h("form", { novalidate: true },
      top,
      intro ? h("p", { class: "intro" }, intro) : null,
      fields,
      h("div", { class: "actions" },
        submit,
        h("button", { type: "button", onclick: () => d.close() }, "Cancel")));
    const d = openDialog({ title, content: form, wide, opener, onClose: () => resolve(result) });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (submit.disabled) return;
      submit.disabled = true;
      form.setAttribute("aria-busy", "true");
      // What the last attempt was refused for no longer stands (the dialog closes on success).
      clearErrors(form, top);
      try {
        result = (await onSubmit(form)) ?? true;
        d.close();
      } catch (err) {
        if (err && err.status === 401) { d.close(); return; }
        showErr(form, err, top);
      } finally {
        submit.disabled = false;
        form.removeAttribute("aria-busy");
      }
    });
    // Focus the first field rather than the close button.
    const first = form.querySelector("input:not([type=hidden]):not([disabled]), select, textarea");
    (first || submit).focus();
  });
}

/** Asks to confirm; resolves true only after `action` succeeded. */
export function confirmDialog({ title, message, confirmLabel, action, extra, opener }) {
  return formDialog({
    title,
    fields: [h("p", null, message), extra || null],
    submitLabel: confirmLabel,
    danger: true,
    opener,
    onSubmit: action,
  }).then((r) => r !== null);
}

/**
 * Shows a secret once: a readonly field labelled `label`, a Copy button and a warning.
 * When the dialog closes the value is wiped and the dialog removed: it is gone from the page.
 */
export function secretDialog({ title, label, value, note, opener, noun = "key" }) {
  const id = uid("secret");
  const input = h("input", { id, type: "text", readonly: true, value, class: "secret", spellcheck: "false", autocomplete: "off", "aria-describedby": `${id}-warn` });
  const copied = h("span", { class: "copied", "aria-live": "polite" });
  const copy = h("button", { type: "button", class: "primary", onclick: async () => {
    let ok = false;
    try {
      await navigator.clipboard.writeText(input.value);
      ok = true;
    } catch {
      input.focus();
      input.select();
      try { ok = document.execCommand("copy"); } catch { ok = false; }
    }
    copied.textContent = ok ? "Copied" : "Select the text and copy it (Ctrl+C / ⌘C)";
    if (!ok) { input.focus(); input.select(); }
  } }, "Copy");
  const done = h("button", { type: "button", onclick: () => d.close() }, "Done");
  const content = [
    h("p", { class: "notice warn", id: `${id}-warn` }, h("strong", null, `You will not see this ${noun} again. `), `Copy it now and store it somewhere safe${noun === "key" || noun === "token" ? "; SecureGate keeps only a hash of it" : ""}.`),
    h("div", { class: "field" }, h("label", { for: id }, label), h("div", { class: "secret-row" }, input, copy)),
    copied,
    note ? h("p", { class: "hint" }, note) : null,
    h("div", { class: "actions" }, done),
  ];
  const d = openDialog({ title, content, opener, onClose: () => { input.value = ""; input.removeAttribute("value"); } });
  input.focus();
  input.select();
  return new Promise((resolve) => d.dialog.addEventListener("close", () => resolve()));
}

/**
 * Shows the one-time secret of an API answer (`answer[prop]`: a new key, token or signing
 * secret) in a secretDialog, taking it out of the answer first so that nothing else keeps
 * it. `dialog(answer)` gives the dialog's title, label, note… Resolves true once the
 * dialog closed, false when there is no secret (the form was cancelled).
 */
export async function revealOnce(answer, prop, dialog) {
  const value = answer?.[prop];
  if (!value) return false;
  answer[prop] = null;
  await secretDialog({ ...dialog(answer), value });
  return true;
}

/**
 * A group of controls under a legend (checkboxes, related fields), with an error slot the
 * fieldset is described by: an API error naming the fieldset's `name` shows there.
 */
export function fieldGroup(legend, name, ...content) {
  const errId = uid("err");
  return h("div", { class: "field group" },
    h("fieldset", { name, "aria-describedby": errId }, h("legend", null, legend), content),
    h("p", { class: "field-error", id: errId, role: "alert", hidden: true }));
}

/**
 * A table in a scrolling container. columns: [{label, cell(row) → node|string, class?}].
 */
export function table({ label, columns, rows, rowClass }) {
  // The scrolling container is focusable (keyboard users scroll it), so it is a named
  // region; "… table" keeps its name apart from the page section named like the table.
  return h("div", { class: "table-wrap", role: "region", "aria-label": `${label} table`, tabindex: "0" },
    h("table", null,
      h("caption", { class: "sr-only" }, label),
      h("thead", null, h("tr", null, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", null, rows.map((r) => h("tr", { class: rowClass ? rowClass(r) : null },
        columns.map((c, i) => i === 0 ? h("th", { scope: "row", class: c.class }, c.cell(r)) : h("td", { class: c.class }, c.cell(r))))))));
}

/** A monospace id that wraps nowhere. */
export const code = (text) => h("code", null, text ?? "—");

/** A status badge. */
export const badge = (text, kind = "") => h("span", { class: `badge ${kind}` }, text);

/** Relative time for recent moments, absolute otherwise; the full time in a title. */
export function when(s) {
  if (!s) return "—";
  const d = typeof s === "number" ? new Date(s * 1000) : new Date(s);
  if (Number.isNaN(d.getTime())) return String(s);
  return h("time", { datetime: d.toISOString(), title: d.toLocaleString() }, relative(d));
}

function relative(d) {
  const secs = Math.round((Date.now() - d.getTime()) / 1000);
  const abs = Math.abs(secs);
  if (abs < 45) return secs >= 0 ? "just now" : "in a few seconds";
  const units = [["minute", 60], ["hour", 3600], ["day", 86400]];
  for (let i = units.length - 1; i >= 0; i--) {
    const [name, size] = units[i];
    if (abs >= size * (i === 0 ? 0.75 : 1)) {
      const n = Math.round(abs / size);
      if (name === "day" && n > 14) break;
      const u = n === 1 ? name : name + "s";
      return secs >= 0 ? `${n} ${u} ago` : `in ${n} ${u}`;
    }
  }
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** Splits a textarea/comma list into trimmed non-empty entries. */
export const splitList = (s) => String(s || "").split(/[\n,]+/).map((x) => x.trim()).filter(Boolean);

/** `<input type=datetime-local>` value from Unix seconds or an RFC 3339 string, local time. */
export function toLocalInput(t) {
  if (t === null || t === undefined || t === "") return "";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** A datetime-local value (local time) as a Date, or null. */
export function fromLocalInput(v) {
  if (!v) return null;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** A small labelled checkbox (label wraps the input so the whole text is clickable). */
export function checkbox(label, attrs = {}) {
  const input = h("input", { type: "checkbox", ...attrs });
  return { row: h("label", { class: "check" }, input, h("span", null, label)), input };
}

/** "City, Country" of a place (either may be missing); "" for none. */
export const placeName = (p) => (p ? [p.city, p.country].filter(Boolean).join(", ") : "");

/** The base URL OpenAI SDKs take: the gateway's address and `/v1`; null when /me gives no address. */
export const sdkBase = (me) => (me?.gateway_url ? `${me.gateway_url.replace(/\/+$/, "")}/v1` : null);

/** A client-side validation error in the ApiError shape, for showErr. */
export const invalid = (param, message) => Object.assign(new Error(message), { param, status: 400 });

/**
 * A number field's value: a number, or null when empty and `empty` (the message when
 * it must not be) is not given. Text the browser cannot read as a number leaves the
 * value empty, with `validity.badInput`: that is refused, not taken as empty.
 */
export function numberOf(input, empty) {
  if (input.validity.badInput) throw invalid(input.name, "Enter a number.");
  const raw = input.value.trim();
  if (raw === "") {
    if (empty) throw invalid(input.name, empty);
    return null;
  }
  return Number(raw);
}
