//! The life of a run once it has started: its notify socket (READY, WATCHDOG,
//! STATUS, STOPPING, EXTEND_TIMEOUT_USEC, WATCHDOG_USEC), its deadlines in the
//! monitor, heartbeats (kept in memory, written to the store every 5 s in one
//! transaction), the automatic kill of runs whose deadline passed, and the
//! hint that an initializing run restarts the same command again and again.
//! The deadlines themselves (set, passed, near) are in [`deadlines`].
//!
//! Values a run sends are bounded here before they are used (SECURITY.md,
//! "Bounded values"): WATCHDOG_USEC is at most the operator's heartbeat
//! threshold, EXTEND_TIMEOUT_USEC moves a deadline at most to the operator's
//! ([`super::watch::Ceiling`]), and every time sum is checked ([`crate::bounds`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Agent;
use super::monitor::{Kind, Monitor};
use super::notify::{self, Message};
use super::notify_hub::{Hub, OnDatagram};
use super::sender_in_run;
use super::watch::{Beat, Live, LoopTracker};
use crate::api::{READY_ON_FIRST_OUTPUT, RunStatus};
use crate::bounds;
use crate::cgroup::Cgroup;
use crate::procfs;
use crate::store::{RunRecord, TextCol, TimeCol};

mod deadlines;

pub(super) use super::watch::Ceiling;

/// How often heartbeats are written to the store (one transaction for all runs).
/// A restarted agent adds this to the stored watchdog deadlines, which may be
/// that much behind the last heartbeat.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often initializing runs are sampled for restart loops: every
/// `SAMPLE_EVERY` while new processes appear in a run, backing off to
/// `QUIET_SAMPLE_EVERY` while none do (a loop shows new processes; a thousand
/// quiet runs then cost a few dozen reads a second, not five hundred).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const QUIET_SAMPLE_EVERY: Duration = Duration::from_secs(16);
/// The loop hint: this many starts of one command line …
const LOOP_STARTS: usize = 5;
/// … within this window.
const LOOP_WINDOW: Duration = Duration::from_secs(60);

/// Log lines about messages from outside a run, at most this many a run per
/// [`DROPPED_LOG_WINDOW`]; further drops are only counted, and the count is in
/// the next line. Anyone may send to a notify socket: a flood must not grow the
/// agent's log (on the state filesystem when `wfcg run` started the agent).
const DROPPED_LOG_LINES: u32 = 8;
const DROPPED_LOG_WINDOW: Duration = Duration::from_secs(60);

