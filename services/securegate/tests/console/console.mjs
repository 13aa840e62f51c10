// End-to-end test of the web console: a real Chromium (playwright-core) against a running
// `securegate dev`, the official OpenAI SDK against its gateway. Run by
// services/securegate/tests/console.rs with:
//   SG_CONSOLE_URL  http://127.0.0.1:PORT/console/     SG_ADMIN_URL   http://127.0.0.1:PORT
//   SG_GATEWAY_URL  http://127.0.0.1:GWPORT/v1         SG_TENANT_ID   ten_…
//   SG_OWNER_TOKEN, SG_VIEWER_TOKEN                    SG_ARTIFACTS   a directory for screenshots
//   SG_CHROMIUM     (default /usr/bin/chromium)
// Locators are by role and label on purpose: a control a test cannot find by its name is
// one a screen reader user cannot find either. Prints one line per step; exits non-zero
// naming the step on the first deviation.

import { chromium } from "playwright-core";
import OpenAI from "openai";
import http from "node:http";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";

const need = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`console.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const CONSOLE_URL = need("SG_CONSOLE_URL");
const ADMIN_URL = need("SG_ADMIN_URL").replace(/\/$/, "");
const GATEWAY_URL = need("SG_GATEWAY_URL").replace(/\/$/, "");
const OWNER_TOKEN = need("SG_OWNER_TOKEN");
const VIEWER_TOKEN = need("SG_VIEWER_TOKEN");
const TENANT_ID = need("SG_TENANT_ID");
const ARTIFACTS = process.env.SG_ARTIFACTS || fs.mkdtempSync(path.join(os.tmpdir(), "sg-console-"));
const CHROMIUM = process.env.SG_CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT = Number(process.env.SG_STEP_TIMEOUT_MS || 45_000);
fs.mkdirSync(ARTIFACTS, { recursive: true });

const PROJECT_NAME = `console-e2e-${Date.now().toString(36)}`;
const KEY_NAME = "e2e-agent";
const BURST_KEY = "e2e-burst";
const PLACES_KEY = "e2e-places";

// ---- harness ------------------------------------------------------------------------------

let browser;
let attacker;
const problems = [];
let stepNo = 0;
let current = null; // the page to screenshot on failure

class StepFailure extends Error {}
const fail = (msg) => { throw new StepFailure(msg); };
const expect = (cond, msg) => { if (!cond) fail(msg); };

async function step(name, fn, timeout = STEP_TIMEOUT) {
  stepNo += 1;
  const n = stepNo;
  let timer;
  const started = Date.now();
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new StepFailure(`timed out after ${timeout} ms`)), timeout); }),
    ]);
  } catch (err) {
    clearTimeout(timer);
    // A deviation this script names is printed whole; a library's error, its first lines.
    const text = err instanceof StepFailure ? err.message : err && err.message ? err.message.split("\n").slice(0, 6).join("\n  ") : err;
    console.error(`FAIL step ${n} (${name}): ${text}`);
    if (current) await current.screenshot({ path: path.join(ARTIFACTS, `failed-step-${n}.png`), fullPage: true }).catch(() => {});
    if (problems.length) console.error(`browser problems so far:\n  ${problems.join("\n  ")}`);
    await shutdown();
    process.exit(1);
  }
  clearTimeout(timer);
  if (problems.length) {
    console.error(`FAIL step ${n} (${name}): the browser reported problems:\n  ${problems.join("\n  ")}`);
    await shutdown();
    process.exit(1);
  }
  console.log(`ok ${n} - ${name} (${Date.now() - started} ms)`);
}

async function shutdown() {
  await browser?.close().catch(() => {});
  attacker?.close();
}

/** Console errors, uncaught exceptions and CSP violations of the console's pages. */
function watch(page, label) {
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    // The network log of an expected refusal (bad token, signed out, viewer write, a
    // malformed address): the console handles those answers; anything else is a problem.
    if (/^Failed to load resource: the server responded with a status of (400|401|403)\b/.test(text)) return;
    problems.push(`${label}: console error: ${text}`);
  });
  page.on("pageerror", (err) => problems.push(`${label}: uncaught exception: ${err.message}`));
  page.on("requestfailed", (req) => {
    const f = req.failure()?.errorText || "";
    // Navigations away abort in-flight reads; that is not a failure of the console.
    if (/ERR_ABORTED/.test(f)) return;
    problems.push(`${label}: request failed: ${req.method()} ${req.url()} ${f}`);
  });
  page.on("response", (res) => {
    // Every file of the console must load (a missing module or stylesheet is a bug).
    const kind = res.request().resourceType();
    if (["document", "script", "stylesheet", "image", "font"].includes(kind) && res.status() >= 400) {
      problems.push(`${label}: ${res.status()} for ${kind} ${res.url()}`);
    }
  });
}

async function newPage(context, label) {
  // CSP violations as console errors (Chromium also logs its own "Refused to …" line).
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile || "?"}:${e.lineNumber || "?"}`);
    });
  });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  watch(page, label);
  current = page;
  return page;
}

// ---- accessibility ------------------------------------------------------------------------

const AXE_SOURCE = fs.readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];
const audited = [];

/**
 * Runs axe-core's WCAG 2.1 A and AA rules on the whole document (an open modal dialog
 * included) and fails naming every violation: rule, impact, help and the elements. axe's
 * source goes in over the DevTools protocol (Runtime.evaluate), which the console's CSP
 * does not govern; the console itself loads nothing for it.
 */
