//! The kills wing: what the agent keeps about kills, and nothing else. The kill
//! sequence under way per run (concurrent kills of one run wait on it), the
//! critical sections each run was last seen holding (`status`), the git locks
//! that processes of an ended run held, and who created each git lock
//! (fanotify). The operations that use it are `kill_run.rs`,
//! `kill_and_record.rs`, `cleanup.rs`, `run_end.rs` and `queries.rs`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::api::{AuditAction, KillResult, RunStatus};
use crate::cgroup::Cgroup;
use crate::lockwatch::LockWatch;
use crate::sections::Finding;

/// The audit action written before a kill acts.
pub(super) const KILL_START: AuditAction = AuditAction::KillStart;

/// The outcome of a [`KILL_START`] record: how the kill ends the run if it
/// succeeds, which a successor agent resumes it with. Stored as the words
/// records have always held, `started, ending as STATUS`, written and read
/// here only: [`KillStarted::parse`] reads every record [`fmt::Display`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KillStarted {
    pub ending: RunStatus,
}

impl KillStarted {
    const WORDS: &str = "started, ending as ";

    /// The record's outcome, if it is one of a kill's start.
    pub(super) fn parse(outcome: &str) -> Option<KillStarted> {
        let ending = RunStatus::parse(outcome.strip_prefix(Self::WORDS)?)?;
        Some(KillStarted { ending })
    }
}

impl fmt::Display for KillStarted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::WORDS, self.ending)
    }
}

/// A kill sequence under way; concurrent kills of the same run wait on it.
#[derive(Default)]
pub(super) struct KillSlot {
    /// How the run ends if the kill succeeds (`killed`, `timed_out`).
    pub(super) end: RunStatus,
    pub(super) result: Mutex<Option<KillResult>>,
    pub(super) done: Condvar,
    /// Set by a `--force` or `--emergency` request that finds this sequence under
    /// way: its waits end and it goes straight to the hard kill.
    pub(super) escalate: Arc<std::sync::atomic::AtomicBool>,
    /// Set by an `--emergency` request that finds it under way: the supervisor
    /// is not waited for either.
    pub(super) emergency: Arc<std::sync::atomic::AtomicBool>,
}

/// The critical sections a run was seen holding at the last look (`status`),
/// by (pid, path): what is reported as open when a force kill looks no more.
pub(super) type Sightings = HashMap<(i32, String), Sighting>;

/// A critical section seen open: first seen, and at the last look.
#[derive(Debug, Clone)]
pub(super) struct Sighting {
    pub(super) finding: Finding,
    pub(super) first: chrono::DateTime<chrono::Utc>,
    pub(super) last: chrono::DateTime<chrono::Utc>,
}

/// What the agent keeps about kills.
pub(super) struct Kills {
    /// The kill sequence under way per run. Lock order: `inflight`, then the
    /// store; never take `inflight` while holding the store.
    pub(super) inflight: Mutex<HashMap<String, Arc<KillSlot>>>,
    /// When each open critical section was first seen, per run, for `status`.
    pub(super) sightings: Mutex<HashMap<String, Sightings>>,
    /// Git locks that processes of an exited run held when they were killed,
    /// checked and removed once the run's cgroup is empty.
    pub(super) stale_candidates: Mutex<HashMap<String, Vec<Finding>>>,
    /// Who created each git lock (fanotify), or why that is not known.
    pub(super) lock_watch: Result<Arc<LockWatch>, String>,
}

impl Kills {
    /// No kill under way, nothing seen; git locks' creators from `lock_watch`.
    pub(super) fn new(lock_watch: Result<Arc<LockWatch>, String>) -> Kills {
        Kills {
            inflight: Mutex::default(),
            sightings: Mutex::default(),
            stale_candidates: Mutex::default(),
            lock_watch,
        }
    }

