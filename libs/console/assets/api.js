// The console's one door to the admin API: the same endpoints and authorization as the
// CLI. The session is an HttpOnly cookie the browser sends by itself; every write also
// carries the CSRF token the session endpoint handed out, which another origin cannot read.

const BASE = "/admin/v1";
let csrf = null;
let onSignedOut = () => {};

/** An error answer of the API: `status`, `code`, `param` (the field it names), `message`. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `the server answered ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.param = e.param || null;
    this.type = e.type || null;
  }
}

/** Called with the ApiError (`code`, `message`) of the 401 that ended the session (expired or revoked token): back to sign-in. */
export function setSignedOutHandler(f) {
  onSignedOut = f;
}

async function parse(res) {
  if (res.status === 204) return null;
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: { message: text.slice(0, 200) } };
  }
}

async function send(method, url, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = csrf || "";
    // A fresh idempotency id per click: a retried write is not applied twice.
    headers["Idempotency-Key"] = crypto.randomUUID();
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { error: { message: "the admin service cannot be reached; check that it is running" } });
  }
  const data = await parse(res);
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && url.startsWith(BASE)) {
      csrf = null;
      onSignedOut(err);
    }
    throw err;
  }
  return data;
}

/** `path` is relative to /admin/v1, e.g. `/projects/prj_…/keys`; `query` an object. */
export function get(path, query) {
  const q = query ? "?" + new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== "")) : "";
  return send("GET", BASE + path + q);
}
export const post = (path, body) => send("POST", BASE + path, body ?? {});
export const put = (path, body) => send("PUT", BASE + path, body);

/** The current session (`{csrf_token, me}`), or null when signed out. */
export async function session() {
  try {
    const s = await send("GET", "/console/session");
    csrf = s.csrf_token;
    return s;
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

/** Signs in with an admin API token; the token goes into an HttpOnly cookie, never into script-visible storage. */
export async function signIn(token) {
  const s = await send("POST", "/console/session", { token });
  csrf = s.csrf_token;
  return s;
}

export async function signOut() {
  try {
    await send("DELETE", "/console/session");
  } finally {
    csrf = null;
  }
}
