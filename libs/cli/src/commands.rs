//! The commands: read arguments, the stored credentials and the terminal, call the admin
//! API, print. Mapping and rendering are in the pure modules.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::api::{Api, normalize_url};
use crate::bodies::{self, LockChanges};
use crate::credentials::{self, Credentials};
use crate::render::{self, ProjectSummary};
use crate::snippet;
use crate::{
    Binding, Command, ConnectArgs, EnvArgs, GeoBind, KeysCommand, LoginArgs, LogoutArgs, Output,
    Shell, StatusArgs, Target, UsageArgs,
};

/// What to say when there is no token to use.
pub const NOT_LOGGED_IN: &str = "not logged in: run `securegate login --url <admin URL>` (or set SECUREGATE_URL and SECUREGATE_TOKEN)";

/// Runs `command`; on failure prints a one-line reason to stderr. Returns the process's
/// exit code. `cli` is the whole command line's definition (for completions).
pub async fn main(command: Command, cli: clap::Command) -> i32 {
    match run(command, cli).await {
        Ok(()) => 0,
        Err(e) => {
            let reason = format!("{e:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("securegate: {reason}");
            1
        }
    }
}

/// Runs `command`.
pub async fn run(command: Command, cli: clap::Command) -> anyhow::Result<()> {
    match command {
        Command::Login(args) => login(args).await,
        Command::Logout(args) => logout(args),
        Command::Status(args) => status(args).await,
        Command::Connect(args) => connect(args).await,
        Command::Keys(k) => keys(k).await,
        Command::Env(args) => env(args).await,
        Command::Usage(args) => usage(args).await,
        Command::Completions(args) => completions(args.shell, cli),
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends quietly.
fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

/// `json` prints `v`; `table` prints what `table` renders.
fn emit(output: Output, v: &Value, table: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(v),
        Output::Table => out(&table(v)),
    }
}

/// Where to go and with which token: `--url`/SECUREGATE_URL and SECUREGATE_TOKEN over the
/// stored credentials. A stored token is sent only to the URL it was stored for.
pub fn resolve(
    url_arg: Option<&str>,
    env_token: Option<Zeroizing<String>>,
    stored: impl FnOnce() -> anyhow::Result<Option<Credentials>>,
) -> anyhow::Result<(String, Zeroizing<String>)> {
    let url_arg = url_arg.map(normalize_url).transpose()?;
    if let (Some(url), Some(token)) = (&url_arg, &env_token) {
        return Ok((url.clone(), token.clone()));
    }
    let stored = stored()?;
    match (env_token, stored) {
        (Some(token), stored) => {
            let url = url_arg
                .or_else(|| stored.as_ref().map(|c| c.url.clone()))
                .unwrap_or_else(|| credentials::DEFAULT_URL.to_owned());
            Ok((normalize_url(&url)?, token))
        }
        (None, Some(stored)) => {
            let stored_url = normalize_url(&stored.url)?;
            match url_arg {
                Some(url) if url != stored_url => bail!(
                    "the stored token is for {stored_url}, not {url}: log in there (`securegate login --url {url}`) or set SECUREGATE_TOKEN"
                ),
                _ => Ok((stored_url, Zeroizing::new(stored.token.clone()))),
            }
        }
        (None, None) => bail!("{NOT_LOGGED_IN}"),
    }
}

fn env_token() -> Option<Zeroizing<String>> {
    std::env::var("SECUREGATE_TOKEN")
        .ok()
        .map(|t| Zeroizing::new(t.trim().to_owned()))
        .filter(|t| !t.is_empty())
}

/// The admin API client for a command.
fn connect_api(target: &Target) -> anyhow::Result<Api> {
    let token = env_token();
    if let Some(t) = &token {
        credentials::check_token(t).context("SECUREGATE_TOKEN")?;
    }
    let (url, token) = resolve(target.url.as_deref(), token, || {
        credentials::load(&credentials::default_path()?)
    })?;
    Api::new(&url, token)
}

async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let path = credentials::default_path()?;
    let url = match &args.url {
        Some(u) => normalize_url(u)?,
        None => match credentials::load(&path)? {
            Some(c) => normalize_url(&c.url)?,
            None => credentials::DEFAULT_URL.to_owned(),
        },
    };
    let token = crate::prompt::secret(
        args.token_stdin,
        &format!("Admin API token for {url} (not echoed): "),
        "token",
        "--token-stdin",
    )?;
    credentials::check_token(&token)?;
    let api = Api::new(&url, token.clone())?;
    let me = api.get("/me").await?;
    let creds = Credentials {
        url: url.clone(),
        token: token.to_string(),
    };
    credentials::save(&path, &creds)?;
    match args.output {
        Output::Json => print_json(&json!({
            "url": url,
            "credentials_file": path,
            "me": me,
        })),
        Output::Table => {
            let mut text = format!("Logged in to {url} as {}.\n", render::whoami(&me));
            text.push_str(&format!(
                "Credentials saved to {} (mode 0600).\n",
                path.display()
            ));
            out(&text)
        }
    }
}

fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let path = credentials::default_path()?;
    let deleted = credentials::remove(&path)?;
    match args.output {
        Output::Json => print_json(&json!({"deleted": deleted, "credentials_file": path})),
        Output::Table if deleted => out(&format!(
            "Logged out: deleted {}.\nThe token itself was not revoked and keeps working until an owner or the operator revokes it.\n",
            path.display()
        )),
        Output::Table => out(&format!(
            "Not logged in ({} does not exist).\n",
            path.display()
        )),
    }
}

