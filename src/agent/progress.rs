//! Stuck detection for programs that never speak sd_notify: readiness from a
//! TCP listener (`ready = "port:N"`), the first-output deadline
//! (`--output-timeout`) and the no-progress watchdog (`--stall-timeout`).
//!
//! Everything runs on the monitor's deadline queue, one timer per run and kind:
//! a run is sampled only when its own timer fires, never in a scan of all runs.
//! Output is reported by the run's supervisor through the notify socket
//! (`X_WFCG_OUTPUT=1`, at most once a second); readiness from output, a log line
//! or a file is decided by the supervisor too, which sends READY=1.
//!
//! The progress rule: between two samples the run made progress when its
//! cgroup's CPU time (`cpu.stat` `usage_usec`, present without controllers) grew
//! by at least 1% of the time between them (and at least 10 ms, so idle polling
//! does not count), when the set of its processes changed (one started or
//! ended), or when it wrote output. A run without progress for the stall
//! timeout is killed. Samples come every quarter of the timeout (250 ms to 60 s),
//! so a stall is found between 1 and 1.25 stall timeouts after the last progress.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::Agent;
use super::monitor::Kind;
use super::time::rfc3339;
use crate::api::RunStatus;
use crate::procfs;
use crate::store::RunRecord;
use crate::template::{Ready, Template};

/// How often the ready port is looked for while the run initializes.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// The least CPU time between two samples that counts as progress.
const MIN_CPU_PROGRESS: Duration = Duration::from_millis(10);
/// Samples per stall timeout, and their bounds.
const SAMPLES_PER_STALL: u32 = 4;
const MIN_SAMPLE_EVERY: Duration = Duration::from_millis(250);
const MAX_SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// What the agent watches of one run without sd_notify.
#[derive(Default)]
pub(super) struct RunWatch {
    output_seen: bool,
    /// The first-output timeout (zero: none).
    output_timeout: Duration,
    stall: Option<Stall>,
    port: Option<u16>,
}

struct Stall {
    timeout: Duration,
    every: Duration,
    /// The last sample: CPU time, a hash of the process set, and when.
    cpu_usec: Option<u64>,
    procs: u64,
    sampled: Instant,
    last_progress: Instant,
}

fn procs_hash(mut pids: Vec<i32>) -> u64 {
    pids.sort_unstable();
    let mut h = DefaultHasher::new();
    pids.hash(&mut h);
    h.finish()
}

/// How often a run with this stall timeout is sampled.
pub fn sample_every(stall: Duration) -> Duration {
    (stall / SAMPLES_PER_STALL).clamp(MIN_SAMPLE_EVERY, MAX_SAMPLE_EVERY)
}

/// Whether CPU time `used` over `elapsed` counts as progress.
pub fn cpu_progress(used: Duration, elapsed: Duration) -> bool {
    used >= MIN_CPU_PROGRESS.max(elapsed / 100)
}

/// What a run's supervisor watches for the agent: output when a template or
/// option needs it (the command's stdout and stderr then become pipes; in the
/// foreground only for readiness on output or a log line and the first-output
/// deadline, so that a stall timeout alone leaves the terminal alone), and the
/// ready conditions it checks itself (as the run's owner).
pub fn watch_for(template: &Template, detach: bool) -> crate::api::Watch {
    let ready = &template.run.ready;
    let t = &template.timeouts;
    let mut w = crate::api::Watch::default();
    // Without an init timeout there is no initialization to end: no pipes for it.
    if template.run.waits() && !t.init.is_zero() {
        for r in ready {
            match r {
                Ready::Output => w.ready_on_output = true,
                Ready::Log(re) if w.ready_on_log.is_none() => w.ready_on_log = Some(re.clone()),
                Ready::File(p) if w.ready_on_file.is_none() => w.ready_on_file = Some(p.clone()),
                _ => {}
            }
        }
    }
    w.output = !t.output.is_zero()
        || (detach && !t.stall.is_zero())
        || w.ready_on_output
        || w.ready_on_log.is_some();
    w
}

