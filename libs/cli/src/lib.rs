//! The owner CLI of `securegate`: the commands that talk to an admin API as its client —
//! `login`, `logout`, `status`, `connect`, `keys …`, `env`, `usage` — and `completions`.
//!
//! The `securegate` binary flattens [`Command`] into its command line and hands a parsed
//! one to [`main`]. Pure parts live in their own modules with unit tests: the
//! credentials file ([`credentials`]), arguments → request bodies ([`bodies`]), tables
//! ([`render`]), client snippets ([`snippet`]) and the device fingerprint ([`device`]);
//! [`commands`] does the I/O.

use clap::{Args, Subcommand, ValueEnum};

pub mod api;
pub mod bodies;
pub mod commands;
pub mod credentials;
pub mod device;
pub mod prompt;
pub mod render;
pub mod snippet;

pub use commands::{main, run};

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Table,
    /// The admin API's JSON (or the object the command's help names), for scripts.
    Json,
}

/// Which admin API, and how to print.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The admin API, e.g. `http://127.0.0.1:8081` (default: the one `securegate login`
    /// stored). The token is the stored one, or SECUREGATE_TOKEN's.
    #[arg(long, env = "SECUREGATE_URL", value_name = "URL")]
    pub url: Option<String>,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The admin API client commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to an admin API: check a token with it and store both for the other
    /// commands.
    ///
    /// The token (a tenant's `SGA_…` admin API token, or the operator token) is read from
    /// a prompt that does not echo, or with --token-stdin from one line of standard
    /// input. It is checked with `GET /admin/v1/me`, then stored with the URL in
    /// `$XDG_CONFIG_HOME/securegate/credentials.toml` (default
    /// `~/.config/securegate/credentials.toml`), a file only you can read (0600, in a
    /// 0700 directory). `--output json` prints `{url, credentials_file, me}`, `me` being
    /// `GET /me`'s answer.
    Login(LoginArgs),
    /// Delete the stored credentials. The token itself keeps working until an owner or
    /// the operator revokes it.
    ///
    /// `--output json` prints `{deleted, credentials_file}`.
    Logout(LogoutArgs),
    /// Who you are (caller, role, token), your tenant and plan, and your projects with
    /// their connection and key counts.
    ///
    /// For the operator token, which belongs to no tenant, only the caller and the
    /// gateway URL. `--output json` prints `{url, me, projects}`: `me` is `GET /me`'s
    /// answer, `projects` a list of `{id, name, connections, keys, active_keys}` (`null`
    /// for the operator).
    Status(StatusArgs),
    /// Add a provider connection to a project: pick the provider, type its API key
    /// (never echoed, printed or stored here: the admin API seals it).
    ///
    /// Prints the new connection's id. The provider key is read from a prompt that does
    /// not echo or, with --api-key-stdin, from one line of standard input — never from an
    /// argument or an environment variable. The `mock` provider needs no key.
    Connect(ConnectArgs),
    /// Proxy keys (`SG_…`): list, create, change locks, revoke, rotate.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the code that points an OpenAI client at the gateway: its base URL, a
    /// placeholder for the key, and this machine's device fingerprint header.
    ///
    /// `--output json` prints `{lang, base_url, device_fingerprint, connection_id,
    /// snippet}`.
    Env(EnvArgs),
    /// A project's or a key's usage: requests, errors, tokens, cost and latency
    /// percentiles per day, hour, model or key.
    Usage(UsageArgs),
    /// Print a shell completion script, e.g. `securegate completions bash >
    /// /etc/bash_completion.d/securegate`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The admin API (embedded mode: `http://127.0.0.1:8081`).
    #[arg(
        long,
        env = "SECUREGATE_URL",
        value_name = "URL",
        long_help = "The admin API (default: the stored one, else embedded mode's http://127.0.0.1:8081). `/admin/v1` may be included or left out."
    )]
    pub url: Option<String>,
    /// Read the token from one line of standard input instead of a prompt.
    #[arg(long)]
    pub token_stdin: bool,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The project (default: the tenant's only project; an owner of a tenant with none
    /// gets one named `default`).
    #[arg(long, value_name = "ID")]
    pub project: Option<String>,
    /// The provider's id (`securegate providers` lists them); asked for when standard
    /// input is a terminal.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// The connection's name (default: the provider's id).
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// The provider's API base URL, for providers without a default (Azure OpenAI, a
    /// self-hosted OpenAI-compatible server) or to override it.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Read the provider key from one line of standard input instead of a prompt.
    #[arg(long)]
    pub api_key_stdin: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List a project's keys (never the keys themselves: ids, names, hints, status).
    List(KeysListArgs),
    /// Issue a key. It is printed once, never again.
    ///
    /// The key keeps a new key's defaults for the locks not given: bound to the address
    /// of its first request (IP auto-bind), any device. `--output json` prints the
    /// admin API's answer, which holds the key (`key`).
    Create(KeysCreateArgs),
    /// Change a key's model, location and expiry locks; the others stay as they are.
    Update(KeysUpdateArgs),
    /// Clear what a key is bound to (address, device, place; all by default): with
    /// auto-bind locks, its next request binds it again.
    Unbind(KeysUnbindArgs),
    /// Allow a key only from these IP addresses or networks (replaces its IP lock).
    Lock(KeysLockArgs),
    /// Allow a key only from this machine: its device lock becomes this machine's
    /// fingerprint, which clients send as `x-device-fingerprint` (see `securegate env`).
    BindDevice(KeyIdArgs),
    /// Revoke a key: every gateway refuses it within about a second.
    Revoke(KeysRevokeArgs),
    /// Lift a key's suspension by abuse detection before it ends by itself.
    Resume(KeyIdArgs),
    /// Issue a replacement key with the same connections, locks and limits; the old key
    /// keeps working for a grace period, then stops.
    ///
    /// The new key is printed once, never again. `--output json` prints the admin API's
    /// answer (`key`, `replaces`, `replaced_key_retires_at`, …).
    Rotate(KeysRotateArgs),
}