/// The tenant's projects (`None` for the operator).
async fn projects(api: &Api, me: &Value) -> anyhow::Result<Option<Vec<Value>>> {
    let Some(tenant) = me["tenant"]["id"].as_str() else {
        return Ok(None);
    };
    let list = api
        .get(&format!("/tenants/{}/projects", seg(tenant)?))
        .await?;
    Ok(Some(list["data"].as_array().cloned().unwrap_or_default()))
}

/// An id as a URL path segment: ids are letters, digits, `_` and `-` (`key_…`,
/// `prj_…`); anything else is refused rather than sent.
fn seg(id: &str) -> anyhow::Result<&str> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        bail!("{id:?} is not an id (ids look like key_…, prj_…, ten_…)");
    }
    Ok(id)
}

/// `--project`, or the tenant's only project. With `create_default`, an owner whose
/// tenant has none gets one named `default`.
async fn project(api: &Api, given: Option<&str>, create_default: bool) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let me = api.get("/me").await?;
    let Some(list) = projects(api, &me).await? else {
        bail!("the operator token belongs to no tenant: pass --project <id>");
    };
    match list.as_slice() {
        [only] => only["id"]
            .as_str()
            .map(str::to_owned)
            .context("the admin API listed a project without an id"),
        [] if create_default && me["role"] == "owner" => {
            let tenant = me["tenant"]["id"].as_str().unwrap_or_default();
            let p = api
                .post(
                    &format!("/tenants/{}/projects", seg(tenant)?),
                    &json!({"name": "default"}),
                )
                .await
                .context("cannot create the project `default`")?;
            let id = p["id"]
                .as_str()
                .context("the admin API created a project without an id")?
                .to_owned();
            eprintln!("Created project `default` ({id}).");
            Ok(id)
        }
        [] => bail!(
            "the tenant has no project yet: an owner creates one with `securegate connect` (it makes one named `default`)"
        ),
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|p| format!("{} ({})", render::text(p, "id"), render::text(p, "name")))
                .collect();
            bail!(
                "the tenant has {} projects: pass --project with one of {}",
                several.len(),
                names.join(", ")
            )
        }
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let api = connect_api(&args.target)?;
    let me = api.get("/me").await?;
    let summaries = match projects(&api, &me).await? {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for p in &list {
                let id = p["id"].as_str().unwrap_or_default();
                let connections = api
                    .get(&format!("/projects/{}/connections", seg(id)?))
                    .await?;
                let keys = api.get(&format!("/projects/{}/keys", seg(id)?)).await?;
                let keys = keys["data"].as_array().cloned().unwrap_or_default();
                out.push(ProjectSummary {
                    id: id.to_owned(),
                    name: p["name"].as_str().unwrap_or_default().to_owned(),
                    connections: connections["data"].as_array().map_or(0, Vec::len),
                    keys: keys.len(),
                    active_keys: keys.iter().filter(|k| k["status"] == "active").count(),
                });
            }
            Some(out)
        }
    };
    // The operator belongs to no tenant: it sees the tenants instead.
    let tenants = if me["caller"] == "operator" {
        api.get("/tenants").await?["data"].clone()
    } else {
        Value::Null
    };
    match args.target.output {
        Output::Json => print_json(&json!({
            "url": api.base(),
            "me": me,
            "projects": summaries,
            "tenants": tenants,
        })),
        Output::Table => {
            let mut shown = me.clone();
            shown["tenants"] = tenants;
            out(&render::status(api.base(), &shown, summaries.as_deref()))
        }
    }
}

async fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    let api = connect_api(&args.target)?;
    let catalog = api.get("/providers").await?;
    let providers = catalog["data"].as_array().cloned().unwrap_or_default();
    let ids: Vec<String> = providers
        .iter()
        .filter_map(|p| p["id"].as_str().map(str::to_owned))
        .collect();
    let provider = match &args.provider {
        Some(p) if ids.contains(p) => p.clone(),
        Some(p) => bail!("no provider {p:?}: one of {}", ids.join(", ")),
        None if crate::prompt::interactive() && !args.api_key_stdin => {
            eprint!("{}", render::provider_menu(&providers));
            let i = crate::prompt::choose(&format!("Provider [1-{}]: ", ids.len()), &ids)?;
            ids[i].clone()
        }
        None => bail!("pass --provider (one of {})", ids.join(", ")),
    };
    let entry = providers
        .iter()
        .find(|p| p["id"] == provider.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    if entry["default_base_url"].is_null() && args.base_url.is_none() && provider != "mock" {
        bail!("{provider} has no default base URL: pass --base-url");
    }
    let needs_prompt = !args.api_key_stdin && provider != "mock";
    if needs_prompt && !crate::prompt::interactive() {
        // Before anything is created.
        bail!(
            "standard input is not a terminal, so the provider API key cannot be asked for: pipe it with --api-key-stdin"
        );
    }
    let project = project(&api, args.project.as_deref(), true).await?;
    // The provider key: never from an argument or the environment, never echoed.
    let api_key: Option<Zeroizing<String>> = if args.api_key_stdin {
        Some(crate::prompt::secret_line_from_stdin("provider API key")?)
    } else if provider == "mock" {
        None
    } else {
        Some(crate::prompt::secret(
            false,
            &format!("{} API key (not echoed): ", render::text(&entry, "name")),
            "provider API key",
            "--api-key-stdin",
        )?)
    };
    let mut body = bodies::connection(&provider, args.name.as_deref(), args.base_url.as_deref());
    if let Some(k) = &api_key {
        body.insert("api_key".into(), Value::String(k.to_string()));
    }
    let body = Value::Object(body);
    let result = api
        .post(&format!("/projects/{}/connections", seg(&project)?), &body)
        .await;
    // Wipe the copy in the request body.
    if let Value::Object(mut m) = body
        && let Some(Value::String(mut k)) = m.remove("api_key")
    {
        zeroize::Zeroize::zeroize(&mut k);
    }
    drop(api_key);
    let connection = result?;
    emit(args.target.output, &connection, |c| {
        format!(
            "{}\nThe provider key is sealed by the admin API; SecureGate never shows it again.\n",
            render::connection(c)
        )
    })
}

