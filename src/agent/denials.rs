//! Coalescing of users' refused requests in the audit trail, so that one user's
//! flood of denied requests grows the store by a bounded amount.
//!
//! A record is "refused" when a user (not root) asked and was denied, or named
//! no run, or sent bad input. Per user and per window (policy `[limits] denial_window_secs`, a minute by default), the first
//! refused record of each key (action, target run, mode, permission, decision,
//! outcome) is written as it is; the repeats are only counted. When the window
//! ends, each key with repeats gets one summary record: action
//! `denials_coalesced`, the last repeat's actor, target, mode, permission,
//! decision and outcome, and a `reason` of `count=N action=A first=T last=T`
//! (and the last reason, capped); N counts the repeats, not the first record. A user gets
//! at most [`MAX_KEYS`] keys a window; later keys share one (`action` `*`, no
//! target). The records are appended like any other, so the hash chain and
//! `audit verify` stay whole; nothing is rewritten.
//!
//! While the state filesystem is below root's reserve, refused records are only
//! counted, and the window is held open until there is room again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::{AuditAction, AuditEntry, Decision};

/// How long one window of coalescing lasts by default (policy `[limits] denial_window_secs`).
#[cfg(test)]
const WINDOW: Duration = Duration::from_secs(60);
/// Distinct keys a user gets written a window; more share one key.
pub const MAX_KEYS: usize = 16;
/// The longest reason kept in a refused record (bytes).
pub const MAX_REFUSED_REASON: usize = 256;
/// The summary records' action.
pub const COALESCED: AuditAction = AuditAction::DenialsCoalesced;

/// What makes two refused records the same. The key every record shares past
/// the cap has no action nor decision (any: `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    action: Option<AuditAction>,
    run_id: Option<String>,
    mode: Option<String>,
    permission: Option<String>,
    decision: Option<Decision>,
    outcome: String,
}

#[derive(Debug)]
struct Repeats {
    count: u64,
    first: String,
    last: String,
    /// The last repeat, for the summary's other fields.
    entry: AuditEntry,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    keys: HashMap<Key, Option<Repeats>>,
}

/// The open windows, per user.
#[derive(Debug, Default)]
pub struct Denials {
    windows: HashMap<u32, Window>,
}

/// Whether `e` is a user's refused request (coalesced).
pub fn is_refused(e: &AuditEntry) -> bool {
    e.actor_uid.is_some_and(|uid| uid != 0)
        && (e.decision == Decision::Denied
            || matches!(
                e.outcome.as_str(),
                "denied" | "no_such_run" | "bad_input" | "no_such_breaker"
            ))
}

/// Whether `e` is a user's request that changed nothing (coalesced like a refused
/// one): refused ([`is_refused`]), a question (`permission_query`, an adoption's
/// dry run), a kill of a run that had ended already, or an adoption refused or
/// found done already. What a user can repeat at will without acting on a run
/// must not grow the audit trail at will.
pub fn is_coalesced(e: &AuditEntry) -> bool {
    is_refused(e)
        || (e.actor_uid.is_some_and(|uid| uid != 0)
            && (matches!(
                e.action,
                AuditAction::PermissionQuery | AuditAction::AdoptDryRun
            ) || e.outcome == "already_ended"
                || e.outcome.starts_with("refused")
                || e.outcome.starts_with("already adopted")))
}

/// Cuts `text` to at most `max` bytes (at a character boundary), saying how long it was.
pub fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes, cut)", &text[..end], text.len())
}

impl Denials {
    /// Takes a refused record: `Some` (capped) to write now, `None` when it was
    /// counted into its key's window. `room`: whether the state filesystem is
    /// above root's reserve.
    pub fn admit(&mut self, mut e: AuditEntry, room: bool, now: Instant) -> Option<AuditEntry> {
        let uid = e.actor_uid.unwrap_or(0);
        e.reason = e.reason.map(|r| cap(&r, MAX_REFUSED_REASON));
        let w = self.windows.entry(uid).or_insert_with(|| Window {
            started: now,
            keys: HashMap::new(),
        });
        let mut key = Key {
            action: Some(e.action.clone()),
            run_id: e.run_id.clone(),
            mode: e.mode.clone(),
            permission: e.permission.clone(),
            decision: Some(e.decision.clone()),
            outcome: e.outcome.clone(),
        };
        // Past the cap, every new key shares one, which is only ever counted.
        let overflow = !w.keys.contains_key(&key) && w.keys.len() >= MAX_KEYS;
        if overflow {
            key = Key {
                action: None,
                run_id: None,
                mode: None,
                permission: None,
                decision: None,
                outcome: "*".into(),
            };
        }
        if !overflow && !w.keys.contains_key(&key) && room {
            w.keys.insert(key, None);
            return Some(e);
        }
        match w.keys.entry(key).or_insert(None) {
            Some(rep) => {
                rep.count += 1;
                rep.last = e.time.clone();
                rep.entry = e;
            }
            r @ None => {
                *r = Some(Repeats {
                    count: 1,
                    first: e.time.clone(),
                    last: e.time.clone(),
                    entry: e,
                })
            }
        }
        None
    }

