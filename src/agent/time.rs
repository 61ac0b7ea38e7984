//! Times as the store and the API write them (RFC 3339, UTC, milliseconds), read
//! back, and the age of a run.

/// Now, as [`rfc3339`] writes it.
pub(super) fn now() -> String {
    rfc3339(chrono::Utc::now())
}

/// A time as the store and the API write it (RFC 3339, UTC, milliseconds).
pub(super) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time the store or the API wrote; `None` when absent or not RFC 3339.
pub(super) fn parse_time(t: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&chrono::Utc))
}

/// Seconds from `started_at` to `until`; 0 when there is no start time.
pub(super) fn age_secs(started_at: Option<&str>, until: chrono::DateTime<chrono::Utc>) -> f64 {
    parse_time(started_at)
        .map(|s| (until - s).num_milliseconds() as f64 / 1e3)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_written_reads_back_and_ages() {
        let t = parse_time(Some("2026-01-01T00:00:00.250+01:00")).unwrap();
        assert_eq!(rfc3339(t), "2025-12-31T23:00:00.250Z");
        assert_eq!(parse_time(Some(&rfc3339(t))), Some(t));
        assert_eq!(parse_time(Some("yesterday")), None);
        assert_eq!(parse_time(None), None);
        let later = t + chrono::Duration::milliseconds(1500);
        assert_eq!(age_secs(Some("2025-12-31T23:00:00.250Z"), later), 1.5);
        assert_eq!(age_secs(None, later), 0.0);
        assert!(parse_time(Some(&now())).is_some());
    }
}
