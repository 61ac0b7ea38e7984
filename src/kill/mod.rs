//! The kill sequence: how one run's cgroup is brought to `populated 0`, as
//! safely as its deadline allows.
//!
//! Graceful, in order:
//! 1. freeze, wait for `frozen 1`; scan the frozen, stable tree for critical
//!    sections ([`crate::sections`]); thaw;
//! 2. while a section is open: poll until it closes, its kind's grace runs out,
//!    or the overall limit passes;
//! 3. write the stop reason where the run can read it;
//! 4. freeze, SIGTERM + SIGCONT to every process through pidfds (the tree cannot
//!    fork while frozen, so nothing is missed), thaw; wait up to the TERM grace
//!    for `populated 0`;
//! 5. the hard kill: freeze, `cgroup.kill`, wait for `populated 0` (never
//!    trusting an empty `cgroup.procs`).
//!
//! Before each signal the frozen tree is scanned again, so that what the signal
//! may leave behind is on record for the cleanup: a process frozen in `open()`
//! of a git lock dies on thaw before git has registered the lock for removal.
//!
//! Force: the stop reason, then `cgroup.kill` at once: nothing is frozen or
//! scanned first, so the kill costs what the kernel's does. What was open is
//! what the run was last seen holding, and the git locks its dead tree left are
//! found afterwards in the repositories it used (the caller's cleanup: created
//! since the run started, held by nobody, no process working there).
//! Processes that survive the hard kill's deadline are reported with their
//! state, wait channel and kernel stack; the cgroup is left frozen. Cleanup of
//! what the run leaves is the caller's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::api::{KillMode, Phase, STOP_REASON_FILE, SectionKind};
use crate::cgroup::{self, Cgroup, Frozen};
use crate::procfs;
use crate::sections::{self, Finding};

mod strays;
mod survivors;
#[cfg(test)]
mod tests;

pub use strays::{Escapees, kill_escapees, kill_leftovers};
pub use survivors::Survivor;
use survivors::name_survivors;
/// How long to wait for each kind of critical section, and for all of them.
#[derive(Debug, Clone)]
pub struct Graces {
    pub git: Duration,
    pub database: Duration,
    pub files: Duration,
    pub max_wait: Duration,
}

impl Graces {
    pub fn of(&self, kind: SectionKind) -> Duration {
        match kind {
            SectionKind::Git => self.git,
            SectionKind::Database => self.database,
            SectionKind::Files => self.files,
        }
    }
}

/// Written to `$WFCG_RUN_DIR/stop-reason` before SIGTERM.
#[derive(Debug, Clone)]
pub struct StopReason {
    /// The run directory (the user's): the file is written there as its owner,
    /// without following symlinks, never into a FIFO or device.
    pub dir: PathBuf,
    pub owner: crate::userfs::Cred,
    pub reason: Option<String>,
    pub requested_by: String,
    /// The status the run will end with (`killed`, or `timed_out` for the monitor).
    pub ending: &'static str,
}

/// How to kill.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Graceful, or (force and emergency) straight to the hard kill.
    pub mode: KillMode,
    /// After SIGTERM, how long before the hard kill.
    pub term_grace: Duration,
    pub freeze_timeout: Duration,
    /// After `cgroup.kill`, how long before the run is declared unkillable.
    pub kill_deadline: Duration,
    /// A process spared SIGTERM (the run's supervisor, which ends when its command does);
    /// given as (pid, start time). The hard kill spares nobody.
    pub spare: Option<(i32, u64)>,
    pub graces: Graces,
    /// Where to look for critical sections (the pids are filled in at each scan).
    pub scope: sections::Scope,
    pub stop_reason: Option<StopReason>,
    /// The run's whole cgroup, when the sequence acts on its payload leaf: once
    /// the payload is empty, the supervisor gets `supervisor_grace` to leave by
    /// itself (it reports the exit and says why), then the whole run is killed.
    pub whole: Option<Cgroup>,
    pub supervisor_grace: Duration,
    /// Set when an `--emergency` request joins the sequence: the whole run is
    /// killed without the supervisor's grace.
    pub emergency: Arc<AtomicBool>,
    /// Set by a later `--force` or `--emergency` request while this sequence waits:
    /// every wait ends within [`SECTION_POLL`] and the hard kill follows at once.
    pub escalate: Arc<AtomicBool>,
}

impl Plan {
    fn escalated(&self) -> bool {
        self.escalate.load(Ordering::Relaxed)
    }
}

