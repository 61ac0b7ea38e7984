//! Times in the database: RFC 3339 text in UTC with milliseconds
//! (`2026-01-01T00:00:00.250Z`), the format every wfcg has written, so rows old
//! and new read alike and the `sqlite3` CLI shows them as they are.
//!
//! Times are read with rusqlite's `FromSql` for `DateTime<Utc>` (its `chrono`
//! feature), which reads this format. They are not written with its `ToSql`,
//! which would write another (`2026-01-01 00:00:00.250123456+00:00`): every time
//! goes into a column through [`rfc3339`].

use chrono::{DateTime, SecondsFormat, Utc};

/// A time as the store (and the API) writes it: RFC 3339, UTC, milliseconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
