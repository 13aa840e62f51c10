//! A private PostgreSQL cluster.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use tempfile::TempDir;
use tokio::process::Command;

use crate::process::{log_tail, looks_like_port_clash, run};
use crate::{find_in_path, is_executable, try_free_port};

/// Environment variable naming the directory with `initdb`, `pg_ctl`, `postgres`.
pub const PG_BINDIR_ENV: &str = "SG_PG_BINDIR";

/// OS user that runs the cluster when the tests run as root.
pub const PG_OS_USER: &str = "postgres";

const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
const START_ATTEMPTS: usize = 3;

/// A PostgreSQL cluster on 127.0.0.1 with trust authentication for the
/// `postgres` role, stopped (`pg_ctl stop -m immediate`) when dropped.
///
/// Its data directory lives as long as the handle, across [`stop`],
/// [`crash`] and [`restart`].
///
/// [`stop`]: PostgresServer::stop
/// [`crash`]: PostgresServer::crash
/// [`restart`]: PostgresServer::restart
pub struct PostgresServer {
    bindir: PathBuf,
    run_as: Option<RunAs>,
    port: u16,
    running: bool,
    // Dropped last: the cluster is stopped before its directory is removed.
    dir: TempDir,
}

/// How commands are run as the cluster's OS user.
#[derive(Debug, Clone)]
enum RunAs {
    Runuser(PathBuf),
    Su(PathBuf),
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("bindir", &self.bindir)
            .field("run_as", &self.run_as)
            .field("running", &self.running)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl PostgresServer {
    /// Creates a fresh cluster with `initdb` and starts it on a free port.
    pub async fn start() -> Result<Self> {
        let bindir = find_bindir().await?;
        let root = is_root().await?;
        let run_as = if root {
            Some(run_as_method().await?)
        } else {
            None
        };
        let dir = if root {
            // /tmp is traversable by every user; the default temporary
            // directory might not be.
            tempfile::Builder::new()
                .prefix("sg-testkit-pg-")
                .tempdir_in("/tmp")
        } else {
            tempfile::Builder::new().prefix("sg-testkit-pg-").tempdir()
        }
        .context("creating a temporary directory for PostgreSQL")?;
        std::fs::create_dir(dir.path().join("sock"))
            .context("creating the PostgreSQL socket directory")?;
        if root {
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{PG_OS_USER}:"))
                    .arg(dir.path()),
                &format!("giving {} to the {PG_OS_USER} user", dir.path().display()),
            )
            .await?;
        }
        let mut server = Self {
            bindir,
            run_as,
            port: 0,
            running: false,
            dir,
        };
        server.initdb().await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = try_free_port().context("finding a free port for PostgreSQL")?;
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt < START_ATTEMPTS && looks_like_port_clash(&server.log()) => {
                    tracing::warn!("PostgreSQL port clash, retrying on a new port: {e:#}");
                    let _ = std::fs::write(server.log_path(), b"");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The cluster's data directory, kept across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the PostgreSQL binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Whether the cluster is started (not stopped).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The end of the server log, across restarts.
    pub fn log(&self) -> String {
        log_tail(&self.log_path())
    }

    /// Creates database `name` (letters, digits and `_`, not starting with a
    /// digit) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            bail!("invalid database name {name:?}: use 1-63 letters, digits or '_'");
        }
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.url(name))
    }

    /// Runs `sql` with `psql` in `database` and returns its unaligned,
    /// tuples-only output, trimmed.
    pub async fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let psql = self.bindir.join("psql");
        let program = if is_executable(&psql) {
            psql
        } else {
            find_in_path("psql").ok_or_else(|| {
                anyhow!(
                    "psql not found in {} nor in PATH; install the PostgreSQL client \
                     (Debian/Ubuntu: apt-get install postgresql-client)",
                    self.bindir.display()
                )
            })?
        };
        let out = run(
            Command::new(program)
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", "127.0.0.1", "-U", "postgres"])
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-d")
                .arg(database)
                .arg("-c")
                .arg(sql)
                .env("PGCONNECT_TIMEOUT", "10")
                .env_remove("PGPASSWORD")
                .env_remove("PGSERVICE")
                .env_remove("PGOPTIONS"),
            "running psql",
        )
        .await?;
        Ok(out.trim().to_owned())
    }

    /// Stops the cluster cleanly (`pg_ctl stop -m fast`: sessions are cut,
    /// committed data is flushed); the data directory is kept. Once this
    /// returns, the port refuses connections.
    pub async fn stop(&mut self) {
        self.shut_down("fast").await;
    }

    /// Stops the cluster like a crash (`pg_ctl stop -m immediate`); the data
    /// directory is kept and the next start runs crash recovery. Because the
    /// cluster runs with `synchronous_commit=off`, transactions committed in
    /// the last moments before the crash may be lost, as with any server so
    /// configured. Once this returns, the port refuses connections.
    pub async fn crash(&mut self) {
        self.shut_down("immediate").await;
    }

    async fn shut_down(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let result = run(
            &mut self.command(
                "pg_ctl",
                [
                    OsString::from("-D"),
                    self.data_dir().into(),
                    "-m".into(),
                    mode.into(),
                    "-w".into(),
                    "-t".into(),
                    "60".into(),
                    "stop".into(),
                ],
            ),
            "stopping PostgreSQL",
        )
        .await;
        if let Err(e) = result {
            tracing::warn!("{e:#}; killing the postmaster");
            self.kill_postmaster();
        }
        self.running = false;
    }

    /// Starts the cluster again on the same port with the same data, and
    /// waits until it accepts connections. Stops it first if it is running.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.launch().await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The argv that runs `program` from the bindir, as the cluster's OS user
    /// when needed.
    fn argv<I>(&self, program: &str, args: I) -> (OsString, Vec<OsString>)
    where
        I: IntoIterator<Item = OsString>,
    {
        let path = self.bindir.join(program).into_os_string();
        let args: Vec<OsString> = args.into_iter().collect();
        match &self.run_as {
            None => (path, args),
            Some(RunAs::Runuser(runuser)) => {
                let mut full: Vec<OsString> =
                    vec!["-u".into(), PG_OS_USER.into(), "--".into(), path];
                full.extend(args);
                (runuser.clone().into_os_string(), full)
            }
            Some(RunAs::Su(su)) => {
                let mut script = String::from("exec");
                for word in std::iter::once(&path).chain(args.iter()) {
                    script.push(' ');
                    script.push_str(&shell_quote(&word.to_string_lossy()));
                }
                (
                    su.clone().into_os_string(),
                    vec![
                        "-s".into(),
                        "/bin/sh".into(),
                        PG_OS_USER.into(),
                        "-c".into(),
                        script.into(),
                    ],
                )
            }
        }
    }

    fn command<I>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = OsString>,
    {
        let (program, args) = self.argv(program, args);
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(self.dir.path());
        cmd
    }

    async fn initdb(&self) -> Result<()> {
        run(
            &mut self.command(
                "initdb",
                [
                    OsString::from("-D"),
                    self.data_dir().into(),
                    "-A".into(),
                    "trust".into(),
                    "-U".into(),
                    "postgres".into(),
                    "-E".into(),
                    "UTF8".into(),
                    "--locale=C".into(),
                    "--no-sync".into(),
                ],
            ),
            "initializing a PostgreSQL cluster with initdb",
        )
        .await
        .map(|_| ())
    }

    async fn launch(&mut self) -> Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off",
            self.port,
            self.socket_dir().display()
        );
        let started = run(
            &mut self.command(
                "pg_ctl",
                [
                    OsString::from("-D"),
                    self.data_dir().into(),
                    "-l".into(),
                    self.log_path().into(),
                    "-o".into(),
                    options.into(),
                    "-w".into(),
                    "-t".into(),
                    "60".into(),
                    "start".into(),
                ],
            ),
            "starting PostgreSQL with pg_ctl",
        )
        .await;
        match started {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                // pg_ctl may give up while the postmaster is still starting.
                self.running = true;
                self.crash().await;
                Err(e.context(format!(
                    "PostgreSQL on port {} did not start\n--- server log ---\n{}",
                    self.port,
                    self.log()
                )))
            }
        }
    }

    /// Last resort: SIGKILL the postmaster named in `postmaster.pid`.
    fn kill_postmaster(&self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return;
        };
        if let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let (program, args) = self.argv(
            "pg_ctl",
            [
                OsString::from("-D"),
                self.data_dir().into(),
                "-m".into(),
                "immediate".into(),
                "-w".into(),
                "stop".into(),
            ],
        );
        let stopped = std::process::Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            self.kill_postmaster();
        }
        self.running = false;
    }
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Whether this process runs as root (`id -u` prints 0).
async fn is_root() -> Result<bool> {
    let out = run(
        Command::new("id").arg("-u"),
        "checking the user id with `id -u`",
    )
    .await?;
    Ok(out.trim() == "0")
}

