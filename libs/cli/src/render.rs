//! What the commands print for people (`--output table`). Pure: admin API JSON in,
//! text out. Nothing here ever prints a provider key; only [`key_issued`] and
//! [`key_rotated`] print a proxy key, the one time the API shows it.

use serde_json::Value;

/// Columns aligned on the widest cell; two spaces between columns.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(headers: I) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, one line per row, each ending in `\n`; no trailing spaces.
    pub fn render(&self) -> String {
        let columns = std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', widths[i] - width(cell)));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// `label  value` lines, labels aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(l, _)| width(l)).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in pairs {
        let pad = " ".repeat(w - width(label));
        out.push_str(format!("{label}{pad}  {value}").trim_end());
        out.push('\n');
    }
    out
}

/// A string field, `-` when missing or null; other JSON values as JSON.
pub fn text(v: &Value, field: &str) -> String {
    match v.get(field) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => sanitize(s),
        Some(other) => sanitize(&other.to_string()),
    }
}

/// A list field joined with `,`; `-` when empty, `empty` is said for null.
fn list(v: &Value, field: &str, null: &str) -> String {
    match v.get(field) {
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(sanitize).unwrap_or_else(|| i.to_string()))
            .collect::<Vec<_>>()
            .join(","),
        _ => null.into(),
    }
}

/// Terminal-safe text: control characters (escape sequences a hostile name could carry)
/// are replaced.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// One line saying who the caller is: role, token, tenant, plan.
pub fn whoami(me: &Value) -> String {
    if me["caller"] == "operator" {
        return "the operator (every tenant)".into();
    }
    let token = &me["token"];
    let mut s = format!("token {:?} ({})", text(token, "name"), text(me, "role"));
    if let Some(projects) = token["project_ids"].as_array() {
        let ids: Vec<String> = projects
            .iter()
            .filter_map(Value::as_str)
            .map(sanitize)
            .collect();
        s.push_str(&format!(", limited to {}", ids.join(",")));
    }
    if me["tenant"].is_object() {
        s.push_str(&format!(
            " of tenant {} ({})",
            text(&me["tenant"], "name"),
            text(&me["tenant"], "id")
        ));
    }
    if me["plan"].is_object() {
        s.push_str(&format!(", plan {}", text(&me["plan"], "name")));
    }
    s
}

/// What a plan allows, on one line.
pub fn plan(plan: &Value) -> String {
    if !plan.is_object() {
        return "-".into();
    }
    let limit = |field: &str| match plan[field].as_u64() {
        Some(n) => n.to_string(),
        None => "unlimited".into(),
    };
    format!(
        "{}: {} connections, per key {} requests/min and {}/day, locks: {}",
        text(plan, "name"),
        limit("max_connections"),
        limit("key_rpm"),
        limit("key_rpd"),
        list(plan, "features", "-")
    )
}

/// A project with its counts, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectSummary {
    pub id: String,
    pub name: String,
    pub connections: usize,
    pub keys: usize,
    pub active_keys: usize,
}

/// `securegate status`.
pub fn status(url: &str, me: &Value, projects: Option<&[ProjectSummary]>) -> String {
    let mut pairs: Vec<(&str, String)> = vec![("Admin API", sanitize(url))];
    if me["caller"] == "operator" {
        pairs.push((
            "Caller",
            "the operator token: every tenant, every project".into(),
        ));
    } else {
        let token = &me["token"];
        pairs.push((
            "Caller",
            format!(
                "token {:?} ({}), {}",
                text(token, "name"),
                text(me, "role"),
                text(token, "hint")
            ),
        ));
        if let Some(ids) = token["project_ids"].as_array() {
            let ids: Vec<String> = ids.iter().filter_map(Value::as_str).map(sanitize).collect();
            pairs.push(("Limited to", ids.join(", ")));
        }
        if token["expires_at"].is_string() {
            pairs.push(("Expires", text(token, "expires_at")));
        }
        pairs.push((
            "Tenant",
            format!(
                "{} ({})",
                text(&me["tenant"], "name"),
                text(&me["tenant"], "id")
            ),
        ));
        pairs.push(("Plan", plan(&me["plan"])));
    }
    pairs.push((
        "Gateway",
        match me["gateway_url"].as_str() {
            Some(g) => format!("{}/v1", sanitize(g.trim_end_matches('/'))),
            None => "not set (the operator sets it with --gateway-url)".into(),
        },
    ));
    let mut out = fields(&pairs);
    match projects {
        None => {
            let tenants = me["tenants"].as_array().cloned().unwrap_or_default();
            if tenants.is_empty() {
                out.push_str("\nNo tenants yet.\n");
            } else {
                let mut t = Table::new(["TENANT", "NAME", "PLAN"]);
                for tenant in &tenants {
                    t.row([
                        text(tenant, "id"),
                        text(tenant, "name"),
                        tenant["plan"].as_str().map_or("(none)".into(), sanitize),
                    ]);
                }
                out.push('\n');
                out.push_str(&t.render());
            }
            out.push_str(
                "\nThe operator token belongs to no tenant, so there are no projects to list here;\n\
                 use a tenant's admin API token (`securegate login`) to work on its projects.\n",
            );
        }
        Some([]) => out.push_str(
            "\nNo projects yet: `securegate connect` creates one named `default` (owners).\n",
        ),
        Some(projects) => {
            let mut t = Table::new(["PROJECT", "NAME", "CONNECTIONS", "KEYS", "ACTIVE KEYS"]);
            for p in projects {
                t.row([
                    sanitize(&p.id),
                    sanitize(&p.name),
                    p.connections.to_string(),
                    p.keys.to_string(),
                    p.active_keys.to_string(),
                ]);
            }
            out.push('\n');
            out.push_str(&t.render());
        }
    }
    out
}

