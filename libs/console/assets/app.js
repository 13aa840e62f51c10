// The console's shell: session, header, navigation and the hash router.

import * as api from "./api.js";
import { h, mount, field } from "./dom.js";
import { announce, failure, loading, showErr, formError } from "./ui.js";
import { renderProjects, renderProject } from "./projects.js";
import { renderAccount } from "./account.js";

const main = document.getElementById("main");
const header = document.getElementById("session");
const nav = document.getElementById("nav");

let me = null;
let renderSeq = 0;
/** The operator's chosen tenant (token callers always use their own). */
const TENANT_KEY = "securegate.console.tenant";

const ROLE_RANK = { viewer: 0, admin: 1, owner: 2, operator: 3 };
/** Set while this tab is signed in: a reload that finds no session then says it ended. */
const SIGNED_IN_KEY = "securegate.console.signedIn";

function ctxBase(extra = {}) {
  const role = me.role;
  const rank = ROLE_RANK[role] ?? 0;
  return {
    me,
    role,
    api,
    // admin and up: connections, keys, locks, limits, models; owner and up: projects, tokens.
    can: { write: rank >= 1, own: rank >= 2, operator: role === "operator" },
    tenantId: me.tenant?.id || sessionStorage.getItem(TENANT_KEY) || null,
    setTenant(id) {
      if (id) sessionStorage.setItem(TENANT_KEY, id);
      else sessionStorage.removeItem(TENANT_KEY);
    },
    status: announce,
    go: (hash) => { location.hash = hash; },
    ...extra,
  };
}

/** Parses `#/projects/prj_x/usage?key=key_y` into {parts, query}. */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q] = raw.split("?");
  const decode = (x) => { try { return decodeURIComponent(x); } catch { return x; } };
  return { parts: path.split("/").filter(Boolean).map(decode), query: new URLSearchParams(q || "") };
}

function setTitle(title) {
  document.title = title ? `${title} · SecureGate console` : "SecureGate console";
}

async function route() {
  if (!me) return;
  const seq = ++renderSeq;
  // A dialog of the page being left goes with it (closing it settles what awaits it).
  for (const d of document.querySelectorAll("dialog[open]")) d.close();
  const { parts, query } = parseHash();
  const view = h("div", { class: "view" });
  mount(main, view);
  highlightNav(parts[0] || "projects");
  const ctx = ctxBase({ query, view, setTitle, isCurrent: () => seq === renderSeq });
  try {
    if (parts.length === 0 || (parts[0] === "projects" && parts.length === 1)) {
      setTitle("Projects");
      await renderProjects(view, ctx);
    } else if (parts[0] === "projects") {
      const tab = parts[2] || "keys";
      await renderProject(view, { ...ctx, projectId: parts[1], tab });
    } else if (parts[0] === "account") {
      setTitle("Account");
      await renderAccount(view, ctx);
    } else {
      setTitle("Not found");
      mount(view, h("h1", null, "Page not found"), h("p", null, "There is no such page. ", h("a", { href: "#/projects" }, "Go to your projects"), "."));
    }
  } catch (err) {
    if (err && err.status === 401) return; // the signed-out handler took over
    if (seq === renderSeq) mount(view, failure(err));
  }
  if (seq === renderSeq && !document.querySelector("dialog[open]")) {
    main.focus({ preventScroll: true });
    window.scrollTo(0, 0);
  }
}

