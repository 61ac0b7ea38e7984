//! The agent's durable state: a SQLite database (WAL, `synchronous=FULL`) with
//! the runs and every kill sequence carried out.
//!
//! A leaf module: plain records in and out, no knowledge of cgroups or the agent.
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] lists every
//! step, applied in order inside one transaction each. Operators may read the
//! file with the `sqlite3` CLI.

mod audit;
mod breakers;
mod runs;
mod schema;
#[cfg(test)]
mod tests;
mod time;

pub use audit::*;
pub use breakers::*;
pub use runs::*;
use schema::MIGRATIONS;
pub use time::rfc3339;

use std::path::Path;

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run with this id exists already.
    #[error("run id {0:?} is already in use")]
    Duplicate(String),
    /// The database was written by a newer wfcg.
    #[error("database schema version {found} is newer than this wfcg knows ({known})")]
    TooNew { found: i64, known: i64 },
    /// A row holds a value that does not read as its type.
    #[error(transparent)]
    BadColumn(#[from] BadColumn),
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(rusqlite::Error),
}

/// A value in a run's row that does not read as its type: an unknown status, a
/// time that is not RFC 3339, a command that is not a JSON array (a row edited
/// by hand, or written by a newer wfcg).
#[derive(Debug, thiserror::Error)]
#[error("run {run_id:?} in the database: column {column} holds {value}: {why}")]
pub struct BadColumn {
    pub run_id: String,
    pub column: String,
    /// The value as it is stored (text quoted, cut at 100 characters).
    pub value: String,
    pub why: String,
}

impl From<rusqlite::Error> for Error {
    /// A [`BadColumn`] travels through rusqlite as the cause of a failed
    /// conversion; it comes out as itself.
    fn from(e: rusqlite::Error) -> Error {
        match e {
            rusqlite::Error::FromSqlConversionFailure(i, ty, why) => match why.downcast() {
                Ok(bad) => Error::BadColumn(*bad),
                Err(why) => Error::Sqlite(rusqlite::Error::FromSqlConversionFailure(i, ty, why)),
            },
            e => Error::Sqlite(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Syncs a store's unsynced commits to the disk, from another thread than
/// the store's ([`Store::syncer`]).
pub struct Syncer {
    conn: Connection,
}

impl Syncer {
    /// A passive checkpoint with `synchronous=FULL`: the write-ahead log is
    /// synced, what it holds copied into the database as far as readers allow,
    /// and the database synced. Writers are not blocked meanwhile.
    pub fn sync(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The database of one agent.
pub struct Store {
    conn: Connection,
}

/// How many prepared statements a store keeps (more than it has).
const STATEMENT_CACHE: usize = 64;

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement the agent runs is parsed once, not at each call
        // (parsing was a quarter of a start's CPU in the agent); 64 holds them all.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `f` as one immediate transaction: everything it writes is committed
    /// (one fsync) when it returns `Ok`, nothing when it returns an error. The
    /// writes inside that would be transactions of their own ([`Store::record_kill`],
    /// [`Store::append_audit_after`]) join this one.
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(v) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// Runs `f` with commits synced to the disk (`synchronous=FULL`, the
    /// store's setting) or not (`OFF`: written to the operating system, which
    /// keeps them through the agent's crash but not through a power loss, until
    /// the next synced commit syncs the write-ahead log with them).
    pub fn with_sync<T>(
        &mut self,
        durable: bool,
        f: impl FnOnce(&mut Store) -> Result<T>,
    ) -> Result<T> {
        if durable {
            return f(self);
        }
        self.conn.pragma_update(None, "synchronous", "OFF")?;
        let res = f(self);
        if let Err(e) = self.conn.pragma_update(None, "synchronous", "FULL") {
            tracing::error!("cannot set the store's commits back to synced: {e}");
        }
        res
    }

    /// A connection of its own that syncs what this store's unsynced commits
    /// wrote ([`Syncer::sync`]); `None` for an in-memory database.
    ///
    /// Never the database's files opened and closed by hand: closing any
    /// descriptor of the database drops every POSIX lock the process holds on
    /// it, after which another process (the `sqlite3` shell) takes itself for
    /// the only one and deletes the write-ahead log under this connection.
    /// SQLite's own connections share their locks within a process.
    pub fn syncer(&self) -> Result<Option<Syncer>> {
        let Some(db) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let conn = Connection::open(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(Some(Syncer { conn }))
    }

    /// `f` in an immediate transaction of its own, or in the caller's [`Store::batch`].
    fn immediate<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return f(&self.conn);
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(Error::TooNew { found, known });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// `PRAGMA quick_check`: `None` when the database is sound, else what SQLite
    /// found wrong (its first lines).
    pub fn quick_check(&self) -> Result<Option<String>> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check(5)")?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        Ok((lines != ["ok"]).then(|| lines.join("; ")))
    }

    /// The schema version in use.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}