/// A critical section and when it was seen open, in time since the kill began.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub finding: Finding,
    pub first: Duration,
    pub last: Duration,
}

/// An error that did not stop the kill sequence, by what failed.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// The processes could not be listed (the kill goes on: `cgroup.kill`
    /// reaches them all the same).
    #[error("cannot list the processes: {0}")]
    List(cgroup::Error),
    /// The freeze failed, or was not confirmed within its timeout.
    #[error("{0}")]
    Freeze(String),
    /// The run's stop-reason file could not be written.
    #[error("{0}")]
    StopReason(String),
    /// Waiting for the cgroup to empty failed.
    #[error("{0}")]
    Wait(cgroup::Error),
    /// `cgroup.kill` could not be written.
    #[error("{0}")]
    Kill(cgroup::Error),
}

/// What the sequence did.
#[derive(Debug, Default)]
pub struct Report {
    /// Processes in the cgroup when the kill began.
    pub processes: u32,
    pub phases: Vec<Phase>,
    /// Every critical section seen open during the kill.
    pub sections: Vec<Seen>,
    /// How long the kill waited for critical sections.
    pub waited: Duration,
    /// Kinds whose grace ran out with a section still open.
    pub graces_expired: Vec<SectionKind>,
    /// The overall limit on waiting ran out.
    pub max_wait_expired: bool,
    /// Empty when the cgroup reached `populated 0`.
    pub survivors: Vec<Survivor>,
    /// Errors that did not stop the sequence.
    pub errors: Vec<KillError>,
    /// Why the end of the processes could not be confirmed (a read of the
    /// cgroup failed): the run is not over, whatever else this report says.
    pub unconfirmed: Option<String>,
}

impl Report {
    fn phase(&mut self, name: &str, since: Instant, detail: String) {
        self.phases.push(Phase {
            name: name.into(),
            duration_ms: since.elapsed().as_secs_f64() * 1e3,
            detail,
        });
    }

    /// Records the sections of one scan; returns those open now.
    fn saw(&mut self, found: Vec<Finding>, at: Duration) -> Vec<Finding> {
        for f in &found {
            match self.sections.iter_mut().find(|s| &s.finding == f) {
                Some(s) => s.last = at,
                None => self.sections.push(Seen {
                    finding: f.clone(),
                    first: at,
                    last: at,
                }),
            }
        }
        found
    }
}

/// Runs the sequence on `cg`. `proc_root` is normally `/proc`.
pub fn kill(cg: &Cgroup, plan: &Plan, proc_root: &Path) -> Report {
    let start = Instant::now();
    let mut report = Report::default();

    if plan.mode.is_forced() {
        report.processes = listed(cg, &mut report).len() as u32;
        // The supervisor reads why before it exits.
        say_why(plan, &mut report);
        hard_kill(cg, plan, proc_root, start, &mut report, Before::Nothing);
        end_whole(plan, proc_root, &mut report);
        return report;
    }

    // 1. Freeze and scan the stable tree.
    let t = Instant::now();
    let frozen = freeze(cg, plan, &mut report);
    let pids = listed(cg, &mut report);
    report.processes = pids.len() as u32;
    let open = scan(plan, pids, proc_root);
    let open = report.saw(open, start.elapsed());
    report.phase("scan", t, not_frozen(&frozen) + &describe(&open));
    drop(frozen);

    // 2. Wait for critical sections to close.
    if !open.is_empty() {
        wait_for_sections(cg, plan, proc_root, start, &mut report);
    }
    if plan.escalated() {
        hard_kill(cg, plan, proc_root, start, &mut report, Before::Scan);
        end_whole(plan, proc_root, &mut report);
        return report;
    }

    // 3. Say why, 4. SIGTERM and its grace.
    say_why(plan, &mut report);
    graceful_term(cg, plan, proc_root, start, &mut report);
    let t = Instant::now();
    match wait_unpopulated_unless_escalated(cg, plan, plan.term_grace) {
        Ok(true) => {
            report.phase("term_wait", t, "all processes exited after SIGTERM".into());
            end_whole(plan, proc_root, &mut report);
            return report;
        }
        Ok(false) if plan.escalated() => report.phase(
            "term_wait",
            t,
            "a forced kill came in: no more waiting".into(),
        ),
        Ok(false) => report.phase(
            "term_wait",
            t,
            format!(
                "grace of {} ran out",
                crate::duration::format(plan.term_grace)
            ),
        ),
        Err(e) => report.errors.push(KillError::Wait(e)),
    }

    // 5. The hard kill.
    hard_kill(cg, plan, proc_root, start, &mut report, Before::Scan);
    end_whole(plan, proc_root, &mut report);
    report
}

