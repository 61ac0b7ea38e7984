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
//! The progress rule: a run makes progress when something new happens, not
//! when it only does again what it did before. Between two samples, progress is
//! - a line of output unlike its recent ones ([`crate::novelty`]: a line that
//!   repeats an earlier one with only numbers, times, ids or durations changed,
//!   as a retry or a countdown does, is not new), reported by the supervisor;
//! - a process started with a command line unlike those the run started before
//!   (normalized the same way: `sleep 3` after `sleep 1` is not new);
//! - at least [`MIN_IO_PROGRESS`] read or written by its processes (`rchar` +
//!   `wchar` of `/proc/<pid>/io`, files, pipes and sockets, counted for the
//!   processes alive at both samples); while the run's newest line of output
//!   repeats an earlier one (a retry loop), only bytes written count: a program
//!   retrying reads its configuration and certificates again for each attempt
//!   (codex reads about 1 MB per reconnect), and what it reads it does not keep;
//!   a download or a job that reports only a counter writes what it gets;
//! - CPU time its payload wanted (used, `cpu.stat` `usage_usec`, plus waited
//!   for while runnable, `cpu.pressure` `some total`) of at least a quarter of
//!   the time between the samples ([`CPU_SHARE`]): a program computing wants a
//!   core, and on a busy host gets a little of it and waits for the rest; one
//!   waiting between retries uses a few percent in bursts and waits for nothing.
//!
//! A run without progress for the stall timeout is killed. Samples come every
//! quarter of the timeout (250 ms to 60 s), so a stall is found between 1 and
//! 1.25 stall timeouts after the last progress. A run whose newest line repeats
//! an earlier one (3 times or more) and which made no progress for two samples
//! (a minute without a stall timeout) is flagged `retrying: LINE, N times in M`
//! ([`Agent::retrying`]), which makes it stuck for every reader.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Agent;
use super::monitor::Kind;
use super::notify::Repeat;
use super::time::rfc3339;
use super::watch::{Progress, Retry, RunWatch, Stall};
use crate::api::RunStatus;
use crate::novelty::{Recent, Seen, normalize};
use crate::procfs::{self, IoBytes};
use crate::store::RunRecord;
use crate::template::{Ready, Template};

/// How often the ready port is looked for while the run initializes.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// The least CPU time between two samples that counts as progress, and the
/// least share of the time between them.
const MIN_CPU_PROGRESS: Duration = Duration::from_millis(10);
const CPU_SHARE: u32 = 4;
/// The least bytes read and written between two samples that count as progress
/// (only written while the run's newest line is a repeat).
pub const MIN_IO_PROGRESS: u64 = 64 * 1024;
/// Processes whose I/O is read per sample, and new ones whose command line is.
const MAX_IO_PIDS: usize = 512;
const MAX_NEW_PIDS: usize = 256;
/// Distinct command lines remembered per run.
const RECENT_COMMANDS: usize = 256;
/// Samples per stall timeout, and their bounds.
const SAMPLES_PER_STALL: u32 = 4;
const MIN_SAMPLE_EVERY: Duration = Duration::from_millis(250);
const MAX_SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// What a sample read of a run, outside the lock.
struct Sample {
    cpu: Option<u64>,
    io: HashMap<i32, IoBytes>,
    /// Normalized command lines of processes not in the last sample.
    new_commands: Vec<String>,
}

/// How often a run with this stall timeout is sampled.
pub fn sample_every(stall: Duration) -> Duration {
    (stall / SAMPLES_PER_STALL).clamp(MIN_SAMPLE_EVERY, MAX_SAMPLE_EVERY)
}

/// Whether CPU time `used` over `elapsed` counts as progress.
pub fn cpu_progress(used: Duration, elapsed: Duration) -> bool {
    used >= MIN_CPU_PROGRESS.max(elapsed / CPU_SHARE)
}

/// The bytes the processes alive at both samples read and wrote between them.
fn io_between(before: &HashMap<i32, IoBytes>, now: &HashMap<i32, IoBytes>) -> IoBytes {
    let mut sum = IoBytes::default();
    for (pid, n) in now {
        if let Some(b) = before.get(pid) {
            sum.read = sum.read.saturating_add(n.read.saturating_sub(b.read));
            sum.written = sum
                .written
                .saturating_add(n.written.saturating_sub(b.written));
        }
    }
    sum
}