impl Agent {
    /// `--ready-when`, `--stall-timeout` and `--output-timeout` over the template:
    /// a user may shorten the operator's timeouts, not lengthen or remove them.
    pub(super) fn apply_run_options(
        &self,
        caller: &super::Caller,
        req: &crate::api::CreateRun,
        template: &mut Template,
    ) -> super::Result<()> {
        let bad = |e: String| super::Failure::new(crate::api::ErrorKind::BadInput, e);
        for (flag, value, slot) in [
            (
                "stall timeout",
                req.stall_timeout_ms,
                &mut template.timeouts.stall,
            ),
            (
                "output timeout",
                req.output_timeout_ms,
                &mut template.timeouts.output,
            ),
        ] {
            let Some(v) = value else { continue };
            let v = Duration::from_millis(v);
            if !caller.is_root() {
                crate::template::no_longer(flag, v, *slot, true).map_err(|e| bad(e.to_string()))?;
            }
            *slot = v;
        }
        if let Some(conds) = &req.ready_when {
            if conds.is_empty() || conds.len() > 8 {
                return Err(bad("ready_when: give 1 to 8 conditions".into()));
            }
            template.run.ready = conds
                .iter()
                .map(|c| Ready::parse(c))
                .collect::<Result<_, _>>()
                .map_err(bad)?;
        }
        Ok(())
    }

    /// Takes a run's output deadline, stall sampling and port probe under watch.
    /// A restarted agent samples from its restart and drops first-output
    /// deadlines (it cannot know whether output came while it was away).
    pub(super) fn progress_begin(&self, rec: &RunRecord, template: &Template, restarted: bool) {
        let t = &template.timeouts;
        let port = template.run.port();
        let initializing = rec.status == RunStatus::Initializing;
        if t.stall.is_zero() && (t.output.is_zero() || restarted) && port.is_none() {
            return;
        }
        let now = Instant::now();
        let cg = self.live_cgroup(&rec.run_id);
        let stall = (!t.stall.is_zero()).then(|| Stall {
            timeout: t.stall,
            every: sample_every(t.stall),
            cpu_usec: cg.as_ref().and_then(|c| c.cpu_usage_usec()),
            procs: 0,
            sampled: now,
            last_progress: now,
        });
        let every = stall.as_ref().map(|s| s.every);
        // The watch first, then the timers: a probe due at once may fire on the
        // monitor's thread before this returns, and finds the watch to act on
        // (and re-arm from).
        self.life.watches().insert(
            rec.run_id.clone(),
            RunWatch {
                output_seen: false,
                output_timeout: t.output,
                stall,
                port,
            },
        );
        let Some(m) = self.monitor() else { return };
        let after = |d: Duration| Some(crate::bounds::later(Utc::now(), d));
        if let Some(every) = every {
            m.set(&rec.run_id, Kind::Stall, after(every));
        }
        if !t.output.is_zero() && !restarted {
            m.set(&rec.run_id, Kind::Output, after(t.output));
        }
        if port.is_some() && initializing {
            m.set(&rec.run_id, Kind::Probe, after(Duration::ZERO));
        }
    }

    pub(super) fn progress_end(&self, run_id: &str) {
        self.life.watches().remove(run_id);
    }

    /// The supervisor saw the run write output: the first-output deadline is
    /// met, and it is progress.
    pub(super) fn saw_output(&self, run_id: &str) {
        let first = {
            let mut watches = self.life.watches();
            let Some(w) = watches.get_mut(run_id) else {
                return;
            };
            if let Some(s) = &mut w.stall {
                s.last_progress = Instant::now();
            }
            !std::mem::replace(&mut w.output_seen, true)
        };
        if first && let Some(m) = self.monitor() {
            m.set(run_id, Kind::Output, None);
        }
    }

