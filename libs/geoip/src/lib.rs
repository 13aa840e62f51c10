//! Country and city of a client address, read from a MaxMind City database.
//!
//! [`GeoIp`] keeps the whole database in memory. Lookups are synchronous and do no I/O:
//! they load the current database through an [`ArcSwap`] and decode two fields. A reload
//! (explicit through [`GeoIp::reload`], or from the polling task started by
//! [`GeoIp::watch`]) reads and verifies the new file off to the side and swaps it in as a
//! whole; a file that fails to load never replaces the database being served.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use maxminddb::{MaxMindDbError, Reader};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

#[cfg(feature = "testdb")]
pub mod testdb;

/// Where an address is, as far as the database knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 country code, e.g. `"GB"`.
    pub country: Option<String>,
    /// English city name, e.g. `"London"`.
    pub city: Option<String>,
}

/// Facts about the database currently served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbInfo {
    /// The metadata `database_type`, e.g. `"GeoLite2-City"`.
    pub database_type: String,
    /// Build time of the database, seconds since the Unix epoch.
    pub build_epoch: u64,
    /// 4 for an IPv4-only database, 6 for one that answers both families.
    pub ip_version: u16,
}

/// Why a database could not be loaded or watched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoIpError {
    /// The file could not be read (missing, permissions, ...).
    #[error("cannot read geoip database {}: {source}", path.display())]
    Io {
        /// The database path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a well-formed MaxMind database (garbage, truncated, corrupt).
    #[error("geoip database {} is not a valid MaxMind database: {source}", path.display())]
    Invalid {
        /// The database path.
        path: PathBuf,
        /// What the reader found wrong.
        source: MaxMindDbError,
    },
    /// The file is a MaxMind database, but not a City database.
    #[error(
        "geoip database {} has type {database_type:?}; a City database is required",
        path.display()
    )]
    NotCity {
        /// The database path.
        path: PathBuf,
        /// The `database_type` found in the metadata.
        database_type: String,
    },
    /// [`GeoIp::watch`] was given a zero interval.
    #[error("geoip watch interval must be greater than zero")]
    ZeroInterval,
    /// [`GeoIp::watch`] was called outside a tokio runtime.
    #[error("geoip watch must be started inside a tokio runtime")]
    NoRuntime,
}

/// A City database held in memory, shared by all clones, replaceable while in use.
///
/// Cloning is cheap: clones share the database, and a reload through any of them is seen by
/// all.
#[derive(Clone)]
pub struct GeoIp {
    inner: Arc<Inner>,
}

/// What the reloading has done so far (for operators, and for tests that must see a
/// reload happen rather than assume it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Databases loaded and swapped in after the first.
    pub reloads: u64,
    /// Changed files that could not be loaded (the previous database was kept).
    pub failures: u64,
    /// Checks that found the file missing or unreadable.
    pub unreadable: u64,
}

#[derive(Default)]
struct Counters {
    reloads: std::sync::atomic::AtomicU64,
    failures: std::sync::atomic::AtomicU64,
    unreadable: std::sync::atomic::AtomicU64,
}

struct Inner {
    path: PathBuf,
    counters: Counters,
    db: ArcSwap<Database>,
    /// The file state of the last load attempt, successful or not. The lock also
    /// serialises reloads so that an older file never replaces a newer one.
    last_attempt: Mutex<Option<FileStamp>>,
}

struct Database {
    reader: Reader<Vec<u8>>,
    info: DbInfo,
}

/// What identifies one version of the file on disk: an atomic rename changes the inode,
/// an in-place write changes the length or the modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            dev: meta.dev(),
            #[cfg(unix)]
            ino: meta.ino(),
        }
    }
}

impl GeoIp {
    /// Loads the City database at `path` into memory.
    ///
    /// The file is read whole and verified (search tree and data section), so a broken file
    /// is refused here rather than misbehaving on a later lookup. This blocks on file I/O
    /// and on verification, which is proportional to the database size: call it at start-up
    /// or from a blocking context.
    ///
    /// # Errors
    ///
    /// [`GeoIpError::Io`] when the file cannot be read, [`GeoIpError::Invalid`] when it is
    /// not a valid MaxMind database, [`GeoIpError::NotCity`] when its `database_type` does
    /// not contain `City`.
    pub fn open(path: &Path) -> Result<GeoIp, GeoIpError> {
        let (db, stamp) = Database::load(path)?;
        tracing::info!(
            path = %path.display(),
            database_type = %db.info.database_type,
            build_epoch = db.info.build_epoch,
            "geoip database loaded"
        );
        Ok(GeoIp {
            inner: Arc::new(Inner {
                counters: Counters::default(),
                path: path.to_path_buf(),
                db: ArcSwap::from_pointee(db),
                last_attempt: Mutex::new(Some(stamp)),
            }),
        })
    }

    /// Opens the database as [`GeoIp::open`] does and starts a task that checks the file
    /// every `interval` and reloads it when it changed.
    ///
    /// A reload that fails (a broken or half-written file) keeps the previous database and
    /// logs a warning; the same file is not retried until it changes again. The task ends
    /// by itself once every clone of the returned [`GeoIp`] is dropped, or when the handle
    /// is aborted.
    ///
    /// # Errors
    ///
    /// As [`GeoIp::open`], plus [`GeoIpError::ZeroInterval`] and [`GeoIpError::NoRuntime`]
    /// (called outside a tokio runtime).
    pub fn watch(path: &Path, interval: Duration) -> Result<(GeoIp, JoinHandle<()>), GeoIpError> {
        if interval.is_zero() {
            return Err(GeoIpError::ZeroInterval);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| GeoIpError::NoRuntime)?;
        let geo = GeoIp::open(path)?;
        let task = runtime.spawn(watch_loop(Arc::downgrade(&geo.inner), interval));
        Ok((geo, task))
    }

