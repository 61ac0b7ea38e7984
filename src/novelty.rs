//! Whether a line of output (or a command line) is new, or repeats an earlier
//! one with only its numbers changed: a retry ("attempt 7, waiting 23s"), a
//! reconnect, a backoff countdown, a timestamp. Lines are compared by their
//! [`normalize`]d form, against a bounded set of the recent ones ([`Recent`]).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Instant;

/// Units a number may carry and still be only a number ("3s", "250ms", "2m30s").
const UNITS: &[&str] = &[
    "ns", "us", "µs", "ms", "s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute",
    "minutes", "h", "hr", "hrs", "hour", "hours", "d", "day", "days", "b", "kb", "mb", "gb", "k",
    "kib", "mib", "gib", "x",
];

/// A line with what changes between repeats taken out: every number (with a
/// unit of time or size, a decimal point or not) and every word of hex digits
/// (and dashes between them) with a digit in it (ids, UUIDs, hashes, addresses)
/// becomes `#`; runs of white space
/// become one space; the ends are trimmed. "attempt 3, waiting 8s" and
/// "attempt 4, waiting 1m30s" both become "attempt #, waiting #".
pub fn normalize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut space = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            space = !out.is_empty();
            i += 1;
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        if !c.is_alphanumeric() {
            out.push(c);
            i += 1;
            continue;
        }
        // A word: letters and digits, with a '.' between two digits ("1.5s")
        // and a '-' between two hex digits (a UUID is one word).
        let start = i;
        let between = |i: usize, joiner: char, class: fn(&char) -> bool| {
            chars[i] == joiner
                && i > start
                && class(&chars[i - 1])
                && chars.get(i + 1).is_some_and(class)
        };
        while i < chars.len()
            && (chars[i].is_alphanumeric()
                || between(i, '.', char::is_ascii_digit)
                || between(i, '-', char::is_ascii_hexdigit))
        {
            i += 1;
        }
        out.push_str(&word(&chars[start..i]));
    }
    out
}

/// One word, normalized (see [`normalize`]).
fn word(w: &[char]) -> String {
    let has_digit = w.iter().any(char::is_ascii_digit);
    if !has_digit {
        return w.iter().collect();
    }
    if w.iter().all(|c| c.is_ascii_hexdigit() || *c == '-') {
        return "#".into();
    }
    // Numbers become '#'; then a word made only of numbers with units is one '#'.
    let mut s = String::new();
    let mut in_number = false;
    for &c in w {
        if c.is_ascii_digit() || (c == '.' && in_number) {
            if !in_number {
                s.push('#');
                in_number = true;
            }
        } else {
            in_number = false;
            s.push(c);
        }
    }
    if only_quantities(&s) { "#".into() } else { s }
}

/// Whether `s` is `#` followed by units, repeated ("#", "#ms", "#m#s").
fn only_quantities(s: &str) -> bool {
    s.split('#').skip(1).all(|unit| {
        let unit = unit.to_lowercase();
        unit.is_empty() || UNITS.contains(&unit.as_str())
    }) && s.starts_with('#')
}

/// What [`Recent::see`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not among the recent lines: something new happened.
    New,
    /// Like a recent line: how many times it has been seen now (2 or more),
    /// and when first.
    Repeat(u64, Instant),
}

/// The recent normalized lines of one run and how often each was seen, at most
/// `cap` of them (the least recently seen is forgotten first).
#[derive(Debug)]
pub struct Recent {
    cap: usize,
    counts: HashMap<u64, (u64, Instant)>,
    /// Keys by when they were last seen, oldest first (one entry per sighting;
    /// stale entries are skipped when forgetting).
    order: VecDeque<(u64, u64)>,
    tick: u64,
    last: HashMap<u64, u64>,
}

impl Recent {
    pub fn new(cap: usize) -> Recent {
        Recent {
            cap: cap.max(1),
            counts: HashMap::new(),
            order: VecDeque::new(),
            tick: 0,
            last: HashMap::new(),
        }
    }

    /// Notes one line (already [`normalize`]d) and says whether it is new.
    pub fn see(&mut self, normalized: &str) -> Seen {
        let mut h = DefaultHasher::new();
        normalized.hash(&mut h);
        let key = h.finish();
        self.tick += 1;
        self.last.insert(key, self.tick);
        self.order.push_back((key, self.tick));
        let (count, first) = self.counts.entry(key).or_insert((0, Instant::now()));
        *count += 1;
        let seen = if *count == 1 {
            Seen::New
        } else {
            Seen::Repeat(*count, *first)
        };
        while self.counts.len() > self.cap || self.order.len() > 4 * self.cap {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.last.get(&old) == Some(&at) {
                self.last.remove(&old);
                self.counts.remove(&old);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_and_countdowns_normalize_alike() {
        let same = [
            (
                "Reconnecting... attempt 3, waiting 8s",
                "Reconnecting... attempt 12, waiting 1m30s",
            ),
            (
                "2026-12-07T11:15:34.123Z ERROR request 9f3a2b1c failed: 529",
                "2026-12-07T11:16:02.002Z ERROR request 0d1e2f3a failed: 500",
            ),
            ("retry in 250ms", "retry  in 1.5s "),
            ("Attempt 1 failed", "Attempt 10 failed"),
            // UUIDs whose groups may have no digit ("bfcc").
            (
                r#"{"subtype":"api_retry","attempt":1,"uuid":"8255bfcc-6540-4e49-a20e-0e41e085dec2"}"#,
                r#"{"subtype":"api_retry","attempt":2,"uuid":"9107fad5-bfcc-4e49-adfb-0e41e085dec2"}"#,
            ),
        ];
        for (a, b) in same {
            assert_eq!(normalize(a), normalize(b), "{a:?} vs {b:?}");
        }
        assert_eq!(
            normalize("Reconnecting... attempt 3, waiting 8s"),
            "Reconnecting... attempt #, waiting #"
        );
    }

    #[test]
    fn new_words_stay_new() {
        let differ = [
            ("created tmp.aB3xYz", "created tmp.Qr7pLm"),
            ("compiling foo.rs", "compiling bar.rs"),
            ("added cafe", "added face"),
            ("file v2.txt", "file v2.csv"),
        ];
        for (a, b) in differ {
            assert_ne!(normalize(a), normalize(b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn recent_counts_repeats_and_forgets_the_oldest() {
        let mut r = Recent::new(2);
        let count = |s: Seen| match s {
            Seen::New => 1,
            Seen::Repeat(n, _) => n,
        };
        assert_eq!(r.see("a"), Seen::New);
        assert_eq!(count(r.see("a")), 2);
        assert_eq!(r.see("b"), Seen::New);
        assert_eq!(count(r.see("a")), 3);
        // "c" makes three: "b", the least recently seen, is forgotten.
        assert_eq!(r.see("c"), Seen::New);
        assert_eq!(count(r.see("a")), 4);
        assert_eq!(r.see("b"), Seen::New);
        // A flood of one line keeps the set bounded.
        for _ in 0..1000 {
            r.see("a");
        }
        assert!(r.order.len() <= 8 && r.counts.len() <= 2);
    }
}
