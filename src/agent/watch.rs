//! The watch wing: what the agent watches of live runs, and nothing else. The
//! deadlines' monitor, the thread that reads every run's notify socket and the
//! queue of its phase messages, what each live run's watch keeps in memory
//! (its cgroup, template and ceiling, its newest heartbeat, its restart-loop
//! samples, its output, stall and port watches), the runs killed as stuck, the
//! reaper that sees a run's cgroup empty, and the agent's own stop. The
//! operations that use it are `lifecycle.rs` (with `lifecycle/deadlines.rs`),
//! `stalls_and_probes.rs`, `breaker.rs` and `run_end.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use super::monitor::Monitor;
use super::notify::Repeat;
use super::notify_hub::Hub;
use super::phase_queue::PhaseQueue;
use super::reaper::Reaper;
use super::sender_in_run;
use crate::bounds;
use crate::cgroup::Cgroup;
use crate::novelty::Recent;
use crate::procfs::IoBytes;

/// Repeats of one line before a run is flagged as retrying …
const RETRY_FLAG_AT: u64 = 3;
/// … with no progress for this long when it has no stall timeout (else for two samples).
const RETRY_IDLE: Duration = Duration::from_secs(60);
/// The operator's values for a run's deadlines, which EXTEND_TIMEOUT_USEC,
/// `wfcg notify --extend` and WATCHDOG_USEC may move a deadline up to, never
/// past: the timeouts of the template the operator gave the run (the named or
/// workflow's template, the agent's default, or a template text root sent)
/// before the caller's own shortening (`--init-timeout`, `--timeout`,
/// `--watchdog`, a user's template text); root's flags may widen it. Zero: the
/// operator set no such limit (then [`bounds::MAX`] caps).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ceiling {
    pub init: Duration,
    pub total: Duration,
    /// The heartbeat interval; the threshold is twice it.
    pub watchdog: Duration,
}

impl Ceiling {
    /// A template's timeouts as the ceiling.
    pub fn of(t: &crate::template::Template) -> Ceiling {
        Ceiling {
            init: t.timeouts.init,
            total: t.timeouts.total,
            watchdog: t.timeouts.watchdog,
        }
    }

    /// Each limit the longer of the two (zero, no limit, is the longest).
    pub(in crate::agent) fn wider(self, other: Ceiling) -> Ceiling {
        let wider = |a: Duration, b: Duration| {
            if a.is_zero() || b.is_zero() {
                Duration::ZERO
            } else {
                a.max(b)
            }
        };
        Ceiling {
            init: wider(self.init, other.init),
            total: wider(self.total, other.total),
            watchdog: wider(self.watchdog, other.watchdog),
        }
    }

    /// The longest heartbeat threshold (WATCHDOG_USEC) a run may set.
    pub fn watchdog_threshold(&self) -> Duration {
        if self.watchdog.is_zero() {
            bounds::MAX
        } else {
            bounds::clamp(self.watchdog.saturating_mul(2))
        }
    }

    /// The latest a deadline of `span` (init or total) may be, for a run started at
    /// `start`; none when the operator set no such limit.
    pub fn latest(span: Duration, start: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        (!span.is_zero())
            .then(|| start.map(|s| bounds::later(s, span)))
            .flatten()
    }
}

/// What the agent keeps in memory about a live run.
pub(super) struct Live {
    pub(super) cg: Cgroup,
    pub(super) template: Arc<crate::template::Template>,
    /// The operator's values, which nothing the run sends goes past.
    pub(super) ceiling: Ceiling,
    /// How long after a heartbeat the next must come (2 intervals, or
    /// WATCHDOG_USEC up to the operator's threshold).
    pub(super) threshold: Option<Duration>,
    /// Its notify socket's key in the notify hub.
    pub(super) notify_key: Option<u64>,
    /// The ids of its cgroups, for the sender check (sender.rs).
    pub(super) cgroup_ids: sender_in_run::RunCgroupIds,
    /// Its supervisor (pid and start time), whose messages are taken from
    /// outside the run too: a root `wfcg run` lives beside its run.
    pub(super) supervisor: Option<crate::procfs::Identity>,
    /// Messages from outside the run dropped: when the current log window began,
    /// lines logged in it, and drops not logged since the last line.
    pub(super) dropped: (Option<Instant>, u32, u64),
}

/// A run's newest heartbeat, until it is written to the store.
#[derive(Clone, Copy)]
pub(super) struct Beat {
    pub(super) at: DateTime<Utc>,
    /// The watchdog deadline it set (none without a threshold).
    pub(super) deadline: Option<DateTime<Utc>>,
    pub(super) usec: Option<i64>,
}

/// Starts of command lines seen in an initializing run.
#[derive(Default)]
pub(super) struct LoopTracker {
    /// Processes seen in the last sample, with their command lines.
    pub(super) seen: HashMap<i32, Option<String>>,
    /// Instances of each command line seen to exit and not started again yet.
    pub(super) exited: HashMap<String, usize>,
    /// Restarts of each command line: a start after an earlier instance exited
    /// (so a fan-out of many at once is not a loop).
    pub(super) starts: HashMap<String, VecDeque<Instant>>,
    /// The run's current sampling period, and when it is next sampled.
    pub(super) every: Duration,
    pub(super) next: Option<Instant>,
}