async function audit(page, what) {
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE_SOURCE);
  // Both colour schemes the console has (styles.css follows prefers-color-scheme).
  const violations = [];
  for (const colorScheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme });
    const found = await page.evaluate(async (tags) => {
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      const r = await window.axe.run(document, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] });
      return r.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help,
        nodes: v.nodes.map((n) => `${n.target.join(" ")}${n.any?.[0]?.message ? ` (${n.any[0].message})` : n.failureSummary ? ` (${n.failureSummary.replace(/\s+/g, " ").trim()})` : ""}`),
      }));
    }, WCAG);
    violations.push(...found.map((v) => ({ ...v, id: `${v.id} (${colorScheme})` })));
    if (found.length && colorScheme === "dark") await shot(page, `axe-dark-${what.replace(/[^a-z0-9]+/gi, "-").toLowerCase()}.png`).catch(() => {});
  }
  await page.emulateMedia({ colorScheme: "light" });
  if (violations.length) {
    await shot(page, `axe-${what.replace(/[^a-z0-9]+/gi, "-").toLowerCase()}.png`).catch(() => {});
    fail(`axe: ${violations.length} accessibility violation(s) on ${what}:\n${violations.map((v) =>
      `${v.id} [${v.impact}] ${v.help}\n      ${v.nodes.slice(0, 8).join("\n      ")}${v.nodes.length > 8 ? `\n      … and ${v.nodes.length - 8} more` : ""}`).join("\n  ")}`);
  }
  audited.push(what);
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: true });

/** Repeats `fn` until it returns a truthy value, or fails with `what` after `ms`. */
async function poll(what, fn, ms = 20_000, every = 500) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > until) fail(`${what} (waited ${ms} ms)${last ? `: ${last.message}` : ""}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

async function adminApi(method, p, body, token = OWNER_TOKEN) {
  const res = await fetch(`${ADMIN_URL}/admin/v1${p}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/** Submits a dialog's form: resolves once it closed; fails with the error it shows instead. */
async function submitDialog(dialog, button) {
  await dialog.getByRole("button", { name: button, exact: true }).click();
  const shown = dialog.locator(".field-error:not([hidden]), .form-error:not([hidden])").first();
  await dialog.waitFor({ state: "detached" }).catch(() => {});
  if (await dialog.count()) {
    const msg = (await shown.count()) ? (await shown.textContent()).trim() : "";
    fail(`the “${button}” dialog did not close${msg ? `; it says: ${msg}` : ""}`);
  }
}

/** The error text shown for `input`: the element its aria-describedby names as an error. */
async function errorFor(input) {
  const ids = ((await input.getAttribute("aria-describedby")) || "").split(/\s+/).filter(Boolean);
  for (const id of ids) {
    const el = input.page().locator(`[id="${id}"]`);
    if ((await el.count()) && (await el.isVisible()) && (await el.getAttribute("class"))?.includes("error")) return (await el.textContent()).trim();
  }
  return "";
}

async function signIn(page, token) {
  await page.goto(CONSOLE_URL);
  await page.getByRole("heading", { name: "Sign in to SecureGate" }).waitFor();
  await page.getByLabel("Admin API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Projects", level: 1 }).waitFor();
}

const projectUrl = (tab, q = "") => `${CONSOLE_URL}#/projects/${encodeURIComponent(projectId)}/${tab}${q}`;
async function openTab(page, tab) {
  await page.goto(projectUrl(tab));
  await page.getByRole("navigation", { name: "Project sections" }).getByRole("link", { name: tab[0].toUpperCase() + tab.slice(1) }).waitFor();
}

const sdk = (key) => new OpenAI({ apiKey: key, baseURL: GATEWAY_URL, maxRetries: 0, timeout: 15_000 });
const chat = (key, model) => sdk(key).chat.completions.create({ model, messages: [{ role: "user", content: "Hello from the console test" }] });
async function chatStatus(key, model) {
  try {
    await chat(key, model);
    return 200;
  } catch (err) {
    if (typeof err.status === "number") return err.status;
    throw err;
  }
}

// ---- the run ------------------------------------------------------------------------------

let projectId;
let keyId;
let proxyKey;

browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
const owner = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const origin = new URL(CONSOLE_URL).origin;
await owner.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
let page = await newPage(owner, "owner");
// The owner's first page: signed out by the sign-out step, signed in again later.
const ownerPage = page;