    /// Whether a kill sequence of the run is under way.
    pub(super) fn in_flight(&self, run_id: &str) -> bool {
        self.inflight.lock().contains_key(run_id)
    }

    /// How the kill under way of a run ends it, if one is under way.
    pub(super) fn ending(&self, run_id: &str) -> Option<RunStatus> {
        self.inflight.lock().get(run_id).map(|slot| slot.end)
    }

    /// The critical sections the run was last seen holding (by `status`), oldest first.
    pub(super) fn last_seen(&self, run_id: &str) -> Vec<Sighting> {
        let mut seen: Vec<Sighting> = self
            .sightings
            .lock()
            .get(run_id)
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        seen.sort_by(|a, b| {
            (a.first, a.finding.pid, &a.finding.path).cmp(&(
                b.first,
                b.finding.pid,
                &b.finding.path,
            ))
        });
        seen
    }
}

/// The watch of the agent whose runs live below `runs_cg`, reading events on
/// a thread of its own; why not, when it cannot be had.
pub(super) fn start_lock_watch(
    proc_root: &Path,
    runs_cg: &Cgroup,
) -> Result<Arc<LockWatch>, String> {
    let mount = crate::cgroup::cgroup2_mount().map_err(|e| e.to_string())?;
    let runs = runs_cg.path().to_path_buf();
    // A process's cgroup, as /proc/<pid>/cgroup names it: the run below runs/.
    let owner_of = Box::new(move |cg: &str| {
        mount
            .join(cg.trim_start_matches('/'))
            .strip_prefix(&runs)
            .ok()?
            .components()
            .next()?
            .as_os_str()
            .to_str()
            .map(str::to_owned)
    });
    let watch = Arc::new(LockWatch::new(proc_root, owner_of)?);
    watch
        .spawn()
        .map_err(|e| format!("cannot start its thread: {e}"))?;
    Ok(watch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SectionKind;
    use chrono::{TimeZone, Utc};

    fn kills() -> Kills {
        Kills::new(Err("not watched in this test".into()))
    }

    fn seen(pid: i32, path: &str, first: i64) -> Sighting {
        Sighting {
            finding: Finding {
                pid,
                kind: SectionKind::Git,
                path: path.into(),
                command: "git commit".into(),
                dev: 0,
                ino: 0,
            },
            first: Utc.timestamp_opt(first, 0).unwrap(),
            last: Utc.timestamp_opt(first + 5, 0).unwrap(),
        }
    }

    #[test]
    fn a_kill_in_flight_is_known_with_its_ending_until_its_slot_goes() {
        let kills = kills();
        assert!(!kills.in_flight("run_a"));
        assert_eq!(kills.ending("run_a"), None);
        let slot = Arc::new(KillSlot {
            end: RunStatus::TimedOut,
            ..Default::default()
        });
        kills.inflight.lock().insert("run_a".into(), slot);
        assert!(kills.in_flight("run_a"));
        assert!(!kills.in_flight("run_b"));
        assert_eq!(kills.ending("run_a"), Some(RunStatus::TimedOut));
        kills.inflight.lock().remove("run_a");
        assert!(!kills.in_flight("run_a"));
    }

    #[test]
    fn the_sections_last_seen_come_oldest_first_then_by_pid_and_path() {
        let kills = kills();
        assert!(kills.last_seen("run_a").is_empty());
        let mut sightings = Sightings::new();
        for s in [
            seen(7, "/w/.git/index.lock", 20),
            seen(9, "/w/b.lock", 10),
            seen(3, "/w/a.lock", 10),
        ] {
            sightings.insert((s.finding.pid, s.finding.path.clone()), s);
        }
        kills.sightings.lock().insert("run_a".into(), sightings);
        let order: Vec<i32> = kills
            .last_seen("run_a")
            .iter()
            .map(|s| s.finding.pid)
            .collect();
        assert_eq!(order, [3, 9, 7]);
        assert!(kills.last_seen("run_b").is_empty());
    }
}
