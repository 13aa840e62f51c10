//! Small City-shaped MaxMind databases for tests.
//!
//! Each entry is `(network, country iso code, english city name)`, e.g.
//! `("81.2.69.0/24", "GB", "London")` or `("2a02:dd8::/32", "DE", "Berlin")`. An empty
//! country or city leaves that part out of the record. Records have the shape of the
//! commercial City databases: `{country: {iso_code}, city: {names: {en}}}`.
//!
//! The databases are IPv6 databases (IPv4 networks are reachable as plain IPv4 and as
//! IPv4-mapped IPv6). Files are written atomically: to a sibling temporary file that is
//! then renamed over `path`, the way a database update should land next to a running
//! [`GeoIp::watch`](crate::GeoIp::watch).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use mmdb_writer::ipnet::IpNet;
use mmdb_writer::{Value, Writer};

/// The `database_type` written by [`city_db_bytes`] and [`write_city_db`].
pub const CITY_DATABASE_TYPE: &str = "GeoLite2-City";

/// A City database holding `entries`, as bytes.
///
/// # Errors
///
/// An [`io::ErrorKind::InvalidInput`] error for a network that does not parse or cannot be
/// stored.
pub fn city_db_bytes(entries: &[(&str, &str, &str)]) -> io::Result<Vec<u8>> {
    db_bytes(CITY_DATABASE_TYPE, entries)
}

/// A database of the given `database_type` holding `entries`, as bytes. With a type such
/// as `"GeoLite2-Country"` this makes a database that [`GeoIp::open`](crate::GeoIp::open)
/// must refuse.
///
/// # Errors
///
/// As [`city_db_bytes`].
pub fn db_bytes(database_type: &str, entries: &[(&str, &str, &str)]) -> io::Result<Vec<u8>> {
    let mut writer = Writer::builder(database_type)
        .description(&[("en", "sg-geoip test database")])
        .build();
    for &(network, country, city) in entries {
        let net: IpNet = network.parse().map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("network {network:?}: {err}"),
            )
        })?;
        writer
            .insert_value(net, record(country, city))
            .map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("network {network:?}: {err}"),
                )
            })?;
    }
    writer.to_bytes().map_err(io::Error::other)
}

/// Writes a City database holding `entries` to `path`, atomically.
///
/// # Errors
///
/// As [`city_db_bytes`], or an I/O error from writing the file.
pub fn write_city_db(path: &Path, entries: &[(&str, &str, &str)]) -> io::Result<()> {
    replace_file(path, &city_db_bytes(entries)?)
}

/// Writes a database of the given `database_type` holding `entries` to `path`, atomically.
///
/// # Errors
///
/// As [`db_bytes`], or an I/O error from writing the file.
pub fn write_db(
    path: &Path,
    database_type: &str,
    entries: &[(&str, &str, &str)],
) -> io::Result<()> {
    replace_file(path, &db_bytes(database_type, entries)?)
}

/// Replaces the file at `path` with `bytes` atomically: writes a sibling temporary file and
/// renames it over `path`. Readers see the old file or the new one, never a mix.
///
/// # Errors
///
/// An I/O error from writing or renaming.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn record(country: &str, city: &str) -> Value {
    let mut fields = Vec::new();
    if !country.is_empty() {
        fields.push(("country", Value::map([("iso_code", Value::from(country))])));
    }
    if !city.is_empty() {
        fields.push((
            "city",
            Value::map([("names", Value::map([("en", Value::from(city))]))]),
        ));
    }
    Value::map(fields)
}