await step("sign in: a bad token is refused next to the field, the owner token signs in", async () => {
  await page.goto(CONSOLE_URL);
  await page.getByRole("heading", { name: "Sign in to SecureGate" }).waitFor();
  expect(await page.getByText(".securegate/admin.token").count(), "the sign-in page does not say where the operator token is");
  await audit(page, "the sign-in page");
  const input = page.getByLabel("Admin API token");
  expect((await input.getAttribute("type")) === "password", "the token field is not a password field");
  await input.fill("SGA_this-is-not-a-valid-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  const msg = await poll("an error next to the token field", () => errorFor(input), 10_000, 200);
  expect((await input.getAttribute("aria-invalid")) === "true", "the token field is not marked invalid");
  await shot(page, "signin.png");
  await audit(page, "the sign-in page with an error");
  console.log(`   bad token: “${msg}”`);
  await input.fill(OWNER_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Projects", level: 1 }).waitFor();
  const me = (await adminApi("GET", "/me")).body;
  expect(me.tenant?.id === TENANT_ID, `the owner token is not of tenant ${TENANT_ID}`);
  const header = await page.getByRole("banner").textContent();
  expect(typeof me.plan?.name === "string" && me.plan.name !== "", `the API names no plan for the owner: ${JSON.stringify(me.plan)}`);
  expect(header.includes(me.tenant.name) && /owner/.test(header) && header.includes(me.plan.name), `the header does not show the tenant, plan and role: ${header}`);
  expect(/Projects · SecureGate/.test(await page.title()), `unexpected title ${await page.title()}`);
  await audit(page, "the projects list (empty)");
});

await step("create a project and add a mock connection", async () => {
  await page.getByRole("button", { name: "New project" }).click();
  const dlg = page.getByRole("dialog", { name: "New project" });
  await dlg.getByLabel("Project name").fill(PROJECT_NAME);
  await submitDialog(dlg, "Create project");
  await page.getByRole("heading", { name: new RegExp(`^${PROJECT_NAME}`), level: 1 }).waitFor();
  await page.waitForURL(/#\/projects\/[^/]+\/connections/);
  projectId = decodeURIComponent(new URL(page.url()).hash.split("/")[2]);
  expect(projectId.startsWith("prj_"), `unexpected project id ${projectId}`);
  await page.getByText("No connections yet.").waitFor();
  await page.getByRole("button", { name: "Add connection" }).click();
  const add = page.getByRole("dialog", { name: "Add connection" });
  const keyField = add.getByLabel("Provider API key");
  await keyField.waitFor();
  expect((await keyField.getAttribute("type")) === "password" && (await keyField.getAttribute("autocomplete")) === "off", "the provider key field is not a password field with autocomplete off");
  await add.getByLabel("Provider", { exact: true }).selectOption("mock");
  await keyField.waitFor({ state: "hidden" });
  await submitDialog(add, "Add connection");
  const table = page.getByRole("table", { name: "Connections" });
  await table.getByRole("cell", { name: "Built-in mock" }).waitFor();
  const listed = await adminApi("GET", `/projects/${projectId}/connections`);
  expect(listed.body.data.length === 1 && listed.body.data[0].provider === "mock", `the API lists ${JSON.stringify(listed.body)}`);
  await shot(page, "connections.png");
  await audit(page, "the connections page");
});

await step("generate a key: shown once in a dialog, gone from the page after closing", async () => {
  await page.getByRole("navigation", { name: "Project sections" }).getByRole("link", { name: "Keys" }).click();
  await page.getByText("No keys yet.").waitFor();
  // Keyboard: Esc closes a dialog and focus returns to the button that opened it.
  const gen = page.getByRole("button", { name: "Generate key" });
  await gen.focus();
  await page.keyboard.press("Enter");
  const dlg = page.getByRole("dialog", { name: "Generate key" });
  await dlg.waitFor();
  await page.keyboard.press("Escape");
  await dlg.waitFor({ state: "detached" });
  expect(await gen.evaluate((b) => document.activeElement === b), "focus did not return to “Generate key” after Esc");
  // Generate.
  await gen.click();
  await dlg.getByLabel("Key name").waitFor();
  await audit(page, "the generate-key dialog");
  await dlg.getByLabel("Key name").fill(KEY_NAME);
  await dlg.getByRole("button", { name: "Generate key" }).click();
  const shown = page.getByRole("dialog", { name: /generated/ });
  await shown.waitFor();
  const field = shown.getByLabel("Proxy key");
  proxyKey = await field.inputValue();
  expect(/^SG_\S{20,}$/.test(proxyKey), `the dialog shows no proxy key: ${proxyKey.slice(0, 6)}…`);
  expect(await field.evaluate((i) => i.readOnly), "the key field is not read-only");
  await shown.getByText("You will not see this key again").waitFor();
  await shown.getByRole("button", { name: "Copy" }).click();
  await shown.getByText("Copied").waitFor();
  const clip = await page.evaluate(() => navigator.clipboard.readText());
  expect(clip === proxyKey, "Copy did not put the key on the clipboard");
  await shot(page, "key-created.png");
  await audit(page, "the new key's dialog");
  await shown.getByRole("button", { name: "Done" }).click();
  await shown.waitFor({ state: "detached" });
  await page.getByRole("table", { name: "Keys" }).getByRole("rowheader", { name: KEY_NAME }).waitFor();
  const html = await page.content();
  expect(!html.includes(proxyKey), "the key is still somewhere in the page after its dialog closed");
  expect(!(await page.evaluate((k) => document.body.innerText.includes(k) || [...document.querySelectorAll("input, textarea")].some((i) => i.value.includes(k)), proxyKey)), "the key is still in a field or text of the page");
  await page.evaluate(() => navigator.clipboard.writeText(""));
  const keys = await adminApi("GET", `/projects/${projectId}/keys`);
  keyId = keys.body.data.find((k) => k.name === KEY_NAME)?.id;
  expect(keyId, "the API does not list the key");
});

await step("the key works with the official OpenAI SDK (mock-gpt-4o-mini)", async () => {
  const r = await chat(proxyKey, "mock-gpt-4o-mini");
  expect(r.choices?.[0]?.message?.content, `no answer: ${JSON.stringify(r)}`);
});

await step("the request shows on the Requests and Usage pages", async () => {
  await openTab(page, "requests");
  await poll("the request in the request history", async () => {
    await page.reload();
    const row = page.getByRole("table", { name: "Request history" }).getByRole("cell", { name: "mock-gpt-4o-mini" });
    return row.first().waitFor({ timeout: 4_000 }).then(() => true, () => false);
  }, 25_000, 500);
  await shot(page, "requests.png");
  await audit(page, "the requests page");
  await openTab(page, "usage");
  await poll("1 request in the usage totals", async () => {
    await page.reload();
    const totals = page.locator('dl[aria-label="Totals"]');
    if (!(await totals.waitFor({ timeout: 5_000 }).then(() => true, () => false))) return false;
    const requests = (await totals.locator("div").filter({ has: page.locator("dt", { hasText: /^Requests$/ }) }).locator("dd").textContent()).trim();
    return requests === "1";
  }, 20_000, 500);
  await page.locator(".rpt-plot .uplot").first().waitFor();
  await shot(page, "usage.png");
  await audit(page, "the usage page");
  await openTab(page, "keys");
  const row = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: KEY_NAME }) });
  await poll("the key's binding in the keys table", async () => (await row.textContent()).includes("bound to 127.0.0.1") || (await page.reload(), false), 10_000, 1000);
  await shot(page, "keys.png");
  await audit(page, "the keys page");
  await page.goto(`${CONSOLE_URL}#/projects`);
  await page.getByRole("table", { name: "Projects" }).getByRole("link", { name: PROJECT_NAME, exact: true }).waitFor();
  await audit(page, "the projects list");
  await openTab(page, "keys");
  await page.getByRole("table", { name: "Keys" }).waitFor();
}, 75_000);