    /// The first-output deadline fired: why the run is to be killed, unless
    /// output came meanwhile.
    pub(super) fn output_overdue(&self, rec: &RunRecord) -> Option<String> {
        let watches = self.life.watches();
        let w = watches.get(&rec.run_id)?;
        (!w.output_seen).then(|| {
            format!(
                "no output within {}: started at {}, nothing written to stdout or stderr",
                crate::duration::format(w.output_timeout),
                rec.started_at.map_or("?".into(), rfc3339)
            )
        })
    }

    /// One stall sample: why the run is to be killed when it stalled; otherwise
    /// the next sample is set.
    pub(super) fn sample_stall(&self, run_id: &str) -> Option<String> {
        let cg = self.live_cgroup(run_id)?;
        // Read before the lock: the run's CPU time (its supervisor's included:
        // it spends some only copying output, which is progress anyway) and the
        // processes of its payload leaf (where the command and all it starts live).
        let cpu = cg.cpu_usage_usec();
        let pids = super::layout::payload(&cg).procs().unwrap_or_default();
        let procs = procs_hash(pids);
        let now = Instant::now();
        let mut watches = self.life.watches();
        let s = watches.get_mut(run_id)?.stall.as_mut()?;
        let used = match (s.cpu_usec, cpu) {
            (Some(a), Some(b)) => Duration::from_micros(b.saturating_sub(a)),
            _ => Duration::ZERO,
        };
        if cpu_progress(used, now.duration_since(s.sampled)) || procs != s.procs {
            s.last_progress = now;
        }
        (s.cpu_usec, s.procs, s.sampled) = (cpu, procs, now);
        let idle = now.duration_since(s.last_progress);
        if idle >= s.timeout {
            let since = crate::bounds::earlier(Utc::now(), idle);
            return Some(format!(
                "stalled: no progress (CPU time, processes, output) for {} (since {})",
                crate::duration::format(s.timeout),
                rfc3339(since)
            ));
        }
        let next = s.every.min(s.timeout - idle);
        drop(watches);
        if let Some(m) = self.monitor() {
            let at = crate::bounds::later(Utc::now(), next);
            m.set(run_id, Kind::Stall, Some(at));
        }
        None
    }

    /// Looks for a process of the initializing run listening on its ready port.
    /// Cleared when the run becomes ready; `became_ready` acts only on an
    /// initializing run.
    pub(super) fn probe_port(&self, run_id: &str) {
        let Some(port) = self.life.watches().get(run_id).and_then(|w| w.port) else {
            return;
        };
        let Some(cg) = self.live_cgroup(run_id) else {
            return;
        };
        let pids = cg.procs_recursive().unwrap_or_default();
        let proc_root = &self.cfg.proc_root;
        let listening = pids.first().is_some_and(|&first| {
            let inodes = procfs::tcp_listeners(proc_root, first, port);
            !inodes.is_empty()
                && pids
                    .iter()
                    .any(|&pid| procfs::holds_socket(proc_root, pid, &inodes))
        });
        if listening {
            self.became_ready(run_id, Utc::now(), &format!("port:{port}"));
        } else if let Some(m) = self.monitor() {
            let at = crate::bounds::later(Utc::now(), PROBE_EVERY);
            m.set(run_id, Kind::Probe, Some(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_polling_is_not_progress_but_work_is() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // A poll every 100 ms at 50 µs each: 0.05% of a core.
        assert!(!cpu_progress(ms(5), s(10)));
        assert!(!cpu_progress(ms(9), ms(750)));
        assert!(cpu_progress(ms(10), ms(750)));
        // 1% of the time between samples, at least 10 ms.
        assert!(!cpu_progress(ms(500), s(60)));
        assert!(cpu_progress(ms(600), s(60)));
        assert_eq!(sample_every(s(3)), ms(750));
        assert_eq!(sample_every(ms(100)), ms(250));
        assert_eq!(sample_every(s(3600)), s(60));
    }

    #[test]
    fn the_process_set_hash_ignores_order() {
        assert_eq!(procs_hash(vec![3, 1, 2]), procs_hash(vec![1, 2, 3]));
        assert_ne!(procs_hash(vec![1, 2]), procs_hash(vec![1, 2, 4]));
    }
}