/// GETs a key's locks, applies `changes`, PUTs them; returns the new `KeyLocks`.
async fn change_locks(api: &Api, id: &str, changes: &LockChanges) -> anyhow::Result<Value> {
    let path = format!("/keys/{}/locks", seg(id)?);
    let current = api.get(&path).await?;
    let locks = changes.apply(&current["locks"])?;
    api.put(&path, &locks).await
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List(args) => {
            let api = connect_api(&args.target)?;
            let project = project(&api, args.project.as_deref(), false).await?;
            let list = api
                .get(&format!("/projects/{}/keys", seg(&project)?))
                .await?;
            emit(args.target.output, &list, render::keys)
        }
        KeysCommand::Create(args) => {
            let new = bodies::NewKey {
                name: args.name.clone(),
                connection_ids: args.connections.clone(),
                models: if args.models.is_empty() {
                    None
                } else {
                    bodies::models(&args.models)?
                },
                countries: bodies::countries(&args.countries)?,
                cities: bodies::cities(&args.cities)?,
            };
            let api = connect_api(&args.target)?;
            let project = project(&api, args.project.as_deref(), false).await?;
            let key = api
                .post(
                    &format!("/projects/{}/keys", seg(&project)?),
                    &bodies::create_key(&new),
                )
                .await?;
            emit(args.target.output, &key, render::key_issued)
        }
        KeysCommand::Update(args) => {
            let mut changes = LockChanges::default();
            if !args.models.is_empty() {
                changes.models = Some(bodies::models(&args.models)?);
            }
            if !args.cities.is_empty() {
                changes.cities = Some(if is_none(&args.cities) {
                    Vec::new()
                } else {
                    bodies::cities(&args.cities)?
                });
            }
            if !args.countries.is_empty() {
                changes.countries = Some(if is_none(&args.countries) {
                    Vec::new()
                } else {
                    bodies::countries(&args.countries)?
                });
            }
            if let Some(e) = &args.expires {
                changes.expires_at = Some(bodies::expires(e)?);
            }
            changes.geo_bind = args.geo_bind.map(|g| match g {
                GeoBind::Country => "country",
                GeoBind::City => "city",
                GeoBind::Off => "off",
            });
            if changes.is_empty() {
                bail!(
                    "nothing to change: give --models, --city, --country, --geo-bind or --expires"
                );
            }
            let api = connect_api(&args.target)?;
            let locks = change_locks(&api, &args.id, &changes).await?;
            emit(args.target.output, &locks, |l| render::locks(&args.id, l))
        }
        KeysCommand::Unbind(args) => {
            let all = args.only.is_empty();
            let clear = |b: Binding| all || args.only.contains(&b);
            let body = serde_json::json!({
                "ip": clear(Binding::Ip),
                "device": clear(Binding::Device),
                "place": clear(Binding::Place),
            });
            let api = connect_api(&args.target)?;
            let locks = api
                .post(&format!("/keys/{}/unbind", seg(&args.id)?), &body)
                .await?;
            emit(args.target.output, &locks, |l| render::locks(&args.id, l))
        }
        KeysCommand::Lock(args) => {
            let changes = LockChanges {
                ip_allow: Some(bodies::ips(&args.ips)?),
                ..LockChanges::default()
            };
            let api = connect_api(&args.target)?;
            let locks = change_locks(&api, &args.id, &changes).await?;
            emit(args.target.output, &locks, |l| render::locks(&args.id, l))
        }
        KeysCommand::BindDevice(args) => {
            let fingerprint = crate::device::fingerprint()?;
            let changes = LockChanges {
                device_fixed: Some(fingerprint.clone()),
                ..LockChanges::default()
            };
            let api = connect_api(&args.target)?;
            let locks = change_locks(&api, &args.id, &changes).await?;
            emit(args.target.output, &locks, |l| {
                format!(
                    "{}\nThe key now works only with `x-device-fingerprint: {fingerprint}` (this machine); `securegate env` prints client code that sends it.\n",
                    render::locks(&args.id, l)
                )
            })
        }
        KeysCommand::Resume(args) => {
            let api = connect_api(&args.target)?;
            let r = api
                .post(
                    &format!("/keys/{}/resume", seg(&args.id)?),
                    &serde_json::json!({}),
                )
                .await?;
            emit(args.target.output, &r, |_| {
                format!(
                    "Resumed {}: every gateway accepts it again within about a second.\n",
                    render::sanitize(&args.id)
                )
            })
        }
        KeysCommand::Revoke(args) => {
            let api = connect_api(&args.target)?;
            let r = api
                .post(
                    &format!("/keys/{}/revoke", seg(&args.id)?),
                    &bodies::revoke(args.reason.as_deref()),
                )
                .await?;
            emit(args.target.output, &r, |_| {
                format!(
                    "Revoked {}: every gateway refuses it within about a second.\n",
                    render::sanitize(&args.id)
                )
            })
        }
        KeysCommand::Rotate(args) => {
            let api = connect_api(&args.target)?;
            let r = api
                .post(
                    &format!("/keys/{}/rotate", seg(&args.id)?),
                    &bodies::rotate(args.grace),
                )
                .await?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            emit(args.target.output, &r, |k| render::key_rotated(k, now))
        }
    }
}

/// `--city none` / `--country none`: empty the list.
fn is_none(values: &[String]) -> bool {
    values.len() == 1 && values[0].trim().eq_ignore_ascii_case("none")
}