/// The processes of the cgroup; a failed listing is noted as an error (the kill
/// goes on: `cgroup.kill` reaches them all the same), never taken as "none".
fn listed(cg: &Cgroup, report: &mut Report) -> Vec<i32> {
    cg.procs_recursive().unwrap_or_else(|e| {
        report.errors.push(KillError::List(e));
        Vec::new()
    })
}

/// The one place the sequence freezes: a guard that thaws when dropped. A
/// freeze not confirmed within its timeout is an error of the phase, and what
/// follows goes on without it (`cgroup.kill` is atomic anyway; a scan is then
/// marked as of a tree not frozen).
fn freeze<'a>(cg: &'a Cgroup, plan: &Plan, report: &mut Report) -> Option<Frozen<'a>> {
    match cg.freeze_guard(plan.freeze_timeout) {
        Ok(f) => {
            if let Some(why) = f.unconfirmed() {
                report.errors.push(KillError::Freeze(why));
            }
            Some(f)
        }
        Err(e) => {
            report.errors.push(KillError::Freeze(e.to_string()));
            None
        }
    }
}

/// `"tree not frozen: "` before a scan's detail when its freeze did not hold.
fn not_frozen(frozen: &Option<Frozen>) -> String {
    match frozen {
        Some(f) if f.confirmed => String::new(),
        _ => "tree not frozen: ".into(),
    }
}

fn say_why(plan: &Plan, report: &mut Report) {
    let Some(stop) = &plan.stop_reason else {
        return;
    };
    let t = Instant::now();
    match write_stop_reason(stop, plan) {
        Ok(()) => report.phase("stop_reason", t, format!("written to {STOP_REASON_FILE}")),
        Err(e) => {
            report.phase("stop_reason", t, e.clone());
            report.errors.push(KillError::StopReason(e));
        }
    }
}

/// Step 6, once the payload is empty: the supervisor's grace to exit by itself,
/// then `cgroup.kill` of the whole run, so nothing hides in the supervisor leaf.
/// Nothing to do when the payload did not empty (the run is unkillable and
/// stays frozen) or when the sequence acted on the whole run already.
fn end_whole(plan: &Plan, proc_root: &Path, report: &mut Report) {
    let Some(whole) = &plan.whole else { return };
    if !report.survivors.is_empty() || report.unconfirmed.is_some() {
        return;
    }
    let t = Instant::now();
    let grace = if plan.emergency.load(Ordering::Relaxed) {
        Duration::ZERO
    } else {
        plan.supervisor_grace
    };
    match whole.wait_unpopulated(grace) {
        Ok(true) => {
            report.phase("supervisor", t, "the supervisor exited".into());
            return;
        }
        Ok(false) => {}
        Err(e) => report.errors.push(KillError::Wait(e)),
    }
    if let Err(e) = whole.kill() {
        report.errors.push(KillError::Kill(e));
    }
    match wait_killed(whole, plan.kill_deadline) {
        Ok(true) => report.phase(
            "supervisor",
            t,
            format!(
                "the supervisor did not exit within {}; cgroup.kill of the whole run",
                crate::duration::format(plan.supervisor_grace)
            ),
        ),
        Ok(false) | Err(_) => {
            name_survivors(report, whole, proc_root, "the run's cgroup");
            report.phase(
                "supervisor",
                t,
                format!(
                    "{} processes survived cgroup.kill of the whole run",
                    report.survivors.len()
                ),
            );
        }
    }
}

fn scan(plan: &Plan, pids: Vec<i32>, proc_root: &Path) -> Vec<Finding> {
    let scope = sections::Scope {
        pids,
        ..plan.scope.clone()
    };
    sections::scan(proc_root, &scope)
}

fn describe(open: &[Finding]) -> String {
    if open.is_empty() {
        return "no critical section open".into();
    }
    let list: Vec<String> = open
        .iter()
        .map(|f| format!("{}: {} (pid {})", f.kind.as_str(), f.path, f.pid))
        .collect();
    list.join("; ")
}

/// How often open critical sections are looked at again.
const SECTION_POLL: Duration = Duration::from_millis(100);

