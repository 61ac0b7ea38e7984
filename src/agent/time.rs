//! Times as the store and the API write them (RFC 3339, UTC, milliseconds), read
//! back, and the age of a run.

pub(super) fn now() -> String {
    rfc3339(chrono::Utc::now())
}

/// A time as the store and the API write it (RFC 3339, UTC, milliseconds).
pub(super) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

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