/// Whether I/O between two samples counts as progress: bytes read and written,
/// or only written while the run is retrying (its newest line is a repeat).
fn io_progress(io: IoBytes, retrying: bool) -> bool {
    let counted = if retrying {
        io.written
    } else {
        io.read.saturating_add(io.written)
    };
    counted >= MIN_IO_PROGRESS
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
            cpu_usec: cg
                .as_ref()
                .and_then(|c| super::layout::payload(c).cpu_wanted_usec()),
            io: HashMap::new(),
            commands: Recent::new(RECENT_COMMANDS),
            sampled: now,
        });
        let every = stall.as_ref().map(|s| s.every);
        // The watch first, then the timers: a probe due at once may fire on the
        // monitor's thread before this returns, and finds the watch to act on
        // (and re-arm from).
        self.watch.watches().insert(
            rec.run_id.clone(),
            RunWatch {
                output_seen: false,
                output_timeout: t.output,
                stall,
                port,
                last_progress: now,
                kind: Progress::Start,
                retry: None,
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
        self.watch.watches().remove(run_id);
    }

    /// The supervisor saw the run write output: the first-output deadline is
    /// met. A new line is progress and ends a retry streak; a repeated line
    /// (after the new ones of the same report) begins or continues one.
    pub(super) fn saw_output(&self, run_id: &str, new_line: bool, repeat: Option<Repeat>) {
        let first = {
            let mut watches = self.watch.watches();
            let Some(w) = watches.get_mut(run_id) else {
                return;
            };
            let now = Instant::now();
            if new_line {
                (w.last_progress, w.kind) = (now, Progress::Output);
                w.retry = None;
            }
            if let Some(repeat) = repeat {
                w.retry = Some(Retry { repeat, at: now });
            }
            !std::mem::replace(&mut w.output_seen, true)
        };
        if first && let Some(m) = self.monitor() {
            m.set(run_id, Kind::Output, None);
        }
    }

    /// `retrying: LINE, N times in M`, when the run's newest line has repeated
    /// an earlier one at least 3 times and nothing else new happened for two
    /// samples.
    pub(super) fn retrying(&self, run_id: &str) -> Option<String> {
        self.watch.watches().get(run_id)?.retrying()
    }

    /// A watched run's last progress (wall-clock time, kind) and its stall
    /// deadline (when it has a stall timeout).
    pub(super) fn progress_of(
        &self,
        run_id: &str,
    ) -> Option<(DateTime<Utc>, Progress, Option<DateTime<Utc>>)> {
        let watches = self.watch.watches();
        let w = watches.get(run_id)?;
        let now = Utc::now();
        let at = crate::bounds::earlier(now, w.last_progress.elapsed());
        let deadline = w
            .stall
            .as_ref()
            .map(|s| crate::bounds::later(at, s.timeout));
        Some((at, w.kind, deadline))
    }

    /// How many watched runs are flagged as retrying (for /metrics).
    pub(super) fn retrying_count(&self) -> u64 {
        let watches = self.watch.watches();
        watches.values().filter(|w| w.retrying().is_some()).count() as u64
    }

    /// The first-output deadline fired: why the run is to be killed, unless
    /// output came meanwhile.
    pub(super) fn output_overdue(&self, rec: &RunRecord) -> Option<String> {
        let watches = self.watch.watches();
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
        // The payload leaf holds the command and all it starts; the supervisor
        // (which copies output) is not counted: output is judged by its lines.
        let payload = super::layout::payload(&cg);
        let pids = payload.procs().unwrap_or_default();
        let known: Vec<i32> = {
            let watches = self.watch.watches();
            let s = watches.get(run_id)?.stall.as_ref()?;
            s.io.keys().copied().collect()
        };
        let sample = self.read_sample(&payload, &pids, &known);
        let now = Instant::now();
        let mut watches = self.watch.watches();
        let w = watches.get_mut(run_id)?;
        let retrying = w.retry.is_some();
        let s = w.stall.as_mut()?;
        let used = match (s.cpu_usec, sample.cpu) {
            (Some(a), Some(b)) => Duration::from_micros(b.saturating_sub(a)),
            _ => Duration::ZERO,
        };
        // Every command line is noted (not only up to the first new one).
        let mut new_command = false;
        for c in &sample.new_commands {
            new_command |= s.commands.see(c) == Seen::New;
        }
        let found = if new_command {
            Some(Progress::Process)
        } else if io_progress(io_between(&s.io, &sample.io), retrying) {
            Some(Progress::Io)
        } else if cpu_progress(used, now.duration_since(s.sampled)) {
            Some(Progress::Cpu)
        } else {
            None
        };
        (s.cpu_usec, s.io, s.sampled) = (sample.cpu, sample.io, now);
        let (timeout, every) = (s.timeout, s.every);
        if let Some(kind) = found {
            (w.last_progress, w.kind) = (now, kind);
        }
        let idle = now.duration_since(w.last_progress);
        if idle >= timeout {
            let since = crate::bounds::earlier(Utc::now(), idle);
            let retrying = w.retrying().map(|r| format!("; {r}")).unwrap_or_default();
            return Some(format!(
                "stalled: no progress (new output, new processes, I/O, CPU) for {} (since {}){retrying}",
                crate::duration::format(timeout),
                rfc3339(since)
            ));
        }
        let next = every.min(timeout - idle);
        drop(watches);
        if let Some(m) = self.monitor() {
            let at = crate::bounds::later(Utc::now(), next);
            m.set(run_id, Kind::Stall, Some(at));
        }
        None
    }

    /// Reads a run's sample: its payload's CPU time, its processes' I/O (at
    /// most [`MAX_IO_PIDS`]) and the command lines of those not `known` from
    /// the last sample (at most [`MAX_NEW_PIDS`]).
    fn read_sample(&self, payload: &crate::cgroup::Cgroup, pids: &[i32], known: &[i32]) -> Sample {
        let root = &self.cfg.proc_root;
        let known: std::collections::HashSet<i32> = known.iter().copied().collect();
        let mut io = HashMap::new();
        let mut new_commands = Vec::new();
        for &pid in pids.iter().take(MAX_IO_PIDS) {
            if let Some(n) = procfs::io_bytes(root, pid) {
                io.insert(pid, n);
            }
            if !known.contains(&pid)
                && new_commands.len() < MAX_NEW_PIDS
                && let Some(cmd) = procfs::cmdline(root, pid)
            {
                new_commands.push(normalize(&cmd));
            }
        }
        Sample {
            cpu: payload.cpu_wanted_usec(),
            io,
            new_commands,
        }
    }

    /// Looks for a process of the initializing run listening on its ready port.
    /// Cleared when the run becomes ready; `became_ready` acts only on an
    /// initializing run.
    pub(super) fn probe_port(&self, run_id: &str) {
        let Some(port) = self.watch.watches().get(run_id).and_then(|w| w.port) else {
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
        assert!(!cpu_progress(ms(9), ms(20)));
        // A quarter of the time between samples, at least 10 ms: bursts of a
        // program waiting between retries (3% of a core) are not progress.
        assert!(!cpu_progress(ms(180), ms(750)));
        assert!(cpu_progress(ms(190), ms(750)));
        assert!(!cpu_progress(s(2), s(60)));
        assert!(cpu_progress(s(15), s(60)));
        assert_eq!(sample_every(s(3)), ms(750));
        assert_eq!(sample_every(ms(100)), ms(250));
        assert_eq!(sample_every(s(3600)), s(60));
    }

    fn io(read: u64, written: u64) -> IoBytes {
        IoBytes { read, written }
    }

    #[test]
    fn io_counts_processes_alive_at_both_samples() {
        let before = HashMap::from([(1, io(100, 0)), (2, io(5000, 0))]);
        // 2 ended, 3 is new (its bytes so far are not counted), 1 read 70000
        // and wrote 10.
        let now = HashMap::from([(1, io(70_100, 10)), (3, io(1 << 30, 1 << 30))]);
        assert_eq!(io_between(&before, &now), io(70_000, 10));
        // A counter that went back (a reused pid) counts nothing.
        assert_eq!(
            io_between(
                &HashMap::from([(1, io(9, 9))]),
                &HashMap::from([(1, io(3, 3))])
            ),
            io(0, 0)
        );
    }

    #[test]
    fn a_retrying_run_makes_progress_only_by_writing() {
        // codex reconnecting: about 1.1 MB read (its certificates, again) and
        // 1.5 kB written per attempt.
        let reconnect = io(1_100_000, 1_500);
        assert!(io_progress(reconnect, false));
        assert!(!io_progress(reconnect, true));
        // A download with a progress meter writes what it reads.
        assert!(io_progress(io(1 << 20, 1 << 20), true));
        assert!(!io_progress(io(MIN_IO_PROGRESS - 1, 0), false));
        assert!(io_progress(
            io(MIN_IO_PROGRESS / 2, MIN_IO_PROGRESS / 2),
            false
        ));
    }
}