    /// The summary records of the windows that ended by `now` (all of them
    /// when `all`), which are closed. None while there is no `room`.
    pub fn expire(
        &mut self,
        now: Instant,
        window: Duration,
        room: bool,
        all: bool,
    ) -> Vec<AuditEntry> {
        if !room {
            return Vec::new();
        }
        let ended: Vec<u32> = self
            .windows
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.started) >= window)
            .map(|(uid, _)| *uid)
            .collect();
        let mut out = Vec::new();
        for uid in ended {
            let Some(w) = self.windows.remove(&uid) else {
                continue;
            };
            let mut reps: Vec<(Key, Repeats)> = w
                .keys
                .into_iter()
                .filter_map(|(k, r)| r.map(|r| (k, r)))
                .collect();
            reps.sort_by(|a, b| a.1.first.cmp(&b.1.first));
            out.extend(reps.into_iter().map(|(k, r)| summary(k, r)));
        }
        out
    }
}

/// The record that stands for a key's repeats.
fn summary(k: Key, r: Repeats) -> AuditEntry {
    let last_reason = r
        .entry
        .reason
        .as_deref()
        .map(|why| format!(" last_reason={why}"))
        .unwrap_or_default();
    AuditEntry {
        time: r.last.clone(),
        actor_uid: r.entry.actor_uid,
        actor_name: r.entry.actor_name,
        caller_pid: r.entry.caller_pid,
        action: COALESCED,
        run_id: k.run_id,
        reason: Some(format!(
            "count={} action={} first={} last={}{last_reason}",
            r.count,
            k.action.as_ref().map_or("*", AuditAction::as_str),
            r.first,
            r.last
        )),
        mode: r.entry.mode,
        decision: r.entry.decision,
        permission: r.entry.permission,
        outcome: r.entry.outcome,
        sections: None,
        duration_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(uid: u32, run: &str, reason: &str) -> AuditEntry {
        AuditEntry {
            time: "t".into(),
            actor_uid: Some(uid),
            actor_name: format!("u{uid}"),
            action: AuditAction::Kill,
            run_id: Some(run.into()),
            reason: Some(reason.into()),
            decision: Decision::Denied,
            outcome: "denied".into(),
            ..Default::default()
        }
    }

    #[test]
    fn repeats_are_counted_and_summed_up_once_a_window() {
        let mut d = Denials::default();
        let t0 = Instant::now();
        let long = "x".repeat(1024);
        let first = d.admit(denied(7, "r1", &long), true, t0).unwrap();
        assert!(first.reason.unwrap().len() < 300);
        for _ in 0..99 {
            assert!(d.admit(denied(7, "r1", &long), true, t0).is_none());
        }
        assert!(d.expire(t0, WINDOW, true, false).is_empty());
        let out = d.expire(t0 + WINDOW, WINDOW, true, false);
        assert_eq!(out.len(), 1);
        assert!(
            out[0]
                .reason
                .as_deref()
                .unwrap()
                .starts_with("count=99 action=kill")
        );
        assert_eq!(out[0].action, COALESCED);
        // A new window writes the first again.
        assert!(d.admit(denied(7, "r1", "x"), true, t0 + WINDOW).is_some());
    }

    #[test]
    fn many_targets_share_one_key_past_the_cap_and_nothing_is_written_without_room() {
        let mut d = Denials::default();
        let t0 = Instant::now();
        let written = (0..100)
            .filter(|i| d.admit(denied(7, &format!("r{i}"), ""), true, t0).is_some())
            .count();
        assert_eq!(written, MAX_KEYS);
        assert!(d.admit(denied(8, "r", ""), false, t0).is_none());
        assert!(d.expire(t0 + WINDOW, WINDOW, false, false).is_empty());
        let out = d.expire(t0 + WINDOW, WINDOW, true, false);
        let counts: u64 = out
            .iter()
            .map(|e| {
                let r = e.reason.as_deref().unwrap();
                r["count=".len()..r.find(' ').unwrap()]
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(counts, 100 - MAX_KEYS as u64 + 1);
    }

    #[test]
    fn caps_cut_at_a_character_boundary() {
        assert_eq!(cap("abc", 3), "abc");
        assert!(cap(&"é".repeat(200), 255).starts_with(&"é".repeat(127)));
    }
}