impl Agent {
    /// Starts the monitor, the heartbeat writer and the loop sampler.
    pub(super) fn start_lifecycle(self: &Arc<Self>, rt: tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        let quick = weak.clone();
        let monitor = Monitor::start_with(
            &rt,
            // A stall sample that finds progress re-arms itself here, on the
            // queue's task; only a stalled run goes on to `on_deadline`.
            move |run_id, kind| {
                kind != Kind::Stall
                    || quick
                        .upgrade()
                        .is_some_and(|agent| agent.sample_stall(run_id).is_some())
            },
            move |run_id, kind| {
                if let Some(agent) = weak.upgrade() {
                    agent.on_deadline(&run_id, kind);
                }
            },
        );
        let _ = self.watch.monitor.set(monitor);
        let phases = self.watch.phases.clone();
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("wfcg-notify-phase".into())
            .spawn(move || {
                // Ends with the agent.
                loop {
                    let next = phases.pop(Duration::from_secs(1));
                    let Some(agent) = weak.upgrade() else { return };
                    if let Some((run_id, at, msg)) = next {
                        agent.on_phase_message(&run_id, at, &msg);
                    }
                }
            })
            .expect("spawning the notify phase thread");
        match Hub::new() {
            Ok(hub) => {
                hub.start(Arc::downgrade(self));
                let _ = self.watch.hub.set(hub);
            }
            Err(e) => tracing::error!("cannot read notify sockets (epoll): {e}"),
        }
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            let mut sample = tokio::time::interval(SAMPLE_EVERY);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let which = tokio::select! {
                    _ = flush.tick() => true,
                    _ = sample.tick() => false,
                };
                let Some(agent) = weak.upgrade() else { return };
                // Nothing to write or to sample: no thread to wake.
                let idle = if which {
                    agent.watch.beats.lock().is_empty()
                } else {
                    let now = Instant::now();
                    !agent
                        .watch
                        .loops
                        .lock()
                        .values()
                        .any(|t| t.next.is_none_or(|n| n <= now))
                };
                if idle {
                    continue;
                }
                let _ = tokio::task::spawn_blocking(move || {
                    if which {
                        agent.flush_heartbeats()
                    } else {
                        agent.sample_loops()
                    }
                })
                .await;
            }
        });
    }

    pub(super) fn monitor(&self) -> Option<&Monitor> {
        self.watch.monitor.get()
    }

    /// The cgroup of a run under watch.
    pub(super) fn live_cgroup(&self, run_id: &str) -> Option<Cgroup> {
        self.watch.lives.lock().get(run_id).map(|l| l.cg.clone())
    }

    /// A run's template, as stored with it (the agent's default for old records).
    pub(super) fn run_template(&self, rec: &RunRecord) -> Arc<crate::template::Template> {
        if let Some(live) = self.watch.lives.lock().get(&rec.run_id) {
            return live.template.clone();
        }
        Arc::new(self.stored_template(rec).template)
    }

    /// A run's template and the operator's ceiling, as stored with it; the
    /// agent's default (its own timeouts as the ceiling) for a record that has
    /// none. A stored template that does not read never gets here: the store
    /// refuses the whole record ([`crate::store::BadColumn`], naming the run
    /// and the column), so a kill of it is refused with that error rather than
    /// run with graces the operator never chose for it. Refusing is the
    /// stricter choice: "the stricter of the defaults" would still be a
    /// default, and the error says what to repair (`template` set to NULL in
    /// the runs table gives the run the agent's default, on purpose).
    fn stored_template(&self, rec: &RunRecord) -> deadlines::Stored {
        deadlines::Stored::of(rec).unwrap_or_else(|| deadlines::Stored {
            ceiling: Ceiling::of(&self.template),
            template: self.template.clone(),
        })
    }

    /// The operator's ceiling of a live run.
    fn ceiling(&self, run_id: &str) -> Option<Ceiling> {
        self.watch.lives.lock().get(run_id).map(|l| l.ceiling)
    }

    /// Takes a live run under watch: its notify socket, its deadlines, its loop
    /// sampling. `restarted` when the agent takes over a run it did not start: a
    /// stored watchdog deadline may then be up to one flush behind.
    pub(super) fn lifecycle_begin(self: &Agent, rec: &RunRecord, restarted: bool) {
        let stored = self.stored_template(rec);
        let ceiling = stored.ceiling;
        let template = Arc::new(stored.template);
        let threshold = match rec.watchdog_usec {
            Some(us) if us > 0 => Some(bounds::usec_at_most(
                us as u64,
                ceiling.watchdog_threshold(),
            )),
            _ => (!template.timeouts.watchdog.is_zero())
                .then(|| bounds::clamp(template.timeouts.watchdog.saturating_mul(2))),
        };
        let notify_key = rec
            .notify_socket
            .as_deref()
            .and_then(|path| self.serve_notify(&rec.run_id, rec.owner_uid, path));
        self.watch.lives.lock().insert(
            rec.run_id.clone(),
            Live {
                cg: super::layout::workload(rec),
                template: template.clone(),
                ceiling,
                threshold,
                notify_key,
                cgroup_ids: Default::default(),
                // Only root's supervisor may live beside its run (create.rs).
                supervisor: (rec.adopted.is_none() && rec.owner_uid == 0)
                    .then(|| {
                        Some(crate::procfs::Identity {
                            pid: rec.pid?,
                            starttime: rec.pid_starttime?,
                            ino: None,
                        })
                    })
                    .flatten(),
                dropped: (None, 0, 0),
            },
        );
        self.progress_begin(rec, &template, restarted);
        if rec.status == RunStatus::Initializing {
            self.watch
                .loops
                .lock()
                .insert(rec.run_id.clone(), LoopTracker::default());
        }
        if let Some(m) = self.monitor() {
            m.set(&rec.run_id, Kind::Init, rec.init_deadline);
            m.set(&rec.run_id, Kind::Total, rec.total_deadline);
            let watchdog = rec.watchdog_deadline.map(|d| {
                if restarted {
                    bounds::later(d, FLUSH_EVERY)
                } else {
                    d
                }
            });
            m.set(&rec.run_id, Kind::Watchdog, watchdog);
        }
        self.lease_begin(rec, restarted);
    }

    /// Stops watching a run that ended.
    pub(super) fn lifecycle_end(&self, run_id: &str) {
        if let Some(live) = self.watch.lives.lock().remove(run_id)
            && let Some(key) = live.notify_key
        {
            if let Some(hub) = self.watch.hub.get() {
                hub.remove(key);
            }
            // In the agent's own directory (see serve_notify).
            let _ = std::fs::remove_file(self.runs.notify_dirs.join(run_id));
        }
        self.watch.loops.lock().remove(run_id);
        self.progress_end(run_id);
        // Its last heartbeat, if not yet written, is written now (else a run that
        // ends between two flushes would show an older one, or none, for good).
        let beat = self.watch.beats.lock().remove(run_id);
        if let Some(b) = beat
            && let Err(e) = self
                .store()
                .set_time(run_id, TimeCol::LastHeartbeat, Some(b.at))
        {
            tracing::error!(run_id, "cannot store the last heartbeat: {e}");
        }
        if let Some(m) = self.monitor() {
            m.forget(run_id);
        }
    }

    /// Binds the run's notify socket and has the notify hub read it; its key there.
    fn serve_notify(&self, run_id: &str, owner: u32, path: &str) -> Option<u64> {
        let hub = self.watch.hub.get()?;
        let path = std::path::Path::new(path);
        // Only ever in the agent's own directory: a path in a user's directory (a run
        // recorded by an older agent) is not bound again, since binding and chmod
        // there would act on whatever the user put in its place.
        if path.parent() != Some(self.runs.notify_dirs.as_path()) {
            tracing::warn!(
                run_id,
                "not serving the notify socket {}: outside {}",
                path.display(),
                self.runs.notify_dirs.display()
            );
            return None;
        }
        match notify::bind(path).and_then(|sock| hub.add(run_id, owner, sock)) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(
                    run_id,
                    "cannot bind the notify socket {}: {e}",
                    path.display()
                );
                None
            }
        }
    }

    /// One notify message for a run, as the notify hub received it. Dropped (and
    /// counted) unless the kernel shows its sender inside the run's cgroup, or
    /// as the run's supervisor (sender.rs).
    pub(super) fn on_notify(&self, run_id: &str, sender: notify::Sender, msg: Message) {
        let (inside, threshold, ceiling, to_log) = match self.watch.lives.lock().get_mut(run_id) {
            Some(live) => {
                let proc_root = &self.cfg.proc_root;
                let inside =
                    sender_in_run::inside(&live.cg, &mut live.cgroup_ids, proc_root, &sender)
                        || live
                            .supervisor
                            .is_some_and(|s| sender_in_run::is(&s, proc_root, &sender));
                // The first drop is logged, then at most one line per
                // DROPPED_LOG_EVERY with the count since the last one.
                let mut to_log = None;
                if !inside {
                    let (window, lines, unlogged) = &mut live.dropped;
                    if window.is_none_or(|t| t.elapsed() >= DROPPED_LOG_WINDOW) {
                        *window = Some(Instant::now());
                        *lines = 0;
                    }
                    if *lines < DROPPED_LOG_LINES {
                        *lines += 1;
                        to_log = Some(std::mem::take(unlogged));
                    } else {
                        *unlogged += 1;
                    }
                }
                (inside, live.threshold, live.ceiling, to_log)
            }
            None => return,
        };
        if !inside {
            self.records.metrics.notify(false);
            if let Some(count) = to_log {
                tracing::warn!(
                    run_id,
                    pid = sender.pid,
                    not_logged_before = count,
                    "notify message from a process outside the run dropped (at most \
                     {DROPPED_LOG_LINES} such lines a run a minute)"
                );
            }
            return;
        }
        self.records.metrics.notify(true);
        let now_t = Utc::now();
        if let Some(us) = msg.watchdog_usec {
            // At most the operator's threshold: a run may tighten its watchdog,
            // never loosen it past what the operator set.
            let threshold = bounds::usec_at_most(us, ceiling.watchdog_threshold());
            if let Some(live) = self.watch.lives.lock().get_mut(run_id) {
                live.threshold = Some(threshold);
            }
            let usec = i64::try_from(threshold.as_micros()).unwrap_or(i64::MAX);
            self.heartbeat(run_id, now_t, Some(threshold), Some(usec));
        } else if msg.watchdog {
            self.heartbeat(run_id, now_t, threshold, None);
        }
        if msg.output || msg.new_line || msg.repeat.is_some() {
            self.saw_output(run_id, msg.new_line, msg.repeat.clone());
        }
        if msg.ready || msg.status.is_some() || msg.stopping || msg.extend_usec.is_some() {
            self.watch.phases.push(run_id, now_t, msg);
        }
    }

    /// Records a heartbeat in memory (written within `FLUSH_EVERY`) and re-arms the watchdog.
    fn heartbeat(
        &self,
        run_id: &str,
        at: DateTime<Utc>,
        threshold: Option<Duration>,
        usec: Option<i64>,
    ) {
        let deadline = threshold.map(|t| bounds::later(at, t));
        let beat = Beat { at, deadline, usec };
        let mut beats = self.watch.beats.lock();
        match beats.get_mut(run_id) {
            Some(b) => *b = beat,
            None => {
                beats.insert(run_id.to_owned(), beat);
            }
        }
        drop(beats);
        if let (Some(m), Some(d)) = (self.monitor(), deadline) {
            m.set(run_id, Kind::Watchdog, Some(d));
        }
    }

    /// The newest heartbeat of a run and the watchdog deadline it set, if not yet stored.
    pub(super) fn fresh_heartbeat(
        &self,
        run_id: &str,
    ) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
        self.watch
            .beats
            .lock()
            .get(run_id)
            .map(|b| (b.at, b.deadline))
    }

    fn flush_heartbeats(&self) {
        let beats: Vec<_> = self
            .watch
            .beats
            .lock()
            .drain()
            .map(|(id, b)| (id, b.at, b.deadline, b.usec))
            .collect();
        if beats.is_empty() {
            return;
        }
        let written = self.store().set_heartbeats(&beats);
        if let Err(e) = written {
            tracing::error!("cannot store {} heartbeats: {e}", beats.len());
        }
    }

    /// READY, STATUS, STOPPING and EXTEND_TIMEOUT_USEC: rare, written at once.
    fn on_phase_message(&self, run_id: &str, at: DateTime<Utc>, msg: &Message) {
        let store = self.store();
        let Ok(Some(rec)) = store.get_run(run_id) else {
            return;
        };
        if let Some(text) = &msg.status {
            let _ = store.set_text(run_id, TextCol::StatusText, Some(text));
        }
        let mut still_initializing = rec.status == RunStatus::Initializing;
        drop(store);
        if msg.ready && self.became_ready(run_id, at, "READY=1") {
            still_initializing = false;
            if msg.ready_on_first_output {
                let _ =
                    self.store()
                        .set_text(run_id, TextCol::ReadyOn, Some(READY_ON_FIRST_OUTPUT));
            }
        }
        let store = self.store();
        if let Some(us) = msg.extend_usec {
            let (col, kind, current) = if still_initializing {
                (TimeCol::InitDeadline, Kind::Init, rec.init_deadline)
            } else {
                (TimeCol::TotalDeadline, Kind::Total, rec.total_deadline)
            };
            // Up to the operator's deadline for the phase, never past it.
            let ceiling = self
                .ceiling(run_id)
                .unwrap_or_else(|| self.stored_template(&rec).ceiling);
            let span = if still_initializing {
                ceiling.init
            } else {
                ceiling.total
            };
            if let Some(current) = current {
                let asked = bounds::later(at, bounds::usec_at_most(us, bounds::MAX));
                let wanted = match Ceiling::latest(span, rec.started_at) {
                    Some(latest) => asked.min(latest),
                    None => asked,
                };
                if wanted > current {
                    let _ = store.set_time(run_id, col, Some(wanted));
                    if let Some(m) = self.monitor() {
                        m.set(run_id, kind, Some(wanted));
                    }
                }
            }
        }
        if msg.stopping {
            let _ = store.transition(
                run_id,
                &[RunStatus::Initializing, RunStatus::Running],
                RunStatus::Stopping,
            );
        }
    }

    /// An initializing run is ready (READY=1, or a ready condition held): it is
    /// `running`, its init deadline is gone. Whether it was initializing.
    pub(super) fn became_ready(&self, run_id: &str, at: DateTime<Utc>, how: &str) -> bool {
        let store = self.store();
        if !store
            .transition(run_id, &[RunStatus::Initializing], RunStatus::Running)
            .unwrap_or(false)
        {
            return false;
        }
        let _ = store.set_time(run_id, TimeCol::ReadyAt, Some(at));
        let _ = store.set_time(run_id, TimeCol::InitDeadline, None);
        drop(store);
        self.watch.loops.lock().remove(run_id);
        if let Some(m) = self.monitor() {
            m.set(run_id, Kind::Init, None);
            m.set(run_id, Kind::Probe, None);
        }
        tracing::info!(run_id, how, "run is ready");
        true
    }

    /// While a run initializes, notices the same command line being started again
    /// and again (a restart loop). It only marks the run; the deadline kills.
    fn sample_loops(&self) {
        let now_i = Instant::now();
        let ids: Vec<String> = self
            .watch
            .loops
            .lock()
            .iter()
            .filter(|(_, t)| t.next.is_none_or(|n| n <= now_i))
            .map(|(id, _)| id.clone())
            .collect();
        for run_id in ids {
            let Some(cg) = self.watch.lives.lock().get(&run_id).map(|l| l.cg.clone()) else {
                continue;
            };
            // A run cannot make cgroups of its own: its command's processes are all here.
            let pids = super::layout::payload(&cg).procs().unwrap_or_default();
            let mut found = None;
            {
                let mut loops = self.watch.loops.lock();
                let Some(t) = loops.get_mut(&run_id) else {
                    continue;
                };
                // Only processes not seen in the last sample are read (a pid reused
                // within one sampling period would be missed: this is a hint only).
                let mut seen = HashMap::with_capacity(pids.len());
                let mut new = Vec::new();
                let mut fresh = false;
                for pid in pids {
                    if let Some(cmd) = t.seen.remove(&pid) {
                        seen.insert(pid, cmd);
                        continue;
                    }
                    fresh = true;
                    let cmd = procfs::cmdline(&self.cfg.proc_root, pid);
                    new.extend(cmd.clone());
                    seen.insert(pid, cmd);
                }
                // What is left of the last sample has exited.
                for cmd in t.seen.drain().filter_map(|(_, c)| c) {
                    *t.exited.entry(cmd).or_default() += 1;
                }
                for cmd in new {
                    if let Some(n) = t.exited.get_mut(&cmd).filter(|n| **n > 0) {
                        *n -= 1;
                        t.starts.entry(cmd).or_default().push_back(now_i);
                    }
                }
                t.seen = seen;
                t.every = if fresh {
                    SAMPLE_EVERY
                } else {
                    (t.every * 2).clamp(SAMPLE_EVERY, QUIET_SAMPLE_EVERY)
                };
                // Half a tick early, so the tick that falls due is not missed by jitter.
                t.next = Some(now_i + t.every - SAMPLE_EVERY / 2);
                for (cmd, starts) in t.starts.iter_mut() {
                    while starts
                        .front()
                        .is_some_and(|s| now_i.duration_since(*s) > LOOP_WINDOW)
                    {
                        starts.pop_front();
                    }
                    if starts.len() >= LOOP_STARTS && found.is_none() {
                        found = Some(format!(
                            "suspected initialization loop: '{cmd}' started again {} times in the last minute",
                            starts.len()
                        ));
                    }
                }
                t.starts.retain(|_, s| !s.is_empty());
                if found.is_some() {
                    // Flagged once: sampling it further would tell nothing new.
                    loops.remove(&run_id);
                }
            }
            if let Some(text) = found {
                tracing::warn!(run_id, "{text}");
                let _ = self
                    .store()
                    .set_text(&run_id, TextCol::LoopSuspected, Some(&text));
                let rec = self.store().get_run(&run_id);
                if let Ok(Some(rec)) = rec {
                    self.alert("loop_suspected", &rec, &text);
                }
            }
        }
    }
}

impl OnDatagram for Agent {
    fn on_datagram(&self, run_id: &str, sender: notify::Sender, datagram: &[u8]) {
        self.on_notify(run_id, sender, notify::parse(datagram));
    }
}