/// `GET /projects/{id}/keys`.
pub fn keys(answer: &Value) -> String {
    let data = answer["data"].as_array().cloned().unwrap_or_default();
    if data.is_empty() {
        return "No keys yet: `securegate keys create` issues one.\n".into();
    }
    let mut t = Table::new([
        "ID",
        "NAME",
        "HINT",
        "STATUS",
        "CONNECTIONS",
        "MODELS",
        "CREATED",
        "LAST USED",
    ]);
    for k in &data {
        t.row([
            text(k, "id"),
            text(k, "name"),
            text(k, "hint"),
            if k["suspension"].is_object() {
                format!("suspended ({})", text(&k["suspension"], "rule"))
            } else {
                text(k, "status")
            },
            list(k, "connection_ids", "-"),
            list(k, "allowed_models", "any"),
            text(k, "created_at"),
            text(k, "last_used_at"),
        ]);
    }
    t.render()
}

/// A key record's fields.
fn key_fields(k: &Value) -> Vec<(&'static str, String)> {
    vec![
        ("Key id", text(k, "id")),
        ("Name", text(k, "name")),
        ("Project", text(k, "project_id")),
        ("Connections", list(k, "connection_ids", "-")),
        ("Models", list(k, "allowed_models", "any")),
    ]
}

const SHOWN_ONCE: &str =
    "This is the only time the key is shown: store it now (SecureGate keeps only its hash).";

/// `keys create`: the record, then the key and the warning that it is shown once.
pub fn key_issued(k: &Value) -> String {
    let mut out = fields(&key_fields(k));
    out.push('\n');
    out.push_str(&text(k, "key"));
    out.push('\n');
    out.push_str(SHOWN_ONCE);
    out.push('\n');
    out
}

/// `keys rotate`: the new key once, and when the old one stops.
pub fn key_rotated(k: &Value, now_unix: i64) -> String {
    let mut pairs = key_fields(k);
    pairs.insert(1, ("Replaces", text(k, "replaces")));
    let retires = text(k, "replaced_key_retires_at");
    let when =
        time::OffsetDateTime::parse(&retires, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp() - now_unix);
    let retires = match when {
        Some(secs) if secs > 0 => format!(
            "{retires} (in {})",
            humantime::format_duration(std::time::Duration::from_secs(secs.unsigned_abs()))
        ),
        Some(_) => format!("{retires} (now)"),
        None => retires,
    };
    pairs.push(("Old key stops", retires));
    let mut out = fields(&pairs);
    out.push('\n');
    out.push_str(&text(k, "key"));
    out.push('\n');
    out.push_str(SHOWN_ONCE);
    out.push('\n');
    out
}