    /// Reads the file again and, if it loads, serves it from now on.
    ///
    /// Blocks on file I/O and verification like [`GeoIp::open`]; from async code run it in
    /// `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// As [`GeoIp::open`]; the previous database stays in service.
    pub fn reload(&self) -> Result<(), GeoIpError> {
        self.inner.reload(false).map(|_| ())
    }

    /// Where `ip` is, or `None` when the database has no record for it.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are looked up as IPv4.
    #[must_use]
    pub fn lookup(&self, ip: IpAddr) -> Option<Geo> {
        let ip = ip.to_canonical();
        let db = self.inner.db.load();
        if ip.is_ipv6() && db.info.ip_version == 4 {
            return None;
        }
        let found = match db.reader.lookup(ip) {
            Ok(found) => found,
            Err(err) => {
                tracing::debug!(%ip, error = %err, "geoip lookup failed");
                return None;
            }
        };
        match found.decode::<CityRecord<'_>>() {
            Ok(Some(record)) => Some(record.into_geo()),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(%ip, error = %err, "geoip record could not be decoded");
                None
            }
        }
    }

    /// What reloading has done so far.
    pub fn reload_stats(&self) -> ReloadStats {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.counters;
        ReloadStats {
            reloads: c.reloads.load(Relaxed),
            failures: c.failures.load(Relaxed),
            unreadable: c.unreadable.load(Relaxed),
        }
    }

    /// The path the database is loaded (and reloaded) from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Metadata of the database currently served.
    #[must_use]
    pub fn info(&self) -> DbInfo {
        self.inner.db.load().info.clone()
    }
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = self.inner.db.load();
        f.debug_struct("GeoIp")
            .field("path", &self.inner.path)
            .field("database_type", &db.info.database_type)
            .field("build_epoch", &db.info.build_epoch)
            .finish()
    }
}

impl Inner {
    /// Loads the file and swaps it in. With `only_if_changed`, does nothing when the file
    /// is the one last tried. Returns whether a new database was swapped in.
    fn reload(&self, only_if_changed: bool) -> Result<bool, GeoIpError> {
        let mut last_attempt = self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stamp = stat(&self.path)?;
        if only_if_changed && *last_attempt == Some(stamp) {
            return Ok(false);
        }
        *last_attempt = Some(stamp);
        let (db, stamp) = Database::load(&self.path).inspect_err(|_| {
            self.counters
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        *last_attempt = Some(stamp);
        self.counters
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            path = %self.path.display(),
            database_type = %db.info.database_type,
            build_epoch = db.info.build_epoch,
            "geoip database reloaded"
        );
        self.db.store(Arc::new(db));
        Ok(true)
    }

    fn last_attempt(&self) -> Option<FileStamp> {
        *self
            .last_attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

async fn watch_loop(inner: Weak<Inner>, interval: Duration) {
    let mut missing_reported = false;
    loop {
        tokio::time::sleep(interval).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stamp = match tokio::fs::metadata(&strong.path).await {
            Ok(meta) => FileStamp::of(&meta),
            Err(err) => {
                strong
                    .counters
                    .unreadable
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !missing_reported {
                    tracing::warn!(
                        path = %strong.path.display(),
                        error = %err,
                        "geoip database file unreadable; keeping the loaded database"
                    );
                    missing_reported = true;
                }
                continue;
            }
        };
        missing_reported = false;
        if strong.last_attempt() == Some(stamp) {
            continue;
        }
        let path = strong.path.clone();
        match tokio::task::spawn_blocking(move || strong.reload(true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(
                path = %path.display(),
                error = %err,
                "geoip reload failed; keeping the previous database"
            ),
            Err(err) => tracing::warn!(
                path = %path.display(),
                error = %err,
                "geoip reload task failed; keeping the previous database"
            ),
        }
    }
}

fn stat(path: &Path) -> Result<FileStamp, GeoIpError> {
    std::fs::metadata(path)
        .map(|meta| FileStamp::of(&meta))
        .map_err(|source| GeoIpError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl Database {
    /// Reads and checks the file. The stamp is taken before the read, so a file replaced
    /// in between is seen as changed on the next check rather than missed.
    fn load(path: &Path) -> Result<(Database, FileStamp), GeoIpError> {
        let stamp = stat(path)?;
        let bytes = std::fs::read(path).map_err(|source| GeoIpError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |source| GeoIpError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        let reader = Reader::from_source(bytes).map_err(invalid)?;
        let meta = reader.metadata();
        if !meta.database_type.contains("City") {
            return Err(GeoIpError::NotCity {
                path: path.to_path_buf(),
                database_type: meta.database_type.clone(),
            });
        }
        let info = DbInfo {
            database_type: meta.database_type.clone(),
            build_epoch: meta.build_epoch,
            ip_version: meta.ip_version,
        };
        reader.verify().map_err(invalid)?;
        Ok((Database { reader, info }, stamp))
    }
}

/// The two fields read from a City record; everything else is skipped.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow, default)]
    country: Option<CountryField<'a>>,
    #[serde(borrow, default)]
    city: Option<CityField<'a>>,
}

#[derive(Deserialize)]
struct CountryField<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CityField<'a> {
    #[serde(borrow, default)]
    names: Option<EnglishName<'a>>,
}

#[derive(Deserialize)]
struct EnglishName<'a> {
    #[serde(borrow, default)]
    en: Option<&'a str>,
}

impl CityRecord<'_> {
    fn into_geo(self) -> Geo {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Geo {
            country: self.country.and_then(|c| c.iso_code).and_then(non_empty),
            city: self
                .city
                .and_then(|c| c.names)
                .and_then(|n| n.en)
                .and_then(non_empty),
        }
    }
}
