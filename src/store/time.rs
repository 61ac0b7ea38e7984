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

/// The time in column `i` of `r` (NULL: `None`). The store's own format is
/// read as RFC 3339 directly (a listing reads seven a run); anything else as
/// rusqlite's `FromSql` reads it, errors included.
pub fn column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    if let Ok(rusqlite::types::ValueRef::Text(text)) = r.get_ref(i)
        && let Some(t) = std::str::from_utf8(text)
            .ok()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    r.get(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_reads_the_stores_format_and_what_rusqlite_reads_alike() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let read = |text: Option<&str>| {
            db.query_row("SELECT ?1", [text], |r| column(r, 0))
                .map_err(|e| e.to_string())
        };
        let t = "2026-01-01T00:00:00.250Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(read(Some("2026-01-01T00:00:00.250Z")), Ok(Some(t)));
        assert_eq!(read(Some("2026-01-01T01:00:00.250+01:00")), Ok(Some(t)));
        // rusqlite's own forms still read (the slow way).
        assert_eq!(read(Some("2026-01-01 00:00:00.250")), Ok(Some(t)));
        assert_eq!(read(None), Ok(None));
        assert!(read(Some("yesterday")).is_err());
        assert_eq!(read(Some(&rfc3339(t))), Ok(Some(t)));
    }
}