function highlightNav(section) {
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function renderHeader() {
  if (!me) {
    mount(header);
    nav.hidden = true;
    return;
  }
  const tenant = me.tenant;
  mount(header,
    h("span", { class: "who" },
      tenant ? h("span", { class: "tenant" }, tenant.name) : h("span", { class: "tenant" }, "All tenants"),
      me.plan ? h("span", { class: "badge plan", title: "Plan" }, `${me.plan.name} plan`) : null,
      h("span", { class: "badge role", title: "Your role" }, me.role)),
    h("button", { type: "button", class: "signout", onclick: signOut }, "Sign out"));
  nav.hidden = false;
  mount(nav, h("ul", null,
    h("li", null, h("a", { href: "#/projects", dataset: { section: "projects" } }, "Projects")),
    h("li", null, h("a", { href: "#/account", dataset: { section: "account" } }, "Account"))));
}

async function signOut() {
  sessionStorage.removeItem(SIGNED_IN_KEY);
  try {
    await api.signOut();
  } catch {
    // Signed out locally either way; the cookie expires by itself.
  }
  showSignIn("You are signed out.");
}

function showSignIn(message, keepPlace = false) {
  me = null;
  renderSeq++;
  for (const d of document.querySelectorAll("dialog")) {
    d.close(); // fires "close": a secret dialog wipes its value, a form dialog settles
    d.remove();
  }
  renderHeader();
  setTitle("Sign in");
  if (keepPlace && location.hash) sessionStorage.setItem("securegate.console.after", location.hash);
  else sessionStorage.removeItem("securegate.console.after");
  history.replaceState(null, "", location.pathname);
  const top = formError();
  const notice = message ? h("p", { class: "notice", role: "status" }) : null;
  const { row, input } = field("Admin API token", { type: "password", name: "token", autocomplete: "off", required: true, spellcheck: "false" },
    "An SGA_… token issued by an owner of your tenant (or with the securegate CLI), or the operator token.");
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "signin", novalidate: true }, top, row, h("div", { class: "actions" }, button));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (!token) {
      showErr(form, { param: "token", message: "Enter your admin API token." }, top);
      return;
    }
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const s = await api.signIn(token);
      input.value = "";
      me = s.me;
      start();
    } catch (err) {
      // The session endpoint names no param for a bad token: put it next to the field.
      showErr(form, { param: err.param || "token", message: err.message }, top);
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
  mount(main, h("div", { class: "view signin-page" },
    h("h1", null, "Sign in to SecureGate"),
    notice,
    form,
    h("section", { class: "help", "aria-labelledby": "where-token" },
      h("h2", { id: "where-token" }, "Where does a token come from?"),
      h("ul", null,
        h("li", null, "An owner of your tenant issues one on the Account page of this console, or with ", h("code", null, "POST /admin/v1/tenants/{id}/tokens"), "."),
        h("li", null, "The ", h("code", null, "securegate"), " CLI uses the same tokens (", h("code", null, "securegate login"), ")."),
        h("li", null, "Running ", h("code", null, "securegate dev"), "? The operator token is in ", h("code", null, ".securegate/admin.token"), " in the directory you started it in (or ", h("code", null, "SECUREGATE_ADMIN_TOKEN"), ")."),
        h("li", null, "The token is kept in an HttpOnly cookie, for 12 hours at most (less if the token expires sooner); scripts on the page cannot read it. Sign out on shared computers.")))));
  input.focus();
  // Filled once in the page, so that screen readers announce it (a live region
  // announces changes, not what it held when it appeared).
  if (notice) setTimeout(() => { notice.textContent = message; }, 50);
}

function start() {
  sessionStorage.setItem(SIGNED_IN_KEY, "1");
  renderHeader();
  const after = sessionStorage.getItem("securegate.console.after");
  sessionStorage.removeItem("securegate.console.after");
  if (after && after !== location.hash) {
    location.hash = after; // hashchange routes
  } else if (!location.hash) {
    location.hash = "#/projects";
  } else {
    route();
  }
}

/** Why the session ended, from the 401 that said so and what /me told of the token. */
function endedMessage(err) {
  const exp = me?.token?.expires_at;
  const expiresAt = typeof exp === "number" ? exp * 1000 : exp ? Date.parse(exp) : NaN;
  // The cookie lives no longer than its token: once the token expired the browser sends
  // none, and the API can only say that no token came (missing_token).
  if (expiresAt <= Date.now() + 1000 || /expired/i.test(err?.message || "")) {
    return "Your session has ended: the token you signed in with has expired. Sign in again with a valid token.";
  }
  if (err?.code === "invalid_token" && err.message) return `Your session has ended: ${err.message}. Sign in again.`;
  return "Your session has ended. Sign in again.";
}

api.setSignedOutHandler((err) => {
  if (me) showSignIn(endedMessage(err), true);
});

window.addEventListener("hashchange", () => {
  // Only router paths (#/…) are pages; other fragments are in-page links.
  if (!location.hash || location.hash.startsWith("#/")) route();
});

// The skip link focuses main without touching the hash (the router owns it).
document.querySelector(".skip")?.addEventListener("click", (ev) => {
  ev.preventDefault();
  main.focus();
});

// Keep the "after sign-in" target when the session is restored.
async function boot() {
  mount(main, loading("Checking your session…"));
  try {
    const s = await api.session();
    if (!s) {
      const ended = sessionStorage.getItem(SIGNED_IN_KEY);
      sessionStorage.removeItem(SIGNED_IN_KEY);
      return showSignIn(ended ? "Your session has ended. Sign in again." : null, true);
    }
    me = s.me;
    start();
  } catch (err) {
    mount(main, h("div", { class: "view" }, h("h1", null, "SecureGate console"), failure(err, "The console could not start")));
  }
}

boot();
