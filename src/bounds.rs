//! Bounded values: the most a duration a user sends may be, and time arithmetic
//! that never overflows. Every duration, count or time that reaches the agent
//! from a user (request bodies and query strings through [`wire`] helpers here,
//! CLI flags and templates through [`crate::duration::parse`], notify datagrams
//! through [`clamp`]) is at most [`MAX`] before it is used, and every
//! `time + duration` goes through [`later`] / [`earlier`], which cannot panic.
//!
//! A leaf module: it knows nothing of the agent (the operator's own limits, which
//! cap a run's values more tightly, are applied where the run's template is known).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The longest duration anything accepts: 10 years (of 365 days).
pub const MAX: Duration = Duration::from_secs(MAX_SECS);
/// [`MAX`] in seconds.
pub const MAX_SECS: u64 = 10 * 365 * 86_400;
/// [`MAX`] in milliseconds.
pub const MAX_MS: u64 = MAX_SECS * 1_000;
/// [`MAX`] in microseconds.
pub const MAX_USEC: u64 = MAX_SECS * 1_000_000;

/// `d`, or [`MAX`] if it is longer.
pub fn clamp(d: Duration) -> Duration {
    d.min(MAX)
}

/// Microseconds (sd_notify's unit) as a duration, at most `cap` (and [`MAX`]).
pub fn usec_at_most(usec: u64, cap: Duration) -> Duration {
    Duration::from_micros(usec.min(MAX_USEC)).min(cap).min(MAX)
}

/// `d` as a chrono delta; [`MAX`] at most, so it always fits.
fn delta(d: Duration) -> TimeDelta {
    // At most 10 years: always within TimeDelta's range (about 292 million years).
    TimeDelta::from_std(clamp(d)).unwrap_or(TimeDelta::zero())
}

/// `t + d`, with `d` at most [`MAX`]; never panics (the latest time chrono can
/// hold if even that overflows, which no clock of this era reaches).
pub fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(delta(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, with `d` at most [`MAX`]; never panics.
pub fn earlier(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_sub_signed(delta(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Why a number was refused, naming the field (`field: …`).
pub fn too_large(field: &str, value: u64, unit: &str, max: u64) -> String {
    format!("{field}: {value} {unit} is more than the most accepted, {max} {unit} (10 years)")
}

/// Serde helpers for the wire types: numbers bounded when they are read, so a
/// value out of range is a `bad_input` answer naming the field (the request
/// readers report serde's path) and never reaches the agent's arithmetic.
pub mod wire {
    use super::{MAX_MS, MAX_SECS};
    use serde::{Deserialize, Deserializer, de::Error};

    fn at_most<'de, D: Deserializer<'de>>(
        d: D,
        max: u64,
        unit: &str,
    ) -> Result<Option<u64>, D::Error> {
        match Option::<u64>::deserialize(d)? {
            Some(v) if v > max => Err(D::Error::custom(format!(
                "{v} {unit} is more than the most accepted, {max} {unit} (10 years)"
            ))),
            v => Ok(v),
        }
    }

    /// An optional duration in milliseconds, at most 10 years.
    pub fn opt_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        at_most(d, MAX_MS, "ms")
    }

    /// An optional duration in seconds, at most 10 years.
    pub fn opt_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        at_most(d, MAX_SECS, "s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_at_the_edges_never_panics() {
        let now = Utc::now();
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            MAX,
            MAX + Duration::from_nanos(1),
            Duration::from_micros(u64::MAX),
            Duration::MAX,
        ] {
            let l = later(now, d);
            assert!(l >= now && l <= now + TimeDelta::days(3651), "{d:?}");
            let e = earlier(now, d);
            assert!(e <= now && e >= now - TimeDelta::days(3651), "{d:?}");
        }
        assert_eq!(
            later(DateTime::<Utc>::MAX_UTC, MAX),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            earlier(DateTime::<Utc>::MIN_UTC, MAX),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn microseconds_are_capped() {
        let cap = Duration::from_secs(2);
        assert_eq!(usec_at_most(u64::MAX, cap), cap);
        assert_eq!(usec_at_most(86_400_000_000, cap), cap);
        assert_eq!(usec_at_most(1, cap), Duration::from_micros(1));
        assert_eq!(usec_at_most(u64::MAX, Duration::MAX), MAX);
    }

    #[test]
    fn wire_numbers_past_ten_years_are_refused_naming_the_unit() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(default, deserialize_with = "super::wire::opt_ms")]
            #[allow(dead_code)]
            ms: Option<u64>,
        }
        assert!(serde_json::from_str::<T>(&format!("{{\"ms\":{MAX_MS}}}")).is_ok());
        assert!(serde_json::from_str::<T>("{}").is_ok());
        assert!(serde_json::from_str::<T>("{\"ms\":null}").is_ok());
        let e = serde_json::from_str::<T>(&format!("{{\"ms\":{}}}", MAX_MS + 1)).unwrap_err();
        assert!(e.to_string().contains("10 years"), "{e}");
    }
}