/// Polls until no section is open, every open one's grace has run out, or the
/// overall limit passes. Each kind's grace counts from the start of the wait.
fn wait_for_sections(
    cg: &Cgroup,
    plan: &Plan,
    proc_root: &Path,
    start: Instant,
    report: &mut Report,
) {
    let t = Instant::now();
    let detail = loop {
        std::thread::sleep(SECTION_POLL);
        if plan.escalated() {
            break "a forced kill came in: no more waiting".to_string();
        }
        // A listing that fails says nothing about the sections: still open.
        let pids = match cg.procs_recursive() {
            Ok(pids) => pids,
            Err(e) if t.elapsed() >= plan.graces.max_wait => {
                report.max_wait_expired = true;
                break format!("waited the limit; cannot list the processes: {e}");
            }
            Err(_) => continue,
        };
        let open = scan(plan, pids, proc_root);
        let open = report.saw(open, start.elapsed());
        if open.is_empty() {
            break "all critical sections closed".to_string();
        }
        let waited = t.elapsed();
        let kinds: BTreeSet<SectionKind> = open.iter().map(|f| f.kind).collect();
        if kinds.iter().all(|k| waited >= plan.graces.of(*k)) {
            report.graces_expired = kinds.into_iter().collect();
            break format!("grace ran out with {} still open", describe(&open));
        }
        if waited >= plan.graces.max_wait {
            report.max_wait_expired = true;
            report.graces_expired = kinds
                .into_iter()
                .filter(|k| waited >= plan.graces.of(*k))
                .collect();
            break format!(
                "waited the limit of {} with {} still open",
                crate::duration::format(plan.graces.max_wait),
                describe(&open)
            );
        }
    };
    report.waited = t.elapsed();
    report.phase("sections_wait", t, detail);
}

/// [`Cgroup::wait_unpopulated`] in slices of [`SECTION_POLL`], ending early (false)
/// when the plan is escalated.
fn wait_unpopulated_unless_escalated(
    cg: &Cgroup,
    plan: &Plan,
    timeout: Duration,
) -> Result<bool, crate::cgroup::Error> {
    let deadline = Instant::now() + timeout;
    let mut first = true;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if wait_slice(cg, left.min(SECTION_POLL), &mut first)? {
            return Ok(true);
        }
        if left <= SECTION_POLL || plan.escalated() {
            return Ok(false);
        }
    }
}