/// What the agent watches of live runs.
pub(super) struct Watch {
    pub(super) monitor: OnceLock<Monitor>,
    /// The thread that reads every run's notify socket.
    pub(super) hub: OnceLock<Hub>,
    /// READY, STATUS, STOPPING and EXTEND_TIMEOUT_USEC, each run's in the order
    /// received, to the thread that writes them to the store (the notify thread
    /// never waits on the store: a heartbeat is never held up behind a write).
    /// Bounded per run and served run by run (phase_queue.rs): one run's flood
    /// never holds up another's READY.
    pub(super) phases: Arc<PhaseQueue>,
    pub(super) lives: Mutex<HashMap<String, Live>>,
    pub(super) beats: Mutex<HashMap<String, Beat>>,
    pub(super) loops: Mutex<HashMap<String, LoopTracker>>,
    /// Output, stall and port watches (progress.rs).
    pub(super) watches: Mutex<HashMap<String, RunWatch>>,
    /// Runs being killed as stuck, with why, until their end is counted (breaker.rs).
    pub(super) stuck_ends: Mutex<HashMap<String, String>>,
    /// Sees each run's cgroup empty (inotify on `cgroup.events`).
    pub(super) reaper: Reaper,
    /// Notified when root asked the agent to stop.
    pub(super) stop: tokio::sync::Notify,
}

impl Watch {
    pub(super) fn watches(&self) -> parking_lot::MutexGuard<'_, HashMap<String, RunWatch>> {
        self.watches.lock()
    }

    pub(super) fn stuck_ends(&self) -> parking_lot::MutexGuard<'_, HashMap<String, String>> {
        self.stuck_ends.lock()
    }
}

/// What the agent watches of one run without sd_notify.
pub(super) struct RunWatch {
    pub(super) output_seen: bool,
    /// The first-output timeout (zero: none).
    pub(super) output_timeout: Duration,
    pub(super) stall: Option<Stall>,
    pub(super) port: Option<u16>,
    /// The last progress seen, and of what kind.
    pub(super) last_progress: Instant,
    pub(super) kind: Progress,
    /// The newest line of output, while it repeats an earlier one.
    pub(super) retry: Option<Retry>,
}

/// What the last progress of a run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// None yet: the time is when the watch began.
    Start,
    /// A new line of output.
    Output,
    /// A process with a new command line.
    Process,
    /// Bytes read or written.
    Io,
    /// CPU time.
    Cpu,
}

impl Progress {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Progress::Start => "start",
            Progress::Output => "output",
            Progress::Process => "process",
            Progress::Io => "io",
            Progress::Cpu => "cpu",
        }
    }
}

pub(super) struct Retry {
    pub(super) repeat: Repeat,
    /// When the newest report of it came.
    pub(super) at: Instant,
}

impl RunWatch {
    /// The retry flag's text, when the run is retrying (see the module's doc).
    pub(super) fn retrying(&self) -> Option<String> {
        let r = self
            .retry
            .as_ref()
            .filter(|r| r.repeat.count >= RETRY_FLAG_AT)?;
        let idle = self.stall.as_ref().map_or(RETRY_IDLE, |s| 2 * s.every);
        (self.last_progress.elapsed() >= idle).then(|| r.text())
    }
}

impl Retry {
    pub(super) fn text(&self) -> String {
        let secs = self.repeat.secs + self.at.elapsed().as_secs();
        let span = if secs < 60 {
            format!("{secs}s")
        } else {
            format!("{} min", secs / 60)
        };
        format!(
            "retrying: {}, {} times in {span}",
            self.repeat.line, self.repeat.count
        )
    }
}

pub(super) struct Stall {
    pub(super) timeout: Duration,
    pub(super) every: Duration,
    /// The last sample: the payload's CPU time, its processes' I/O bytes, and when.
    pub(super) cpu_usec: Option<u64>,
    pub(super) io: HashMap<i32, IoBytes>,
    /// The command lines its processes were started with (normalized).
    pub(super) commands: Recent,
    pub(super) sampled: Instant,
}

impl Watch {
    /// Nothing watched yet; runs' ends seen by `reaper`.
    pub(super) fn new(reaper: Reaper) -> Watch {
        Watch {
            monitor: OnceLock::new(),
            hub: OnceLock::new(),
            phases: Arc::default(),
            lives: Mutex::default(),
            beats: Mutex::default(),
            loops: Mutex::default(),
            watches: Mutex::default(),
            stuck_ends: Mutex::default(),
            reaper,
            stop: tokio::sync::Notify::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_watch_watches_nothing_and_forgets_what_it_is_told_to() {
        let watch = Watch::new(Reaper::new().unwrap());
        assert_eq!(watch.reaper.len(), 0);
        assert!(watch.monitor.get().is_none() && watch.hub.get().is_none());
        assert!(watch.lives.lock().is_empty() && watch.beats.lock().is_empty());
        watch.stuck_ends().insert("run_a".into(), "stalled".into());
        assert_eq!(
            watch.stuck_ends().remove("run_a").as_deref(),
            Some("stalled")
        );
        assert!(watch.watches().is_empty());
    }

    #[test]
    fn a_ceiling_widens_to_the_longer_limit_and_zero_is_none() {
        let s = Duration::from_secs;
        let a = Ceiling {
            init: s(10),
            total: s(100),
            watchdog: Duration::ZERO,
        };
        let b = Ceiling {
            init: s(20),
            total: s(50),
            watchdog: s(5),
        };
        assert_eq!(
            a.wider(b),
            Ceiling {
                init: s(20),
                total: s(100),
                watchdog: Duration::ZERO,
            }
        );
        assert_eq!(b.watchdog_threshold(), s(10));
        assert_eq!(a.watchdog_threshold(), bounds::MAX);
        assert_eq!(Ceiling::latest(Duration::ZERO, Some(Utc::now())), None);
    }
}
