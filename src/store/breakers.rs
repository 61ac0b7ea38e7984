//! The circuit breakers' rows: one per workflow and run owner (or one per
//! workflow for the whole host, when the operator's template says so).

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store, rfc3339};

/// The `owner_uid` of a host-wide breaker.
const HOST: i64 = -1;

/// One row of `breakers`: a workflow's runs of one owner (`None`: of everybody,
/// a host-wide breaker) that ended stuck in a row, and until when new runs are
/// refused (after the count reached the template's limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BreakerRecord {
    pub workflow: String,
    pub owner_uid: Option<u32>,
    pub failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
    pub open_until: Option<DateTime<Utc>>,
    pub last_run_id: Option<String>,
    pub last_reason: Option<String>,
}

const BREAKER_COLUMNS: &str =
    "workflow, owner_uid, failures, opened_at, open_until, last_run_id, last_reason";

fn owner_key(owner: Option<u32>) -> i64 {
    owner.map_or(HOST, i64::from)
}

fn breaker_from_row(r: &Row<'_>) -> rusqlite::Result<BreakerRecord> {
    let owner: i64 = r.get(1)?;
    Ok(BreakerRecord {
        workflow: r.get(0)?,
        owner_uid: u32::try_from(owner).ok(),
        failures: r.get(2)?,
        opened_at: r.get(3)?,
        open_until: r.get(4)?,
        last_run_id: r.get(5)?,
        last_reason: r.get(6)?,
    })
}

impl Store {
    /// The breaker of a workflow's runs of `owner` (`None`: the host-wide one), if any.
    pub fn breaker(&self, workflow: &str, owner: Option<u32>) -> Result<Option<BreakerRecord>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {BREAKER_COLUMNS} FROM breakers WHERE workflow = ?1 AND owner_uid = ?2"
            ))?
            .query_row(params![workflow, owner_key(owner)], breaker_from_row)
            .optional()?)
    }

    /// Every breaker row, by workflow and owner.
    pub fn breakers(&self) -> Result<Vec<BreakerRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {BREAKER_COLUMNS} FROM breakers ORDER BY workflow, owner_uid"
        ))?;
        let rows = stmt.query_map([], breaker_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Writes a breaker row (replacing the one of the same workflow and owner).
    pub fn put_breaker(&self, b: &BreakerRecord) -> Result<()> {
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO breakers ({BREAKER_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))?
            .execute(params![
                b.workflow,
                owner_key(b.owner_uid),
                b.failures,
                b.opened_at.map(rfc3339),
                b.open_until.map(rfc3339),
                b.last_run_id,
                b.last_reason
            ])?;
        Ok(())
    }

    /// Removes a breaker row (its count starts again from 0); whether there was one.
    pub fn delete_breaker(&self, workflow: &str, owner: Option<u32>) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM breakers WHERE workflow = ?1 AND owner_uid = ?2")?
            .execute(params![workflow, owner_key(owner)])?
            > 0)
    }
}