async fn env(args: EnvArgs) -> anyhow::Result<()> {
    let api = connect_api(&args.target)?;
    let me = api.get("/me").await?;
    let Some(gateway) = me["gateway_url"].as_str().filter(|g| !g.trim().is_empty()) else {
        bail!(
            "the admin API does not say where clients reach the gateway: the operator starts it with --gateway-url (SECUREGATE_GATEWAY_URL), e.g. https://llm.example.com"
        );
    };
    let connection_id = match &args.key {
        Some(id) => {
            let key = api.get(&format!("/keys/{}", seg(id)?)).await?;
            key["connection_ids"][0].as_str().map(str::to_owned)
        }
        None => None,
    };
    let settings = snippet::Settings {
        base_url: snippet::base_url(gateway),
        device_fingerprint: crate::device::fingerprint()?,
        connection_id,
    };
    let text = snippet::render(args.lang, &settings);
    match args.target.output {
        Output::Json => print_json(&json!({
            "lang": args.lang,
            "base_url": settings.base_url,
            "device_fingerprint": settings.device_fingerprint,
            "connection_id": settings.connection_id,
            "snippet": text,
        })),
        Output::Table => out(&text),
    }
}

async fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let api = connect_api(&args.target)?;
    let mut query = vec![("group_by", args.group_by.as_str().to_owned())];
    if let Some(f) = &args.from {
        query.push(("from", f.clone()));
    }
    if let Some(t) = &args.to {
        query.push(("to", t.clone()));
    }
    let path = match &args.key {
        Some(key) => format!("/keys/{}/usage", seg(key)?),
        None => {
            let project = project(&api, args.project.as_deref(), false).await?;
            format!("/projects/{}/usage", seg(&project)?)
        }
    };
    let report = api.get_query(&path, &query).await?;
    emit(args.target.output, &report, render::usage)
}

fn completions(shell: Shell, mut cli: clap::Command) -> anyhow::Result<()> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cli, "securegate", &mut buf);
    out(&String::from_utf8_lossy(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(url: &str) -> anyhow::Result<Option<Credentials>> {
        Ok(Some(Credentials {
            url: url.into(),
            token: "SGA_stored".into(),
        }))
    }

    fn tok(t: &str) -> Option<Zeroizing<String>> {
        Some(Zeroizing::new(t.into()))
    }

    #[test]
    fn nothing_stored_and_no_token_is_not_logged_in() {
        let err = resolve(None, None, || Ok(None)).unwrap_err().to_string();
        assert_eq!(err, NOT_LOGGED_IN);
        let err = resolve(Some("http://x"), None, || Ok(None))
            .unwrap_err()
            .to_string();
        assert_eq!(err, NOT_LOGGED_IN);
    }

    #[test]
    fn stored_credentials_are_used() {
        let (url, token) = resolve(None, None, || stored("http://a:1/")).unwrap();
        assert_eq!((url.as_str(), token.as_str()), ("http://a:1", "SGA_stored"));
        // The same URL given explicitly is fine.
        let (url, _) = resolve(Some("http://a:1/admin/v1"), None, || stored("http://a:1")).unwrap();
        assert_eq!(url, "http://a:1");
    }

    #[test]
    fn a_stored_token_is_not_sent_to_another_url() {
        let err = resolve(Some("http://b:2"), None, || stored("http://a:1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("the stored token is for http://a:1"), "{err}");
        assert!(err.contains("SECUREGATE_TOKEN"), "{err}");
    }

    #[test]
    fn environment_overrides() {
        // Both given: the file is not even read.
        let (url, token) = resolve(Some("http://b:2"), tok("SGA_env"), || {
            bail!("must not be read")
        })
        .unwrap();
        assert_eq!((url.as_str(), token.as_str()), ("http://b:2", "SGA_env"));
        // A token alone goes to the stored URL, else the default.
        let (url, token) = resolve(None, tok("SGA_env"), || stored("http://a:1")).unwrap();
        assert_eq!((url.as_str(), token.as_str()), ("http://a:1", "SGA_env"));
        let (url, _) = resolve(None, tok("SGA_env"), || Ok(None)).unwrap();
        assert_eq!(url, credentials::DEFAULT_URL);
    }

    #[test]
    fn unreadable_credentials_are_an_error() {
        assert!(resolve(None, None, || bail!("chmod 600 x")).is_err());
    }

    #[test]
    fn only_ids_go_in_paths() {
        assert_eq!(seg("key_0123abc").unwrap(), "key_0123abc");
        assert_eq!(seg("openai_x-1").unwrap(), "openai_x-1");
        for bad in ["", "..", "../tenants", "a b", "k?x=1", "k#", "ké"] {
            assert!(seg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn none_empties_a_list() {
        assert!(is_none(&["none".into()]));
        assert!(is_none(&["NONE".into()]));
        assert!(!is_none(&["none".into(), "DE".into()]));
        assert!(!is_none(&["DE".into()]));
    }
}
