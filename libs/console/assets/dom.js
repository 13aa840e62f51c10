// A few DOM helpers: elements are built with `h`, never from HTML strings, so text from
// the API is always text.

/**
 * h("button", {class: "primary", onclick: f, "aria-label": "…"}, "Save") → an element.
 * Props: `class`, `for`, event handlers `on<event>`, booleans (true sets, false omits),
 * `dataset` (object), anything else as an attribute. Children: nodes, strings, numbers,
 * arrays of them, null/undefined/false (skipped).
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" && "value" in el) el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

let seq = 0;
/** A unique id for label/field pairs. */
export const uid = (p = "f") => `${p}-${++seq}`;

/** A labelled field: returns {row, input}. `attrs` go on the input; `hint` is described-by. */
export function field(label, attrs = {}, hint) {
  const id = attrs.id || uid();
  const hintId = hint ? `${id}-hint` : undefined;
  const errId = `${id}-error`;
  const tag = attrs.tag || "input";
  const { tag: _t, options, ...rest } = attrs;
  const input = h(tag, { id, name: attrs.name || id, "aria-describedby": [hintId, errId].filter(Boolean).join(" "), ...rest },
    tag === "select" ? (options || []).map((o) => h("option", { value: o.value, selected: o.selected }, o.label)) : null);
  const row = h("div", { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    h("p", { class: "field-error", id: errId, role: "alert", hidden: true }));
  return { row, input };
}

/** Formats */
export const fmt = {
  int: (n) => (n ?? 0).toLocaleString("en-US"),
  usd: (n) => "$" + (n ?? 0).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 }),
  ms: (n) => (n === null || n === undefined ? "—" : `${n.toLocaleString("en-US", { maximumFractionDigits: 1 })} ms`),
  time: (s) => (s ? new Date(s).toLocaleString() : "—"),
};