await step("locks: allow only mock-gpt-4o; the SDK gets 403 for mock-gpt-4o-mini, mock-gpt-4o works", async () => {
  await page.getByRole("button", { name: `Edit locks of ${KEY_NAME}` }).click();
  const dlg = page.getByRole("dialog", { name: `Locks of ${KEY_NAME}` });
  await dlg.waitFor();
  // A malformed address: the API refuses it, its message shows next to the address list,
  // and the dialog stays open with what was typed.
  const ipMode = dlg.getByLabel("IP lock", { exact: true });
  const list = dlg.getByLabel("Allowed IPs and CIDR ranges");
  await ipMode.selectOption("allow");
  await list.fill("10.0.0.0/8\nnot-an-address");
  await dlg.getByRole("button", { name: "Save locks" }).click();
  await dlg.locator('textarea[aria-invalid="true"]').waitFor({ timeout: 10_000 });
  const said = await list.evaluate((el) => el.closest(".field").querySelector(":scope > .field-error").textContent);
  expect(/not-an-address/.test(said), `the address list's error says ${JSON.stringify(said)}`);
  console.log(`   bad address: ${JSON.stringify(said)}`);
  await list.fill("");
  await ipMode.selectOption("auto_bind");
  const allowed = dlg.getByRole("group", { name: "Allowed models" });
  await allowed.getByRole("checkbox", { name: "mock-gpt-4o", exact: true }).check();
  expect(!(await allowed.getByRole("checkbox", { name: "mock-gpt-4o-mini", exact: true }).isChecked()), "mock-gpt-4o-mini is checked");
  await shot(page, "locks.png");
  await audit(page, "the edit-locks dialog");
  await submitDialog(dlg, "Save locks");
  const row = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: KEY_NAME }) });
  await row.getByText("Models: mock-gpt-4o").waitFor();
  const locks = await adminApi("GET", `/keys/${keyId}/locks`);
  expect(JSON.stringify(locks.body.locks.models) === '["mock-gpt-4o"]', `the API has models ${JSON.stringify(locks.body.locks.models)}`);
  await poll("a 403 for mock-gpt-4o-mini", async () => (await chatStatus(proxyKey, "mock-gpt-4o-mini")) === 403, 5_000, 300);
  const ok = await chatStatus(proxyKey, "mock-gpt-4o");
  expect(ok === 200, `mock-gpt-4o answered ${ok}`);
});

await step("the Events page shows the refusal; the Settings and Account pages", async () => {
  await openTab(page, "events");
  await poll("a lock.violated event", async () => {
    await page.reload();
    const cell = page.getByRole("table", { name: "Events and alerts" }).getByText("lock.violated", { exact: true });
    return cell.first().waitFor({ timeout: 4_000 }).then(() => true, () => false);
  }, 25_000, 500);
  await shot(page, "events.png");
  await audit(page, "the events page");
  await openTab(page, "settings");
  for (const name of ["Limits and budget", "Model registry", "Alerts", "Abuse detection"]) await page.getByRole("heading", { name, exact: true }).waitFor();
  await page.getByRole("button", { name: "Save abuse settings" }).waitFor();
  await page.locator("main .loading").first().waitFor({ state: "detached" });
  await shot(page, "settings.png");
  await audit(page, "the settings page");
  await page.goto(`${CONSOLE_URL}#/account`);
  await page.getByRole("heading", { name: "Account", level: 1 }).waitFor();
  await page.getByRole("heading", { name: "Members and tokens" }).waitFor();
  await page.getByRole("table", { name: "Tokens of this tenant" }).waitFor();
  await page.getByRole("button", { name: "Issue token" }).waitFor();
  await shot(page, "account.png");
  await audit(page, "the account page");
}, 60_000);

await step("revoke the key after confirming; the SDK gets 401", async () => {
  await openTab(page, "keys");
  await page.getByRole("button", { name: `Revoke ${KEY_NAME}` }).click();
  const dlg = page.getByRole("dialog", { name: `Revoke ${KEY_NAME}?` });
  await submitDialog(dlg, "Revoke key");
  const row = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: KEY_NAME }) });
  await row.getByText("revoked", { exact: true }).waitFor();
  await poll("a 401 for the revoked key", async () => (await chatStatus(proxyKey, "mock-gpt-4o")) === 401, 5_000, 300);
});

await step("sign out: the sign-in page, also after a reload; the API answers 401", async () => {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in to SecureGate" }).waitFor();
  await page.reload();
  await page.getByRole("heading", { name: "Sign in to SecureGate" }).waitFor();
  const status = await page.evaluate(async () => (await fetch("/admin/v1/me")).status);
  expect(status === 401, `GET /admin/v1/me answered ${status} after sign-out`);
  const session = await page.evaluate(async () => (await fetch("/console/session")).status);
  expect(session === 401, `GET /console/session answered ${session} after sign-out`);
});