/// A key's locks (`GET`/`PUT /keys/{id}/locks`), one line per lock.
pub fn locks(key_id: &str, v: &Value) -> String {
    let l = &v["locks"];
    let ip = match l["ip"]["mode"].as_str() {
        Some("allow") => format!("allow {}", list(&l["ip"], "cidrs", "-")),
        Some("auto_bind") => match v["bound_ip"].as_str() {
            Some(b) => format!("auto-bind (bound to {})", sanitize(b)),
            None => "auto-bind (the first request binds it)".into(),
        },
        Some("off") => "off".into(),
        _ => sanitize(&l["ip"].to_string()),
    };
    let device = match l["device"]["mode"].as_str() {
        Some("fixed") => format!("fixed {}", text(&l["device"], "fingerprint")),
        Some("auto_bind") => match v["bound_device"].as_str() {
            Some(b) => format!("auto-bind (bound to {})", sanitize(b)),
            None => "auto-bind (the first request binds it)".into(),
        },
        Some("off") => "off".into(),
        _ => sanitize(&l["device"].to_string()),
    };
    let geo = if l["geo"]["mode"] == "auto_bind" {
        let level = l["geo"]["level"].as_str().unwrap_or("country");
        match v["bound_place"]["country"].as_str() {
            Some(country) => match v["bound_place"]["city"].as_str() {
                Some(city) => format!(
                    "auto-bind by {level} (bound to {}/{})",
                    sanitize(country),
                    sanitize(city)
                ),
                None => format!("auto-bind by {level} (bound to {})", sanitize(country)),
            },
            None => format!("auto-bind by {level} (the first request binds it)"),
        }
    } else if l["geo"].is_object() {
        let cities: Vec<String> = l["geo"]["cities"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| format!("{}/{}", text(c, "country"), text(c, "city")))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "countries {}; cities {}",
            list(&l["geo"], "countries", "-"),
            if cities.is_empty() {
                "-".into()
            } else {
                cities.join(",")
            }
        )
    } else {
        "off".into()
    };
    let expires = match l["expires_at"].as_i64() {
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| t.to_string()),
        None => "never".into(),
    };
    fields(&[
        ("Key", sanitize(key_id)),
        ("IP", ip),
        ("Device", device),
        ("Location", geo),
        ("Models", list(l, "models", "any")),
        (
            "Signature",
            if l["signature"].is_object() {
                "required".into()
            } else {
                "off".into()
            },
        ),
        ("Expires", expires),
    ])
}

/// A connection record.
pub fn connection(c: &Value) -> String {
    fields(&[
        ("Connection id", text(c, "id")),
        ("Name", text(c, "name")),
        ("Provider", text(c, "provider")),
        ("Base URL", text(c, "base_url")),
        ("Project", text(c, "project_id")),
    ])
}

/// The numbered provider menu of `connect`.
pub fn provider_menu(providers: &[Value]) -> String {
    let mut t = Table::new(["#", "PROVIDER", "NAME", "DEFAULT BASE URL"]);
    for (i, p) in providers.iter().enumerate() {
        t.row([
            (i + 1).to_string(),
            text(p, "id"),
            text(p, "name"),
            match p["default_base_url"].as_str() {
                Some(url) => sanitize(url),
                // The mock answers locally: no base URL and no key.
                None if p["id"] == "mock" => "(answers locally; no key needed)".into(),
                None => "(--base-url required)".into(),
            },
        ]);
    }
    t.render()
}

fn number(v: &Value, field: &str) -> String {
    match &v[field] {
        Value::Number(n) => n.to_string(),
        _ => "-".into(),
    }
}

fn millis(v: &Value, field: &str) -> String {
    match v["latency_ms"][field].as_f64() {
        Some(ms) => format!("{ms:.0}"),
        None => "-".into(),
    }
}

fn usd(v: &Value) -> String {
    match v["cost_usd"].as_f64() {
        Some(c) => format!("{c:.6}"),
        None => "-".into(),
    }
}

