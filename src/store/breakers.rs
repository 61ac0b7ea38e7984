//! The circuit breakers' rows: one per workflow.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store, rfc3339};

/// One row of `breakers`: a workflow's runs that ended stuck in a row, and
/// until when new runs are refused (after the count reached the template's limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BreakerRecord {
    pub workflow: String,
    pub failures: u32,
    pub opened_at: Option<DateTime<Utc>>,
    pub open_until: Option<DateTime<Utc>>,
    pub last_run_id: Option<String>,
    pub last_reason: Option<String>,
}

const BREAKER_COLUMNS: &str = "workflow, failures, opened_at, open_until, last_run_id, last_reason";

fn breaker_from_row(r: &Row<'_>) -> rusqlite::Result<BreakerRecord> {
    Ok(BreakerRecord {
        workflow: r.get(0)?,
        failures: r.get(1)?,
        opened_at: r.get(2)?,
        open_until: r.get(3)?,
        last_run_id: r.get(4)?,
        last_reason: r.get(5)?,
    })
}

impl Store {
    /// A workflow's breaker row, if it has one.
    pub fn breaker(&self, workflow: &str) -> Result<Option<BreakerRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {BREAKER_COLUMNS} FROM breakers WHERE workflow = ?1"),
                params![workflow],
                breaker_from_row,
            )
            .optional()?)
    }

    /// Every breaker row, by workflow.
    pub fn breakers(&self) -> Result<Vec<BreakerRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {BREAKER_COLUMNS} FROM breakers ORDER BY workflow"
        ))?;
        let rows = stmt.query_map([], breaker_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Writes a workflow's breaker row (replacing it).
    pub fn put_breaker(&self, b: &BreakerRecord) -> Result<()> {
        self.conn.execute(
            &format!("INSERT OR REPLACE INTO breakers ({BREAKER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                b.workflow,
                b.failures,
                b.opened_at.map(rfc3339),
                b.open_until.map(rfc3339),
                b.last_run_id,
                b.last_reason
            ],
        )?;
        Ok(())
    }

    /// Removes a workflow's breaker row (its count starts again from 0); whether there was one.
    pub fn delete_breaker(&self, workflow: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM breakers WHERE workflow = ?1",
            params![workflow],
        )? > 0)
    }
}