await step("an expired token: the next page is the sign-in page, saying the session ended; signing in again returns there", async () => {
  // An admin token that expires in about 6 s (the API takes whole seconds).
  const expiresAt = new Date(Math.ceil((Date.now() + 6_000) / 1000) * 1000);
  const issued = await adminApi("POST", `/tenants/${TENANT_ID}/tokens`, { name: "e2e-short-lived", role: "admin", expires_at: expiresAt.toISOString().replace(/\.\d{3}Z$/, "Z") });
  expect(issued.status === 201 && issued.body?.token, `issuing a short-lived token answered ${issued.status}: ${JSON.stringify(issued.body)}`);
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  page = await newPage(ctx, "short-lived");
  await signIn(page, issued.body.token);
  const nav = page.getByRole("navigation", { name: "Main" });
  await nav.getByRole("link", { name: "Account" }).waitFor();
  expect(Date.now() < expiresAt.getTime(), "signing in took longer than the token lived");
  await page.waitForTimeout(expiresAt.getTime() - Date.now() + 1_000);
  await nav.getByRole("link", { name: "Account" }).click();
  await page.getByRole("heading", { name: "Sign in to SecureGate" }).waitFor();
  const notice = page.getByRole("status").filter({ hasText: /session has ended/i });
  await notice.waitFor();
  const text = (await notice.textContent()).trim();
  expect(/expired/i.test(text), `the sign-in page does not say the token expired: “${text}”`);
  console.log(`   expired: “${text}”`);
  await shot(page, "expired.png");
  await audit(page, "the sign-in page after the token expired");
  await page.getByLabel("Admin API token").fill(OWNER_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Account", level: 1 }).waitFor();
  await ctx.close();
});

await step("abuse detection: every rule shows and saves, a refused one is named at its field; a velocity rule of 5 requests a minute suspends a key (403 key_suspended); Resume lifts it", async () => {
  page = ownerPage;
  current = page;
  await signIn(page, OWNER_TOKEN);
  const before = (await adminApi("GET", `/projects/${projectId}/abuse`)).body;
  // The rule, through the Settings page.
  await openTab(page, "settings");
  const abuse = page.getByRole("region", { name: "Abuse detection", exact: true });
  // Saves the abuse form: the PUT succeeds and the page says so (the status line keeps a
  // message 5 s, across pages: an earlier one must be gone first).
  const toast = page.getByRole("status").filter({ hasText: "Abuse settings saved" });
  const save = async () => {
    await toast.waitFor({ state: "hidden", timeout: 8_000 });
    const put = page.waitForResponse((r) => r.request().method() === "PUT" && r.url().endsWith(`/projects/${projectId}/abuse`));
    await abuse.getByRole("button", { name: "Save abuse settings" }).click();
    const res = await put;
    expect(res.status() === 200, `saving the abuse settings answered ${res.status()}: ${await res.text()}`);
    await toast.waitFor({ timeout: 5_000 });
  };
  const requests = abuse.getByLabel("Velocity: requests per window");
  const windowSecs = abuse.getByLabel("Velocity window (seconds)");
  const suspendSecs = abuse.getByLabel("Suspension (seconds)");
  await requests.waitFor();
  expect(await abuse.getByLabel("Detect abuse and suspend keys").isChecked(), "abuse detection is off in a new project");
  const shown = { requests: await requests.inputValue(), window: await windowSecs.inputValue(), suspend: await suspendSecs.inputValue() };
  expect(shown.requests === String(before.velocity.requests) && shown.suspend === String(before.suspend_seconds), `the form shows ${JSON.stringify(shown)}, the API ${JSON.stringify(before)}`);
  // Every rule of the API is in the form, in the form's unit (cost in dollars).
  const rules = {
    "Velocity: tokens per window": before.velocity.tokens,
    "Velocity: cost per window (USD)": before.velocity.cost_micros === null ? null : before.velocity.cost_micros / 1e6,
    "Spike: times the key's usual rate": before.velocity.spike_factor,
    "Spike: at least this many requests": before.velocity.spike_min_requests,
    "Spread: client IPs per window": before.spread.ips,
    "Spread: countries per window": before.spread.countries,
    "Spread window (seconds)": before.spread.window_seconds,
    "Lock violations per window": before.violations.count,
    "Lock violations window (seconds)": before.violations.window_seconds,
    "Refused models per window": before.model_probing.count,
    "Model probing window (seconds)": before.model_probing.window_seconds,
  };
  for (const [label, value] of Object.entries(rules)) {
    const got = await abuse.getByLabel(label, { exact: true }).inputValue();
    expect(got === (value === null ? "" : String(value)), `${label} shows ${JSON.stringify(got)}, the API has ${value}`);
  }
  const spreadIps = abuse.getByLabel("Spread: client IPs per window", { exact: true });
  const spreadWindow = abuse.getByLabel("Spread window (seconds)", { exact: true });
  const probes = abuse.getByLabel("Refused models per window", { exact: true });
  const cost = abuse.getByLabel("Velocity: cost per window (USD)", { exact: true });
  // A window of 0 is refused, next to its field, and nothing is saved.
  await spreadIps.fill("7");
  await probes.fill("");
  await cost.fill("0.25");
  await spreadWindow.fill("0");
  const refusedPut = page.waitForResponse((r) => r.request().method() === "PUT" && r.url().endsWith(`/projects/${projectId}/abuse`));
  await abuse.getByRole("button", { name: "Save abuse settings" }).click();
  const refusedRes = await refusedPut;
  expect(refusedRes.status() === 400, `a spread window of 0 answered ${refusedRes.status()}`);
  await abuse.locator('input[name="spread.window_seconds"][aria-invalid="true"]').waitFor({ timeout: 5_000 });
  const windowError = await spreadWindow.evaluate((el) => el.closest(".field").querySelector(":scope > .field-error").textContent);
  expect(/between 1 and 86400/.test(windowError), `the spread window's error says ${JSON.stringify(windowError)}`);
  expect((await adminApi("GET", `/projects/${projectId}/abuse`)).body.spread.ips === before.spread.ips, "a refused form changed the settings");
  await spreadWindow.fill(String(before.spread.window_seconds));
  await save();
  const saved = (await adminApi("GET", `/projects/${projectId}/abuse`)).body;
  expect(saved.spread.ips === 7 && saved.model_probing.count === null && saved.velocity.cost_micros === 250_000 && saved.spread.window_seconds === before.spread.window_seconds,
    `the API has ${JSON.stringify(saved)}`);
  // An empty suspension (required), then text that is no number: each is named at its
  // field and no PUT is sent (neither may go as 0 or as "unchanged").
  let abusePuts = 0;
  const countPut = (req) => { if (req.method() === "PUT" && req.url().endsWith(`/projects/${projectId}/abuse`)) abusePuts += 1; };
  const suspendError = () => suspendSecs.evaluate((el) => el.closest(".field").querySelector(":scope > .field-error").textContent);
  page.on("request", countPut);
  try {
    await suspendSecs.fill("");
    await abuse.getByRole("button", { name: "Save abuse settings" }).click();
    await abuse.locator('input[name="suspend_seconds"][aria-invalid="true"]').waitFor({ timeout: 5_000 });
    const said = await suspendError();
    expect(/suspension in seconds/.test(said), `an empty suspension's error says ${JSON.stringify(said)}`);
    await suspendSecs.pressSequentially("1e");
    expect(await suspendSecs.evaluate((el) => el.validity.badInput), "“1e” in the suspension field is not bad input");
    await abuse.getByRole("button", { name: "Save abuse settings" }).click();
    await poll("the suspension's “Enter a number.”", async () => (await suspendError()) === "Enter a number.", 5_000, 100);
    expect(await suspendSecs.getAttribute("aria-invalid") === "true", "the unreadable suspension is not marked invalid");
    await page.waitForTimeout(300);
  } finally {
    page.off("request", countPut);
  }
  expect(abusePuts === 0, `saving without a readable suspension sent ${abusePuts} PUT request(s)`);
  await suspendSecs.fill(String(before.suspend_seconds));
  await spreadIps.fill(before.spread.ips === null ? "" : String(before.spread.ips));
  await probes.fill(before.model_probing.count === null ? "" : String(before.model_probing.count));
  await cost.fill(before.velocity.cost_micros === null ? "" : String(before.velocity.cost_micros / 1e6));
  // The velocity rule the rest of the step trips.
  await requests.fill("5");
  await windowSecs.fill("60");
  await suspendSecs.fill("600");
  await save();
  // A successful save leaves no error from the refused attempts.
  expect(await abuse.locator('[aria-invalid="true"], .field-error:not([hidden]), .form-error:not([hidden])').count() === 0, "an error of a refused save is still shown after a successful one");
  const rule = (await adminApi("GET", `/projects/${projectId}/abuse`)).body;
  expect(rule.velocity.requests === 5 && rule.velocity.window_seconds === 60 && rule.suspend_seconds === 600 && rule.enabled, `the API has ${JSON.stringify(rule)}`);
  // A fresh key with the default locks, used until the sentinel suspends it.
  const issued = await adminApi("POST", `/projects/${projectId}/keys`, { name: BURST_KEY });
  expect(issued.status === 201 && issued.body?.key, `generating a key answered ${issued.status}`);
  const burstKey = issued.body.key;
  // Windows are clock minutes: a burst across a minute's end trips in the next one.
  let sent = 0;
  let refused;
  const deadline = Date.now() + 30_000;
  while (!refused) {
    expect(Date.now() < deadline, `no 403 after ${sent} requests in 30 s`);
    sent += 1;
    try {
      await chat(burstKey, "mock-gpt-4o-mini");
      await new Promise((r) => setTimeout(r, 200));
    } catch (err) {
      if (!(err instanceof OpenAI.PermissionDeniedError)) fail(`request ${sent} failed otherwise: ${err.status ?? ""} ${err.message}`);
      refused = err;
    }
  }
  expect(refused.code === "key_suspended", `the 403 says ${refused.code}: ${refused.message}`);
  console.log(`   suspended after ${sent} requests: “${refused.error?.message ?? refused.message}”`);
  // The keys page shows it suspended: the rule, until when.
  await openTab(page, "keys");
  const row = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: BURST_KEY }) });
  await poll("the key shown as suspended", async () => (await row.getByText("suspended", { exact: true }).count()) > 0 || (await page.reload(), false), 10_000, 1000);
  const status = (await row.textContent()).replace(/\s+/g, " ");
  expect(/ends in \d+ minutes/.test(status) && /velocity: .*limit 5/.test(status), `the key's row says “${status}”`);
  const until = await row.locator("time").first().getAttribute("datetime");
  expect(Math.abs(Date.parse(until) - Date.now() - 600_000) < 60_000, `suspended until ${until}, not in about 600 s`);
  await shot(page, "suspended.png");
  await audit(page, "the keys page with a suspended key");
  // Resume, after confirming.
  await row.getByRole("button", { name: `Resume ${BURST_KEY}` }).click();
  const dlg = page.getByRole("dialog", { name: `Resume ${BURST_KEY}?` });
  await dlg.getByText(/velocity: .*limit 5/).waitFor();
  await audit(page, "the resume dialog");
  await submitDialog(dlg, "Resume key");
  await row.getByText("active", { exact: true }).waitFor();
  expect((await row.getByRole("button", { name: `Resume ${BURST_KEY}` }).count()) === 0, "the resumed key still offers Resume");
  const key = (await adminApi("GET", `/keys/${issued.body.id}`)).body;
  expect(key.suspension === null, `the API still has a suspension: ${JSON.stringify(key.suspension)}`);
  await poll("a 200 for the resumed key", async () => (await chatStatus(burstKey, "mock-gpt-4o-mini")) === 200, 5_000, 300);
  // The rule as it was, so later steps' keys are not suspended.
  await openTab(page, "settings");
  await requests.fill(shown.requests);
  await windowSecs.fill(shown.window);
  await suspendSecs.fill(shown.suspend);
  await save();
  const after = (await adminApi("GET", `/projects/${projectId}/abuse`)).body;
  expect(JSON.stringify(after) === JSON.stringify(before), `the abuse settings were not restored: ${JSON.stringify(after)}`);
}, 90_000);

