//! Times as the API and the audit trail write them (RFC 3339, UTC,
//! milliseconds: [`rfc3339`], the store's format), and the age of a run.

use chrono::{DateTime, Utc};

pub(super) use crate::store::rfc3339;

/// Now, as [`rfc3339`] writes it (for the audit trail and answers, whose times are text).
pub(super) fn now() -> String {
    rfc3339(Utc::now())
}

/// Seconds from `started_at` to `until`; 0 when there is no start time.
pub(super) fn age_secs(started_at: Option<DateTime<Utc>>, until: DateTime<Utc>) -> f64 {
    started_at
        .map(|s| (until - s).num_milliseconds() as f64 / 1e3)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading times back is the store's (store::tests: old rows, bad text).
    #[test]
    fn a_time_is_written_in_utc_and_ages() {
        let t: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.250+01:00")
            .unwrap()
            .into();
        assert_eq!(rfc3339(t), "2025-12-31T23:00:00.250Z");
        let later = t + chrono::Duration::milliseconds(1500);
        assert_eq!(age_secs(Some(t), later), 1.5);
        assert_eq!(age_secs(None, later), 0.0);
        assert!(DateTime::parse_from_rfc3339(&now()).is_ok());
    }
}