fn write_stop_reason(stop: &StopReason, plan: &Plan) -> Result<(), String> {
    let deadline = crate::bounds::later(chrono::Utc::now(), plan.term_grace);
    let body = serde_json::json!({
        "reason": stop.reason,
        "requested_by": stop.requested_by,
        // To the run an emergency is a force kill: the file says one of two.
        "mode": if plan.mode.is_forced() { KillMode::Force } else { KillMode::Graceful },
        "status": stop.ending,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let path = stop.dir.join(STOP_REASON_FILE);
    // A mount the user stacked over their run directory (FUSE) would be asked to
    // open it, and might never answer: it goes first.
    let _ = crate::tmpfs::detach_stacked(&stop.dir);
    crate::userfs::as_user(&stop.owner, || {
        let dir = crate::tmpfs::open_unstacked(&stop.dir)?;
        crate::userfs::write_at(dir, STOP_REASON_FILE, format!("{body}\n").as_bytes(), 0o644)
    })
    .and_then(|r| r)
    .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Freeze, SIGTERM + SIGCONT to every process but the spared one, thaw.
fn graceful_term(cg: &Cgroup, plan: &Plan, proc_root: &Path, start: Instant, report: &mut Report) {
    let t = Instant::now();
    let frozen = freeze(cg, plan, report);
    let pids = listed(cg, report);
    report.processes = pids.len() as u32;
    // Locks the signal may orphan: recorded for the cleanup (see the module doc).
    let open = scan(plan, pids.clone(), proc_root);
    report.saw(open, start.elapsed());
    let mut signalled = 0;
    for &pid in &pids {
        if let Some((spare, start)) = plan.spare
            && pid == spare
            && procfs::starttime(proc_root, pid) == Some(start)
        {
            continue;
        }
        // SIGTERM is queued while frozen and handled on thaw; SIGCONT wakes stopped ones.
        if signal_member(cg, pid, &[Signal::TERM, Signal::CONT], proc_root) {
            signalled += 1;
        }
    }
    let detail =
        not_frozen(&frozen) + &format!("SIGTERM to {signalled} of {} processes", pids.len());
    drop(frozen);
    report.phase("term", t, detail);
}

/// Sends `sigs` to `pid` through one pidfd, only if the process behind the pidfd
/// is in `cg` (so a PID reused since `cgroup.procs` was read is never hit).
/// Whether all were delivered (it stops at the first that is not).
pub fn signal_member(cg: &Cgroup, pid: i32, sigs: &[Signal], proc_root: &Path) -> bool {
    let Ok(pidfd) = procfs::pidfd_open(pid) else {
        return false;
    };
    cg.contains_process(proc_root, pid).unwrap_or(false)
        && sigs
            .iter()
            .all(|&sig| procfs::pidfd_signal(&pidfd, sig).is_ok())
}

/// What the hard kill does before `cgroup.kill`.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    /// Freeze and scan: what SIGKILL will orphan is put on record.
    Scan,
    /// Nothing (a force kill): the kill at once.
    Nothing,
}

/// `cgroup.kill`, wait for `populated 0` (after a freeze and a scan, `before`
/// says). Survivors of the deadline are left frozen and named.
fn hard_kill(
    cg: &Cgroup,
    plan: &Plan,
    proc_root: &Path,
    start: Instant,
    report: &mut Report,
    before: Before,
) {
    let t = Instant::now();
    let mut frozen = None;
    if before == Before::Scan {
        frozen = freeze(cg, plan, report);
        // What SIGKILL will orphan.
        let pids = listed(cg, report);
        let open = scan(plan, pids, proc_root);
        report.saw(open, start.elapsed());
    }
    let unfrozen = if before == Before::Scan {
        not_frozen(&frozen)
    } else {
        String::new()
    };
    // Kept frozen and in place when the kill is not confirmed, so that a later
    // kill can retry and the survivors can be looked at.
    let keep_frozen = |frozen: Option<Frozen>, report: &mut Report| match frozen {
        Some(f) => f.keep(),
        None => {
            if let Some(f) = freeze(cg, plan, report) {
                f.keep()
            }
        }
    };
    // A write that fails (EMFILE, EIO) is retried until the deadline: until it is
    // written, no process is known to have been killed.
    let deadline = Instant::now() + plan.kill_deadline;
    let mut written = cg.kill();
    while let Err(e) = written {
        if Instant::now() >= deadline {
            report.unconfirmed = Some(e.to_string());
            report.phase("kill", t, format!("cgroup.kill not written: {e}"));
            report.errors.push(KillError::Kill(e));
            keep_frozen(frozen, report);
            return;
        }
        std::thread::sleep(SECTION_POLL);
        written = cg.kill();
    }
    match wait_killed(cg, deadline.saturating_duration_since(Instant::now())) {
        Ok(true) => report.phase("kill", t, unfrozen + "cgroup.kill; populated 0"),
        Ok(false) => {
            keep_frozen(frozen, report);
            name_survivors(report, cg, proc_root, "the cgroup");
            report.phase(
                "kill",
                t,
                format!(
                    "{} processes survived cgroup.kill for {}",
                    report.survivors.len(),
                    crate::duration::format(plan.kill_deadline)
                ),
            );
        }
        Err(e) => {
            keep_frozen(frozen, report);
            report.unconfirmed = Some(e.to_string());
            report.errors.push(KillError::Wait(e));
        }
    }
}

/// One slice of a wait for `populated 0` that is made of several: only the
/// `first` re-reads `cgroup.events` every millisecond at its start.
fn wait_slice(cg: &Cgroup, slice: Duration, first: &mut bool) -> crate::cgroup::Result<bool> {
    if std::mem::take(first) {
        cg.wait_unpopulated(slice)
    } else {
        cg.wait_unpopulated_again(slice)
    }
}

/// Waits up to `deadline` for `populated 0`, writing `cgroup.kill` again every
/// [`SECTION_POLL`] while the cgroup is still populated: a child forked while
/// the kill went through the cgroup (its parent past fork's check for a fatal
/// signal, the child not yet on the cgroup's list) is not reached by the first
/// write. Reads that fail are retried until the deadline: only a read that
/// answers says whether the cgroup emptied.
fn wait_killed(cg: &Cgroup, deadline: Duration) -> crate::cgroup::Result<bool> {
    let start = Instant::now();
    let mut first = true;
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        match wait_slice(cg, left.min(SECTION_POLL), &mut first) {
            Ok(false) if !left.is_zero() => {
                let _ = cg.kill();
            }
            Err(_) if !left.is_zero() => std::thread::sleep(SECTION_POLL.min(left)),
            done => return done,
        }
    }
}