await step("places: a city lock set in the console admits London and refuses Linköping (403 city_not_allowed); bound to the first request's city, the row shows the place and Unbind clears it", async () => {
  // The gateway reads the client's address from X-Forwarded-For (it trusts 127.0.0.1)
  // and places it with MaxMind's test database.
  page = ownerPage;
  current = page;
  const issued = await adminApi("POST", `/projects/${projectId}/keys`, { name: PLACES_KEY });
  expect(issued.status === 201 && issued.body?.key, `generating a key answered ${issued.status}`);
  const placesKey = issued.body.key;
  const from = async (ip) => {
    try {
      await sdk(placesKey).chat.completions.create(
        { model: "mock-gpt-4o-mini", messages: [{ role: "user", content: "Hello from a place" }] },
        { headers: { "X-Forwarded-For": ip } },
      );
      return "200";
    } catch (err) {
      if (typeof err.status === "number") return `${err.status} ${err.code}`;
      throw err;
    }
  };
  await openTab(page, "keys");
  const row = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: PLACES_KEY }) });
  const editLocks = async (fill) => {
    await row.getByRole("button", { name: `Edit locks of ${PLACES_KEY}` }).click();
    const dlg = page.getByRole("dialog", { name: `Locks of ${PLACES_KEY}` });
    await dlg.waitFor();
    await fill(dlg);
    await submitDialog(dlg, "Save locks");
  };
  await editLocks(async (dlg) => {
    await dlg.getByLabel("IP lock", { exact: true }).selectOption("off");
    await dlg.getByLabel("Location lock", { exact: true }).selectOption("allow");
    await dlg.getByLabel("Cities", { exact: true }).fill("GB: London");
  });
  await row.getByText("Places: London (GB)").waitFor();
  await poll("London admitted", async () => (await from("81.2.69.142")) === "200", 5_000, 300);
  const elsewhere = await from("89.160.20.112");
  expect(elsewhere === "403 city_not_allowed", `Linköping got ${elsewhere}`);
  // Bound to the first request's city: Linköping binds, then London is refused.
  await editLocks(async (dlg) => {
    await dlg.getByLabel("Location lock", { exact: true }).selectOption("auto_city");
  });
  await row.getByText("Place: binds on first use (city)").waitFor();
  await poll("Linköping binds", async () => (await from("89.160.20.112")) === "200", 5_000, 300);
  const london = await from("81.2.69.142");
  expect(london === "403 city_not_allowed", `London after the key bound to Linköping got ${london}`);
  await poll("the row shows the bound place", async () => (await row.getByText("Place: bound to Linköping, SE").count()) > 0 || (await page.reload(), false), 10_000, 1000);
  await audit(page, "the keys page with a key bound to a place");
  // Unbind: the place is checked; afterwards the key binds on its next request again.
  await row.getByRole("button", { name: `Unbind ${PLACES_KEY}` }).click();
  const dlg = page.getByRole("dialog", { name: `Unbind ${PLACES_KEY}` });
  const place = dlg.getByLabel("Place (Linköping, SE)");
  expect(await place.isChecked(), "the bound place is not checked in the Unbind dialog");
  await submitDialog(dlg, "Unbind");
  await row.getByText("Place: binds on first use (city)").waitFor();
  const locks = (await adminApi("GET", `/keys/${issued.body.id}/locks`)).body;
  expect(locks.bound_place === null, `the API still has a bound place: ${JSON.stringify(locks.bound_place)}`);
  await poll("London binds after Unbind", async () => (await from("81.2.69.142")) === "200", 5_000, 300);
}, 60_000);