#[derive(Debug, Args)]
pub struct KeysListArgs {
    /// The project (default: the tenant's only project).
    #[arg(long, value_name = "ID")]
    pub project: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// The project (default: the tenant's only project).
    #[arg(long, value_name = "ID")]
    pub project: Option<String>,
    /// What the key is for, e.g. the app or agent holding it.
    #[arg(long, value_name = "N", default_value = "cli")]
    pub name: String,
    /// A connection the key may use, in order of preference (repeat for several;
    /// default: all of the project's connections).
    #[arg(long = "connection", value_name = "ID")]
    pub connections: Vec<String>,
    /// The models the key may call (default: any).
    #[arg(long, value_name = "a,b", value_delimiter = ',')]
    pub models: Vec<String>,
    /// A city the key may be used from, as `Country/City` (e.g. `GB/London`; repeat for
    /// several). Needs the gateway's GeoIP database.
    #[arg(long = "city", value_name = "COUNTRY/CITY")]
    pub cities: Vec<String>,
    /// Countries the key may be used from (ISO codes, e.g. `DE,FR`). Needs the gateway's
    /// GeoIP database.
    #[arg(long = "country", value_name = "CC,CC", value_delimiter = ',')]
    pub countries: Vec<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct KeysUpdateArgs {
    /// The key's id (`key_…`).
    pub id: String,
    /// The models the key may call, or `any`.
    #[arg(long, value_name = "a,b|any", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Cities the key may be used from, as `Country/City` (repeat; replaces the list;
    /// `none` empties it).
    #[arg(long = "city", value_name = "COUNTRY/CITY|none")]
    pub cities: Vec<String>,
    /// Countries the key may be used from (replaces the list; `none` empties it).
    #[arg(long = "country", value_name = "CC,CC|none", value_delimiter = ',')]
    pub countries: Vec<String>,
    /// When the key stops working (RFC 3339, e.g. `2027-01-01T00:00:00Z`), or `never`.
    #[arg(long, value_name = "RFC3339|never")]
    pub expires: Option<String>,
    /// Bind the key to the place of its first request, at this level (`country` or
    /// `city`), cluster-wide; `off` removes the location lock. Replaces the city and
    /// country lists. Needs the gateway's GeoIP database.
    #[arg(long = "geo-bind", value_name = "country|city|off", conflicts_with_all = ["cities", "countries"])]
    pub geo_bind: Option<GeoBind>,
    #[command(flatten)]
    pub target: Target,
}

/// `keys update --geo-bind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GeoBind {
    Country,
    City,
    Off,
}

#[derive(Debug, Args)]
pub struct KeysUnbindArgs {
    /// The key's id (`key_…`).
    pub id: String,
    /// Clear only the bindings named (any of `ip`, `device`, `place`; default: all).
    #[arg(long, value_name = "ip,device,place", value_delimiter = ',')]
    pub only: Vec<Binding>,
    #[command(flatten)]
    pub target: Target,
}

/// A binding `keys unbind --only` clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Binding {
    Ip,
    Device,
    Place,
}

#[derive(Debug, Args)]
pub struct KeysLockArgs {
    /// The key's id (`key_…`).
    pub id: String,
    /// An IP address or CIDR allowed to use the key (repeat, or comma-separate, for
    /// several).
    #[arg(
        long = "ip",
        value_name = "IP|CIDR",
        required = true,
        value_delimiter = ','
    )]
    pub ips: Vec<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct KeyIdArgs {
    /// The key's id (`key_…`).
    pub id: String,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct KeysRevokeArgs {
    /// The key's id (`key_…`).
    pub id: String,
    /// Why, for the audit trail.
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct KeysRotateArgs {
    /// The key's id (`key_…`).
    pub id: String,
    /// How long the old key keeps working, e.g. `24h`, `30m`, `0s` (at most 30 days;
    /// default 24h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub grace: Option<std::time::Duration>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// Which snippet.
    #[arg(long, value_enum, default_value_t = snippet::Lang::Python)]
    pub lang: snippet::Lang,
    /// Send this key's first connection as `x-connection-id`.
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// How a usage report is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    Day,
    Hour,
    Model,
    Key,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
        }
    }
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The project (default: the tenant's only project).
    #[arg(long, value_name = "ID", conflicts_with = "key")]
    pub project: Option<String>,
    /// One key's usage instead of the whole project's.
    #[arg(long, value_name = "ID")]
    pub key: Option<String>,
    /// Rows per UTC day, UTC hour, model or key.
    #[arg(long, value_enum, default_value_t = GroupBy::Day)]
    pub group_by: GroupBy,
    /// Start (RFC 3339; default: 30 days before --to).
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// End (RFC 3339, exclusive; default: now).
    #[arg(long, value_name = "RFC3339")]
    pub to: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

/// A shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    pub shell: Shell,
}
