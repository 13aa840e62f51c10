//! The stored login: `$XDG_CONFIG_HOME/securegate/credentials.toml` (or
//! `~/.config/securegate/credentials.toml`), holding the admin API's URL and a token.
//!
//! The file is private to its owner: its directory is created 0700, the file is written
//! to a temporary file created 0600 in the same directory and renamed over the old one
//! (never readable by others, even briefly, and never half-written), and a file more
//! open than 0600 is refused when read.

use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The admin API embedded mode (`securegate dev`) listens on.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8081";

/// What `securegate login` stores.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The admin API's base URL, without `/admin/v1` (e.g. `http://127.0.0.1:8081`).
    pub url: String,
    /// The admin API token: the operator token or a tenant's `SGA_…` token.
    pub token: String,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Where the credentials live, from `XDG_CONFIG_HOME` and `HOME`: an absolute, non-empty
/// `XDG_CONFIG_HOME` wins (the XDG specification ignores a relative one), else
/// `$HOME/.config`.
pub fn path_from(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> anyhow::Result<PathBuf> {
    let config = match xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(dir) => dir,
        None => match home.filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => bail!(
                "cannot tell where to keep credentials: neither XDG_CONFIG_HOME nor HOME is set"
            ),
        },
    };
    Ok(config.join("securegate").join("credentials.toml"))
}

/// [`path_from`] with this process's environment.
pub fn default_path() -> anyhow::Result<PathBuf> {
    path_from(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// The file's text.
pub fn render(credentials: &Credentials) -> anyhow::Result<Zeroizing<String>> {
    let body = Zeroizing::new(
        toml::to_string(credentials).context("cannot write the credentials as TOML")?,
    );
    let mut text = Zeroizing::new(String::from(
        "# SecureGate CLI credentials, written by `securegate login`.\n\
         # Private to you (mode 0600); `securegate logout` deletes this file.\n",
    ));
    text.push_str(&body);
    Ok(text)
}

/// Reads the file's text.
pub fn parse(text: &str) -> anyhow::Result<Credentials> {
    let credentials: Credentials = toml::from_str(text).map_err(|e| {
        // The TOML error quotes the offending line, which may hold the token.
        anyhow::anyhow!("not a credentials file ({})", first_line(e.message()))
    })?;
    check_token(&credentials.token)?;
    crate::api::normalize_url(&credentials.url)?;
    Ok(credentials)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_owned()
}

/// A token as it can go in an `Authorization` header.
pub fn check_token(token: &str) -> anyhow::Result<()> {
    if token.is_empty() {
        bail!("the token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "the token has characters a token cannot have (spaces, control or non-ASCII characters)"
        );
    }
    Ok(())
}

/// Why permission bits `mode` are too open for a credentials file, if they are.
pub fn too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// The stored credentials, `None` if there are none. Refuses a file that others can
/// read or write.
pub fn load(path: &Path) -> anyhow::Result<Option<Credentials>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .permissions()
            .mode()
            & 0o7777;
        if too_open(mode) {
            bail!(
                "{path} is readable or writable by other users (mode {mode:04o}): run `chmod 600 {path}` (and consider the token exposed)",
                path = path.display()
            );
        }
    }
    let mut text = Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut &file, &mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text)
        .map(Some)
        .with_context(|| format!("cannot use {}", path.display()))
}

/// Writes the credentials atomically: a temporary file created 0600 in the same
/// directory (itself 0700), synced, then renamed over `path`.
pub fn save(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the credentials path has no directory")?;
    create_private_dir(dir)?;
    let text = render(credentials)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".credentials.").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // tempfile creates files 0600 anyway; say so rather than rely on it.
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Deletes the stored credentials; `false` if there were none.
pub fn remove(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
    }
}

/// Creates `dir` (and its parents) and makes `dir` itself 0700.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    match builder.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (chmod 700)", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            url: "http://127.0.0.1:8081".into(),
            token: "SGA_abc\"def".into(),
        }
    }

    #[test]
    fn path_prefers_an_absolute_xdg_config_home() {
        let p = path_from(Some("/x/cfg".into()), Some("/home/u".into())).unwrap();
        assert_eq!(p, PathBuf::from("/x/cfg/securegate/credentials.toml"));
    }

    #[test]
    fn path_falls_back_to_home_for_missing_empty_or_relative_xdg() {
        for xdg in [None, Some(OsString::new()), Some("rel/cfg".into())] {
            let p = path_from(xdg, Some("/home/u".into())).unwrap();
            assert_eq!(
                p,
                PathBuf::from("/home/u/.config/securegate/credentials.toml")
            );
        }
    }

    #[test]
    fn path_needs_home_or_xdg() {
        assert!(path_from(None, None).is_err());
        assert!(path_from(None, Some(OsString::new())).is_err());
    }

    #[test]
    fn render_then_parse_round_trips_and_escapes() {
        let text = render(&creds()).unwrap();
        assert!(text.starts_with("# SecureGate CLI credentials"));
        assert_eq!(parse(&text).unwrap(), creds());
    }

    #[test]
    fn parse_refuses_unknown_fields_bad_tokens_and_urls() {
        assert!(parse("url = \"http://x\"\ntoken = \"t\"\nextra = 1\n").is_err());
        assert!(parse("url = \"http://x\"\ntoken = \"\"\n").is_err());
        assert!(parse("url = \"http://x\"\ntoken = \"a b\"\n").is_err());
        assert!(parse("url = \"ftp://x\"\ntoken = \"t\"\n").is_err());
        assert!(parse("url = \"http://x\"\n").is_err());
    }

    #[test]
    fn a_parse_error_does_not_quote_the_token() {
        let err = parse("url = \"http://x\"\ntoken = SGA_secret_unquoted\n").unwrap_err();
        assert!(
            !format!("{err:#}").contains("SGA_secret_unquoted"),
            "{err:#}"
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let d = format!("{:?}", creds());
        assert!(!d.contains("SGA_abc"), "{d}");
    }

    #[test]
    fn modes_open_to_group_or_others_are_too_open() {
        assert!(!too_open(0o600));
        assert!(!too_open(0o400));
        assert!(!too_open(0o700));
        assert!(too_open(0o640));
        assert!(too_open(0o644));
        assert!(too_open(0o602));
    }

    #[cfg(unix)]
    #[test]
    fn save_load_remove() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/securegate/credentials.toml");
        assert!(load(&path).unwrap().is_none());
        save(&path, &creds()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(load(&path).unwrap().unwrap(), creds());
        // Overwriting keeps it private and leaves no temporary file behind.
        save(&path, &creds()).unwrap();
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("credentials.toml")]);
        // Too open: refused, with the command that fixes it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
    }
}