await step("a viewer sees data but no write controls, and the API refuses its writes", async () => {
  // An active key for the viewer to look at (a revoked one shows no actions to anyone).
  const k = await adminApi("POST", `/projects/${projectId}/keys`, { name: "viewer-visible" });
  expect(k.status === 201, `creating a key over the API answered ${k.status}`);
  const viewer = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  page = await newPage(viewer, "viewer");
  await signIn(page, VIEWER_TOKEN);
  const writeNames = /generate|add|revoke|edit|rotate|new project|issue|save|remove|unbind|resume|limits/i;
  const counts = async (where) => {
    const b = await page.getByRole("button", { name: writeNames }).count();
    const l = await page.getByRole("link", { name: writeNames }).count();
    const f = await page.locator("main form").count();
    expect(b === 0 && l === 0, `${where}: ${b} write buttons and ${l} write links for a viewer`);
    return f;
  };
  // The list drawn, not just its heading: a page still loading has no buttons either.
  await page.getByRole("table", { name: "Projects" }).getByRole("link", { name: PROJECT_NAME, exact: true }).waitFor();
  await counts("projects");
  await openTab(page, "keys");
  await page.getByRole("table", { name: "Keys" }).getByRole("rowheader", { name: "viewer-visible" }).waitFor();
  expect((await counts("keys")) === 0, "the keys page has a form for a viewer");
  await shot(page, "viewer.png");
  await audit(page, "the viewer's keys page");
  await openTab(page, "connections");
  await page.getByRole("table", { name: "Connections" }).getByRole("cell", { name: "Built-in mock" }).waitFor();
  expect((await counts("connections")) === 0, "the connections page has a form for a viewer");
  await openTab(page, "settings");
  await page.getByRole("heading", { name: "Limits and budget" }).waitFor();
  await page.getByRole("heading", { name: "Abuse detection" }).waitFor();
  await page.locator(".loading").first().waitFor({ state: "detached" });
  // Every section drawn: the abuse rules as a list, the limits as facts.
  await page.getByText("Velocity: requests per window", { exact: true }).waitFor();
  expect((await counts("settings")) === 0, "the settings page has a form for a viewer");
  await page.goto(`${CONSOLE_URL}#/account`);
  await page.getByRole("heading", { name: "Your access" }).waitFor();
  await counts("account");
  expect((await page.getByRole("heading", { name: "Members and tokens" }).count()) === 0, "a viewer sees the tokens section");
  const status = await page.evaluate(async (pid) => {
    const s = await (await fetch("/console/session")).json();
    const r = await fetch(`/admin/v1/projects/${pid}/keys`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": s.csrf_token },
      body: JSON.stringify({ name: "viewer-write" }),
    });
    return r.status;
  }, projectId);
  expect(status === 403, `a viewer's POST answered ${status}`);
  await viewer.close();
});