async fn run_as_method() -> Result<RunAs> {
    let user_exists = Command::new("id")
        .arg("-u")
        .arg(PG_OS_USER)
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !user_exists {
        bail!(
            "the tests run as root, and PostgreSQL refuses to run as root, so the cluster runs \
             as the `{PG_OS_USER}` OS user, which does not exist. Fix: install the PostgreSQL \
             server package (Debian/Ubuntu: apt-get install postgresql, which creates that \
             user), or `useradd --system {PG_OS_USER}`, or run the tests as a non-root user"
        );
    }
    if let Some(runuser) = find_in_path("runuser").or_else(|| {
        let p = PathBuf::from("/usr/sbin/runuser");
        is_executable(&p).then_some(p)
    }) {
        return Ok(RunAs::Runuser(runuser));
    }
    if let Some(su) = find_in_path("su").or_else(|| {
        let p = PathBuf::from("/bin/su");
        is_executable(&p).then_some(p)
    }) {
        return Ok(RunAs::Su(su));
    }
    bail!(
        "the tests run as root and PostgreSQL must run as the `{PG_OS_USER}` OS user, but \
         neither `runuser` nor `su` was found; install util-linux (runuser) or run the tests \
         as a non-root user"
    )
}

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|b| is_executable(&dir.join(b)))
}

