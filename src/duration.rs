//! Human durations on the command line and in templates: `500ms`, `30s`, `5m`,
//! `1h30m`, `2d`, or plain (possibly fractional) seconds; at most
//! [`crate::bounds::MAX`] (10 years), so every CLI flag and template duration is
//! bounded where it is read.

use std::time::Duration;

/// Parses a duration; the error says what was wrong with the text.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs, text);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("{text:?} is not a duration (try 30s, 5m, 1h30m)"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{text:?} has a bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => {
                return Err(format!(
                    "{text:?} needs a unit after {value} (ms, s, m, h, d)"
                ));
            }
            unit => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?} (ms, s, m, h, d)"
                ));
            }
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    secs_to_duration(total, text)
}

fn secs_to_duration(secs: f64, text: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "{text:?} is not a duration (negative or not a number)"
        ));
    }
    if secs > crate::bounds::MAX_SECS as f64 {
        return Err(format!(
            "{text:?} is longer than the most accepted, 10 years"
        ));
    }
    // Within 0..=10 years: from_secs_f64 cannot panic.
    Ok(crate::bounds::clamp(Duration::from_secs_f64(secs)))
}

/// Formats a duration the way `parse` reads it back, e.g. `1h30m`, `2.5s`.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && d.subsec_nanos() == 0 {
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let mut out = String::new();
        for (v, u) in [(h, "h"), (m, "m"), (s, "s")] {
            if v > 0 {
                out.push_str(&format!("{v}{u}"));
            }
        }
        out
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", (d.as_secs_f64() * 10.0).round() / 10.0)
    }
}

/// Seconds, for tables: `42s`, `3m07s`, `2h05m`, `1d04h` (negative is `0s`).
pub fn short(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("12").unwrap(), Duration::from_secs(12));
        assert_eq!(parse("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_with_a_reason() {
        for bad in [
            "",
            "abc",
            "5x",
            "-1",
            "s",
            "10 s",
            "1e400",
            "NaN",
            "inf",
            "-inf",
            "3651d",
            "1e9",
            "18446744073709551615",
            "99999999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse("5x").unwrap_err().contains("unknown unit"));
        assert!(parse("3651d").unwrap_err().contains("10 years"));
        assert_eq!(parse("3650d").unwrap(), crate::bounds::MAX);
        assert_eq!(parse("1e-400").unwrap(), Duration::ZERO);
    }

    #[test]
    fn formats_round_trip() {
        for d in ["1h30m", "5m", "2.5s", "250ms"] {
            assert_eq!(format(parse(d).unwrap()), d);
        }
    }
}