/** How many writes the admin service refused as `csrf_refused` (its /metrics). */
async function csrfRefusals() {
  const text = await (await fetch(`${ADMIN_URL}/metrics`)).text();
  return text.split("\n")
    .filter((l) => l.startsWith("securegate_http_requests_total{") && l.includes('status="403"') && l.includes('code="csrf_refused"'))
    .reduce((n, l) => n + Number(l.split(" ").pop()), 0);
}

await step("CSRF: another origin's form and no-cors fetch cannot act with the owner's cookie", async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  page = await newPage(ctx, "owner-2");
  await signIn(page, OWNER_TOKEN);
  const before = (await adminApi("GET", `/projects/${projectId}/keys`)).body.data.length;
  const target = `${ADMIN_URL}/admin/v1/projects/${projectId}/keys`;
  const esc = (s) => s.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;");
  const html = `<!doctype html><title>totally harmless</title>
<form id="f" method="POST" enctype="text/plain" action="${esc(target)}">
<input type="hidden" name='{"name":"csrf-form","x":"' value='"}'>
</form>
<script>
fetch(${JSON.stringify(target)}, { method: "POST", mode: "no-cors", credentials: "include",
  headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ name: "csrf-fetch" }) })
  .catch(() => {})
  .finally(() => document.getElementById("f").submit());
</script>`;
  attacker = http.createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    res.end(html);
  });
  await new Promise((r) => attacker.listen(0, "127.0.0.1", r));
  const evil = `http://127.0.0.1:${attacker.address().port}/`;
  // The attacker's page is not the console: its own console output is not ours to judge.
  const tab = await ctx.newPage();
  const landed = tab.waitForResponse((res) => res.url() === target && res.request().method() === "POST" && res.request().isNavigationRequest(), { timeout: 15_000 });
  const refusedBefore = await csrfRefusals();
  await tab.goto(evil);
  const res = await landed;
  expect(res.status() === 403, `the cross-origin form's POST answered ${res.status()}`);
  // The 403 page settles before the tab is used further (best effort: its load event
  // is not what this step checks).
  await tab.waitForLoadState().catch(() => {});
  await new Promise((r) => setTimeout(r, 1000));
  // The no-cors fetch reached the server too and was refused there (the browser hides
  // its answer from the page, and from us): the admin's own count says so.
  await poll("both cross-origin POSTs refused as csrf_refused", async () => (await csrfRefusals()) - refusedBefore === 2, 5_000, 200);
  const after = (await adminApi("GET", `/projects/${projectId}/keys`)).body.data;
  expect(after.length === before, `the project had ${before} keys and now has ${after.length}: ${after.map((k) => k.name).join(", ")}`);
  await tab.close();
  attacker.close();
  attacker = null;
  // The owner's own session still works.
  await openTab(page, "keys");
  await page.getByRole("table", { name: "Keys" }).waitFor();
});

await step("phone width (375 px): the keys page fits, tables scroll inside their container", async () => {
  await page.setViewportSize({ width: 375, height: 800 });
  await openTab(page, "keys");
  await page.getByRole("table", { name: "Keys" }).waitFor();
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  expect(width <= 375, `the page is ${width} px wide at a 375 px viewport`);
  await shot(page, "mobile.png");
  await audit(page, "the keys page at 375 px");
  await openTab(page, "usage");
  await page.locator('dl[aria-label="Totals"]').waitFor();
  const w2 = await page.evaluate(() => document.documentElement.scrollWidth);
  expect(w2 <= 375, `the usage page is ${w2} px wide at a 375 px viewport`);
  await shot(page, "mobile-usage.png");
});

console.log(`all steps passed; axe found no WCAG 2.1 A/AA violation on ${audited.length} views (${audited.join("; ")}); screenshots in ${ARTIFACTS}`);
await shutdown();