/// The directory with `initdb`, `pg_ctl` and `postgres`: `$SG_PG_BINDIR`,
/// `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin`, or `PATH`.
pub async fn find_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BINDIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        bail!(
            "{PG_BINDIR_ENV}={} lacks one of {SERVER_BINARIES:?}; set it to the directory \
             holding the PostgreSQL server binaries (such as the output of `pg_config --bindir`) \
             or unset it to search the usual places",
            dir.display()
        );
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output().await
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let key: Vec<u32> = name.split('.').filter_map(|p| p.parse().ok()).collect();
                let bin = e.path().join("bin");
                (!key.is_empty() && has_server_binaries(&bin)).then_some((key, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
    }
    if let Some(initdb) = find_in_path("initdb")
        && let Some(dir) = initdb.parent()
        && has_server_binaries(dir)
    {
        return Ok(dir.to_path_buf());
    }
    bail!(
        "PostgreSQL server binaries ({}) not found: tried ${PG_BINDIR_ENV}, `pg_config --bindir`, \
         /usr/lib/postgresql/*/bin and PATH. Fix: install the PostgreSQL server (Debian/Ubuntu: \
         apt-get install postgresql; Fedora: dnf install postgresql-server; macOS: brew install \
         postgresql) or set {PG_BINDIR_ENV} to the directory holding them",
        SERVER_BINARIES.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
