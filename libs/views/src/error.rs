//! Errors of the view database.

/// What went wrong reading or writing the views.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The database is unreachable, shutting down, or too busy; retrying later may succeed.
    #[error("view database unavailable: {0}")]
    Unavailable(String),
    /// One event of a batch cannot be represented in the views (e.g. a counter beyond
    /// the range of a SQL `BIGINT`). Nothing of the batch was written; retrying the same
    /// batch fails the same way.
    #[error("event at sequence {seq} cannot be projected: {reason}")]
    Rejected { seq: u64, reason: String },
    /// The stored checkpoint is below the one the caller knows was committed: the
    /// database lost committed transactions. Nothing of the batch was written.
    #[error("view checkpoint at {stored}, below the {expected} already applied")]
    CheckpointBehind { stored: u64, expected: u64 },
    /// Anything else: a schema mismatch, corrupt data, a bug.
    #[error("view database error: {0}")]
    Other(String),
}

impl ViewError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ViewError::Unavailable(_))
    }
}

impl From<sqlx::Error> for ViewError {
    fn from(err: sqlx::Error) -> Self {
        if is_transient(&err) {
            ViewError::Unavailable(err.to_string())
        } else {
            ViewError::Other(err.to_string())
        }
    }
}

impl From<sqlx::migrate::MigrateError> for ViewError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(err) => ViewError::from(err),
            other => ViewError::Other(format!("migrating the views: {other}")),
        }
    }
}

fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_code(&code)),
        _ => false,
    }
}

/// Database error codes worth a retry. PostgreSQL reports five-character SQLSTATEs,
/// SQLite numeric (extended) result codes of at most four digits.
fn transient_code(code: &str) -> bool {
    if code.len() != 5 {
        let Ok(sqlite) = code.parse::<u32>() else {
            return false;
        };
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN, by
        // primary code (the low byte of an extended code).
        return matches!(sqlite & 0xff, 5 | 6 | 10 | 13 | 14);
    }
    // Connection exceptions, insufficient resources, operator intervention (shutdown,
    // cannot connect now), system errors, serialization failures and deadlocks, lock
    // not available.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code.starts_with("58")
        || code == "40001"
        || code == "40P01"
        || code == "55P03"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert!(transient_code("5"));
        assert!(transient_code("517"));
        assert!(transient_code("57P01"));
        assert!(transient_code("08006"));
        assert!(!transient_code("23505"));
        assert!(!transient_code("19"));
        assert!(!transient_code("2067"));
        assert!(transient_code("53300"));
        assert!(transient_code("40001"));
        assert!(!transient_code("22003"));
    }
}