/// A usage report (`GET …/usage`).
pub fn usage(report: &Value) -> String {
    let mut t = Table::new([
        report["group_by"]
            .as_str()
            .unwrap_or("group")
            .to_ascii_uppercase(),
        "REQUESTS".into(),
        "ERRORS".into(),
        "PROMPT TOK".into(),
        "COMPLETION TOK".into(),
        "TOTAL TOK".into(),
        "COST USD".into(),
        "P50 MS".into(),
        "P95 MS".into(),
        "P99 MS".into(),
    ]);
    let mut line = |label: String, g: &Value| {
        t.row([
            label,
            number(g, "requests"),
            number(g, "errors"),
            number(g, "prompt_tokens"),
            number(g, "completion_tokens"),
            number(g, "total_tokens"),
            usd(g),
            millis(g, "p50"),
            millis(g, "p95"),
            millis(g, "p99"),
        ])
    };
    for g in report["data"].as_array().into_iter().flatten() {
        let label = match &g["group"] {
            Value::Null => "(none)".into(),
            other => other
                .as_str()
                .map(sanitize)
                .unwrap_or_else(|| other.to_string()),
        };
        line(label, g);
    }
    line("TOTAL".into(), &report["totals"]);
    let mut out = format!(
        "Usage from {} to {} (whole UTC hours)\n\n",
        text(report, "from"),
        text(report, "to")
    );
    out.push_str(&t.render());
    if report["totals"]["unpriced_requests"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "\n{} request(s) had no price for their model and count at zero cost.\n",
            number(&report["totals"], "unpriced_requests")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(["ID", "NAME", "X"]);
        t.row(["k1", "a", ""]);
        t.row(["key_long", "ünïcode", "z"]);
        assert_eq!(
            t.render(),
            "ID        NAME     X\nk1        a\nkey_long  ünïcode  z\n"
        );
        assert!(!t.is_empty());
        assert_eq!(Table::new(["A"]).render(), "A\n");
    }

    #[test]
    fn fields_align() {
        assert_eq!(
            fields(&[
                ("A", "1".into()),
                ("Long", "2".into()),
                ("E", String::new())
            ]),
            "A     1\nLong  2\nE\n"
        );
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        assert_eq!(sanitize("a\u{1b}[31mb\n"), "a\u{FFFD}[31mb\u{FFFD}");
        assert_eq!(text(&json!({"n": "x\u{7}"}), "n"), "x\u{FFFD}");
    }

    fn me_token() -> Value {
        json!({
            "caller": "token", "role": "owner",
            "token": {"id": "tok_1", "name": "cli", "role": "owner", "hint": "SGA_…abcd",
                      "project_ids": null, "status": "active", "expires_at": null},
            "tenant": {"id": "ten_1", "name": "acme", "plan": "team"},
            "plan": {"name": "team", "max_connections": 10, "features": ["ip", "model"],
                     "key_rpm": 1000, "key_rpd": null},
            "gateway_url": "http://127.0.0.1:8080"
        })
    }

    #[test]
    fn whoami_and_plan() {
        assert_eq!(
            whoami(&me_token()),
            "token \"cli\" (owner) of tenant acme (ten_1), plan team"
        );
        assert_eq!(
            whoami(&json!({"caller": "operator", "role": "operator"})),
            "the operator (every tenant)"
        );
        assert_eq!(
            plan(&me_token()["plan"]),
            "team: 10 connections, per key 1000 requests/min and unlimited/day, locks: ip,model"
        );
    }

    #[test]
    fn status_for_a_token_and_the_operator() {
        let projects = [ProjectSummary {
            id: "prj_1".into(),
            name: "agents".into(),
            connections: 1,
            keys: 3,
            active_keys: 2,
        }];
        let s = status("http://a", &me_token(), Some(&projects));
        assert!(
            s.contains("Caller     token \"cli\" (owner), SGA_…abcd\n"),
            "{s}"
        );
        assert!(s.contains("Tenant     acme (ten_1)\n"), "{s}");
        assert!(s.contains("Gateway    http://127.0.0.1:8080/v1\n"), "{s}");
        assert!(s.contains("PROJECT  NAME    CONNECTIONS  KEYS  ACTIVE KEYS\nprj_1    agents  1            3     2\n"), "{s}");
        let op = status(
            "http://a",
            &json!({"caller": "operator", "role": "operator", "gateway_url": null,
                    "tenants": [{"id": "ten_1", "name": "acme", "plan": "pro"}, {"id": "ten_2", "name": "old", "plan": null}]}),
            None,
        );
        assert!(op.contains("the operator token"), "{op}");
        assert!(
            op.contains("ten_1   acme  pro\n") && op.contains("ten_2   old   (none)\n"),
            "{op}"
        );
        assert!(op.contains("--gateway-url"), "{op}");
        assert!(!op.contains("PROJECT"), "{op}");
    }

    #[test]
    fn key_lists_never_hold_keys() {
        let list = json!({"data": [{"id": "key_1", "name": "ci", "hint": "SG_…wxyz", "status": "active",
            "connection_ids": ["mock_1"], "allowed_models": null, "created_at": "2026-11-29T10:00:00Z",
            "last_used_at": null}]});
        let s = keys(&list);
        assert!(s.starts_with("ID"), "{s}");
        assert!(
            s.contains("key_1  ci    SG_…wxyz  active  mock_1       any"),
            "{s}"
        );
        assert!(keys(&json!({"data": []})).contains("No keys yet"));
    }

    #[test]
    fn issued_and_rotated_keys_say_they_are_shown_once() {
        let k = json!({"id": "key_2", "name": "ci", "project_id": "prj_1", "connection_ids": ["mock_1"],
            "allowed_models": ["a", "b"], "key": "SG_secret",
            "replaces": "key_1", "replaced_key_retires_at": "2026-11-29T10:00:10Z"});
        let s = key_issued(&k);
        assert!(s.contains("\nSG_secret\n"), "{s}");
        assert!(s.contains("only time the key is shown"), "{s}");
        assert!(s.contains("Models       a,b"), "{s}");
        let now = time::macros::datetime!(2026-11-29 10:00:00 UTC).unix_timestamp();
        let r = key_rotated(&k, now);
        assert!(r.contains("Replaces"), "{r}");
        assert!(r.contains("2026-11-29T10:00:10Z (in 10s)"), "{r}");
        assert!(r.contains("\nSG_secret\n"), "{r}");
    }

    #[test]
    fn locks_read_as_sentences() {
        let v = json!({"locks": {"ip": {"mode": "allow", "cidrs": ["127.0.0.1/32"]},
            "device": {"mode": "fixed", "fingerprint": "sgd_1"},
            "geo": {"countries": ["DE"], "cities": [{"country": "GB", "city": "London"}]},
            "models": null, "signature": null, "expires_at": 1798761600},
            "bound_ip": null, "bound_device": null});
        let s = locks("key_1", &v);
        assert!(s.contains("IP         allow 127.0.0.1/32\n"), "{s}");
        assert!(s.contains("Device     fixed sgd_1\n"), "{s}");
        assert!(
            s.contains("Location   countries DE; cities GB/London\n"),
            "{s}"
        );
        assert!(s.contains("Models     any\n"), "{s}");
        assert!(s.contains("Expires    2027-01-01T00:00:00Z\n"), "{s}");
        let auto = json!({"locks": {"ip": {"mode": "auto_bind"}, "device": {"mode": "off"},
            "geo": null, "models": ["m"], "signature": null, "expires_at": null},
            "bound_ip": "127.0.0.1", "bound_device": null});
        let s = locks("key_1", &auto);
        assert!(s.contains("auto-bind (bound to 127.0.0.1)"), "{s}");
        assert!(s.contains("Location   off"), "{s}");
        assert!(s.contains("Expires    never"), "{s}");
        let mut geo = auto.clone();
        geo["locks"]["geo"] = json!({"mode": "auto_bind", "level": "city"});
        assert!(
            locks("key_1", &geo)
                .contains("Location   auto-bind by city (the first request binds it)"),
            "{geo}"
        );
        geo["bound_place"] = json!({"country": "DE", "city": "Berlin"});
        let s = locks("key_1", &geo);
        assert!(s.contains("auto-bind by city (bound to DE/Berlin)"), "{s}");
    }

    #[test]
    fn usage_tables() {
        let r = json!({"group_by": "model", "from": "2026-11-01T00:00:00Z", "to": "2026-11-30T00:00:00Z",
            "data": [{"group": "gpt-4o-mini", "requests": 3, "errors": 1, "prompt_tokens": 30,
                      "cached_prompt_tokens": 0, "completion_tokens": 12, "total_tokens": 42,
                      "cost_usd": 0.000123, "unpriced_requests": 0,
                      "latency_ms": {"p50": 12.4, "p95": 30.0, "p99": 30.0}},
                     {"group": null, "requests": 1, "errors": 1, "prompt_tokens": 0,
                      "cached_prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                      "cost_usd": 0.0, "unpriced_requests": 1,
                      "latency_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0}}],
            "totals": {"requests": 4, "errors": 2, "prompt_tokens": 30, "cached_prompt_tokens": 0,
                       "completion_tokens": 12, "total_tokens": 42, "cost_usd": 0.000123,
                       "unpriced_requests": 1, "latency_ms": {"p50": 12.4, "p95": 30.0, "p99": 30.0}}});
        let s = usage(&r);
        assert!(
            s.starts_with("Usage from 2026-11-01T00:00:00Z to 2026-11-30T00:00:00Z"),
            "{s}"
        );
        assert!(s.contains("MODEL        REQUESTS"), "{s}");
        assert!(s.contains("gpt-4o-mini  3         1       30          12              42         0.000123  12      30      30\n"), "{s}");
        assert!(s.contains("(none)"), "{s}");
        assert!(s.contains("TOTAL        4"), "{s}");
        assert!(s.contains("1 request(s) had no price"), "{s}");
    }

    #[test]
    fn provider_menus_are_numbered() {
        let s = provider_menu(&[
            json!({"id": "openai", "name": "OpenAI", "default_base_url": "https://api.openai.com/v1"}),
            json!({"id": "azure_openai", "name": "Azure", "default_base_url": null}),
            json!({"id": "mock", "name": "Mock", "default_base_url": null}),
        ]);
        assert!(s.contains("1  openai"), "{s}");
        assert!(
            s.contains("2  azure_openai  Azure   (--base-url required)\n"),
            "{s}"
        );
        assert!(
            s.contains("3  mock          Mock    (answers locally; no key needed)\n"),
            "{s}"
        );
    }
}
