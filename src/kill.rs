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
//! Force: the scan (to report what was open and to clean up after), then the
//! hard kill at once. Processes that survive the hard kill's deadline are
//! reported with their state, wait channel and kernel stack; the cgroup is left
//! frozen. Cleanup of what the run leaves is the caller's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::api::{Phase, STOP_REASON_FILE, SectionKind};
use crate::cgroup::{self, Cgroup, Frozen};
use crate::procfs;
use crate::sections::{self, Finding};

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
    pub force: bool,
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

/// A process that outlived the hard kill.
#[derive(Debug, Clone, PartialEq)]
pub struct Survivor {
    pub pid: i32,
    pub state: Option<char>,
    pub cmdline: Option<String>,
    pub wchan: Option<String>,
    pub stack: Option<String>,
}

impl Survivor {
    /// `pid N (CMD) state D wchan W stack f1 < f2 < f3`: the innermost kernel
    /// frames say where it is stuck.
    pub fn describe(&self) -> String {
        let stack: Vec<&str> = self
            .stack
            .as_deref()
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .take(3)
            .collect();
        format!(
            "pid {} ({}) state {} wchan {} stack {}",
            self.pid,
            self.cmdline.as_deref().unwrap_or("?"),
            self.state.unwrap_or('?'),
            self.wchan.as_deref().unwrap_or("?"),
            if stack.is_empty() {
                "?".into()
            } else {
                stack.join(" < ")
            }
        )
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

    // 1. Freeze and scan the stable tree.
    let t = Instant::now();
    let frozen = freeze(cg, plan, &mut report);
    let pids = listed(cg, &mut report);
    report.processes = pids.len() as u32;
    let open = scan(plan, pids, proc_root);
    let open = report.saw(open, start.elapsed());
    report.phase("scan", t, not_frozen(&frozen) + &describe(&open));
    if plan.force {
        // The supervisor reads why before it exits.
        say_why(plan, &mut report);
        hard_kill(cg, plan, proc_root, start, &mut report, Some(frozen));
        end_whole(plan, proc_root, &mut report);
        return report;
    }
    drop(frozen);

    // 2. Wait for critical sections to close.
    if !open.is_empty() {
        wait_for_sections(cg, plan, proc_root, start, &mut report);
    }
    if plan.escalated() {
        hard_kill(cg, plan, proc_root, start, &mut report, None);
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
    hard_kill(cg, plan, proc_root, start, &mut report, None);
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
    if let Some(stop) = &plan.stop_reason
        && let Err(e) = write_stop_reason(stop, plan)
    {
        report.errors.push(KillError::StopReason(e));
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
    match whole.wait_unpopulated(plan.kill_deadline) {
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
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if cg.wait_unpopulated(left.min(SECTION_POLL))? {
            return Ok(true);
        }
        if left <= SECTION_POLL || plan.escalated() {
            return Ok(false);
        }
    }
}

fn write_stop_reason(stop: &StopReason, plan: &Plan) -> Result<(), String> {
    let deadline = chrono::Utc::now()
        + chrono::Duration::from_std(plan.term_grace).unwrap_or(chrono::Duration::zero());
    let body = serde_json::json!({
        "reason": stop.reason,
        "requested_by": stop.requested_by,
        "mode": if plan.force { "force" } else { "graceful" },
        "status": stop.ending,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let path = stop.dir.join(STOP_REASON_FILE);
    crate::userfs::as_user(&stop.owner, || {
        let dir = crate::userfs::open_dir(&stop.dir)?;
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

/// Freeze, `cgroup.kill`, wait for `populated 0`. `scanned`: the freeze under
/// which a force kill has just scanned (no second freeze or scan then).
fn hard_kill<'a>(
    cg: &'a Cgroup,
    plan: &Plan,
    proc_root: &Path,
    start: Instant,
    report: &mut Report,
    scanned: Option<Option<Frozen<'a>>>,
) {
    let t = Instant::now();
    let frozen = match scanned {
        Some(frozen) => frozen,
        None => {
            // Freezing first closes the fork race of older kernels' cgroup.kill.
            let frozen = freeze(cg, plan, report);
            // What SIGKILL will orphan.
            let pids = listed(cg, report);
            let open = scan(plan, pids, proc_root);
            report.saw(open, start.elapsed());
            frozen
        }
    };
    let unfrozen = not_frozen(&frozen);
    // A write that fails (EMFILE, EIO) is retried until the deadline: until it is
    // written, no process is known to have been killed.
    let deadline = Instant::now() + plan.kill_deadline;
    let mut written = cg.kill();
    while let Err(e) = written {
        if Instant::now() >= deadline {
            report.unconfirmed = Some(e.to_string());
            report.phase("kill", t, format!("cgroup.kill not written: {e}"));
            report.errors.push(KillError::Kill(e));
            if let Some(f) = frozen {
                f.keep();
            }
            return;
        }
        std::thread::sleep(SECTION_POLL);
        written = cg.kill();
    }
    match wait_unpopulated(cg, deadline.saturating_duration_since(Instant::now())) {
        Ok(true) => report.phase("kill", t, unfrozen + "cgroup.kill; populated 0"),
        Ok(false) => {
            // Kept frozen and in place, so that a later kill can retry.
            if let Some(f) = frozen {
                f.keep();
            }
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
            if let Some(f) = frozen {
                f.keep();
            }
            report.unconfirmed = Some(e.to_string());
            report.errors.push(KillError::Wait(e));
        }
    }
}

/// [`Cgroup::wait_unpopulated`], with reads that fail retried until the
/// deadline: only a read that answers says whether the cgroup emptied.
fn wait_unpopulated(cg: &Cgroup, deadline: Duration) -> crate::cgroup::Result<bool> {
    let start = Instant::now();
    loop {
        match cg.wait_unpopulated(deadline.saturating_sub(start.elapsed())) {
            Err(_) if start.elapsed() < deadline => std::thread::sleep(SECTION_POLL),
            done => return done,
        }
    }
}

/// What [`kill_leftovers`] did.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Processes SIGKILLed.
    pub killed: u32,
    /// Why the freeze did not count (the leftovers were killed all the same).
    pub unconfirmed: Option<String>,
    /// The critical sections the leftovers had open, seen while frozen: git
    /// locks among them become stale once they are dead.
    pub sections: Vec<Finding>,
}

/// Once a run's command has exited: SIGKILLs whatever it left running in `cg`
/// beside `keep` (the supervisor, which waits for this answer), as systemd does
/// for a service's control group. When `keep` is alone (the usual case) nothing
/// is frozen or scanned: it cannot fork while it waits (`cgroup.procs` may still
/// list tasks that are exiting, never omits a live one). Otherwise: freeze, scan
/// the leftovers in `scope` (its pids filled in), signal each through a pidfd,
/// thaw (the SIGKILLs are delivered). A freeze that fails leaves them alone.
pub fn kill_leftovers(
    cg: &Cgroup,
    keep: i32,
    freeze_timeout: Duration,
    scope: &sections::Scope,
    proc_root: &Path,
) -> Leftovers {
    let alone = cg
        .procs_recursive()
        .is_ok_and(|p| p.iter().all(|&pid| pid == keep));
    if alone {
        return Leftovers::default();
    }
    let Ok(frozen) = cg.freeze_guard(freeze_timeout) else {
        return Leftovers::default();
    };
    let leftovers: Vec<i32> = cg
        .procs_recursive()
        .unwrap_or_default()
        .into_iter()
        .filter(|&pid| pid != keep)
        .collect();
    let scope = sections::Scope {
        pids: leftovers.clone(),
        ..scope.clone()
    };
    let sections = sections::scan(proc_root, &scope);
    let killed = leftovers
        .into_iter()
        .filter(|&pid| signal_member(cg, pid, &[Signal::KILL], proc_root))
        .count() as u32;
    let unconfirmed = frozen.unconfirmed();
    drop(frozen); // thawed: the SIGKILLs are delivered
    Leftovers {
        killed,
        unconfirmed,
        sections,
    }
}

/// What became of the processes carrying a run's marker outside its cgroup.
#[derive(Debug, Default)]
pub struct Escapees {
    /// Killed (SIGKILL through a pidfd, and seen dead).
    pub killed: Vec<i32>,
    /// Still alive: not the owner's to kill, or not dead by the deadline.
    pub survivors: Vec<Survivor>,
}

/// Kills the processes that carry the run's marker (`key=value` in their
/// environment) though they are outside its cgroup: each is pinned by a pidfd,
/// its marker re-read after that, and it is signalled only if the run's owner
/// could signal it (root, or the owner is its real or saved uid: a setuid
/// program started with a user's marker stays out of reach). Waits up to
/// `deadline` for them to die.
pub fn kill_escapees(
    proc_root: &Path,
    key: &str,
    value: &str,
    owner: u32,
    deadline: Duration,
) -> Escapees {
    let mut out = Escapees::default();
    let mut pending = Vec::new();
    // Runs killed at once share their scans of the host.
    static SCANS: std::sync::LazyLock<procfs::SharedEnvScan> =
        std::sync::LazyLock::new(Default::default);
    for pid in SCANS.pids_with_env(proc_root, key, value) {
        let Ok(pidfd) = procfs::pidfd_open(pid) else {
            continue; // gone already
        };
        let ours = procfs::has_env(proc_root, pid, key, value)
            && (owner == 0
                || procfs::uids(proc_root, pid).is_some_and(|[r, _, s]| owner == r || owner == s));
        if ours && procfs::pidfd_signal(&pidfd, Signal::KILL).is_ok() {
            pending.push((pid, pidfd));
        } else if procfs::pidfd_alive(&pidfd) {
            out.survivors.push(survivor(proc_root, pid));
        }
    }
    let until = Instant::now() + deadline;
    for (pid, pidfd) in pending {
        while procfs::pidfd_alive(&pidfd) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if procfs::pidfd_alive(&pidfd) {
            out.survivors.push(survivor(proc_root, pid));
        } else {
            out.killed.push(pid);
        }
    }
    out
}

fn survivor(proc_root: &Path, pid: i32) -> Survivor {
    let (wchan, stack) = procfs::wchan_and_stack(proc_root, pid);
    Survivor {
        pid,
        state: procfs::state(proc_root, pid),
        cmdline: procfs::cmdline(proc_root, pid),
        wchan,
        stack,
    }
}

/// Names the processes that outlived a kill of `cg` in the report. A listing that
/// fails, or lists none while the cgroup says populated, proves nothing: the kill
/// is then unconfirmed, never taken as done.
fn name_survivors(report: &mut Report, cg: &Cgroup, proc_root: &Path, what: &str) {
    match survivors(cg, proc_root) {
        Ok(s) if s.is_empty() => {
            report.unconfirmed = Some(format!("{what} is still populated but lists no process"))
        }
        Ok(s) => report.survivors = s,
        Err(e) => report.unconfirmed = Some(format!("cannot list the survivors: {e}")),
    }
}

fn survivors(cg: &Cgroup, proc_root: &Path) -> crate::cgroup::Result<Vec<Survivor>> {
    Ok(cg
        .procs_recursive()?
        .into_iter()
        .map(|pid| {
            let (wchan, stack) = procfs::wchan_and_stack(proc_root, pid);
            Survivor {
                pid,
                state: procfs::state(proc_root, pid),
                cmdline: procfs::cmdline(proc_root, pid),
                wchan,
                stack,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_survivor_is_described_with_its_innermost_kernel_frames() {
        let s = Survivor {
            pid: 42,
            state: Some('D'),
            cmdline: Some("dd if=/dev/sdz".into()),
            wchan: Some("io_schedule".into()),
            stack: Some(
                "[<0>] io_schedule+0x12/0x40\n[<0>] folio_wait_bit+0x1/0x2\n\
                 [<0>] filemap_read+0x3/0x4\n[<0>] vfs_read+0x5/0x6\n"
                    .into(),
            ),
        };
        assert_eq!(
            s.describe(),
            "pid 42 (dd if=/dev/sdz) state D wchan io_schedule stack \
             io_schedule+0x12/0x40 < folio_wait_bit+0x1/0x2 < filemap_read+0x3/0x4"
        );
        let unknown = Survivor {
            stack: None,
            wchan: None,
            state: None,
            cmdline: None,
            pid: 7,
        };
        assert_eq!(unknown.describe(), "pid 7 (?) state ? wchan ? stack ?");
    }
    use crate::cgroup;
    use std::fs;

    /// A fake cgroup whose `cgroup.events` never reports `populated 0`: the kill
    /// must give up at its deadline and name the survivors, not hang.
    #[test]
    fn a_cgroup_that_never_empties_yields_survivors_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path().join("stuck"));
        cg.create().unwrap();
        let me = std::process::id();
        fs::write(cg.path().join(cgroup::CGROUP_PROCS), format!("{me}\n")).unwrap();
        fs::write(
            cg.path().join(cgroup::CGROUP_EVENTS),
            "populated 1\nfrozen 0\n",
        )
        .unwrap();
        let plan = Plan {
            force: true,
            term_grace: Duration::from_millis(100),
            freeze_timeout: Duration::from_millis(100),
            kill_deadline: Duration::from_millis(200),
            spare: None,
            graces: Graces {
                git: Duration::ZERO,
                database: Duration::ZERO,
                files: Duration::ZERO,
                max_wait: Duration::ZERO,
            },
            scope: Default::default(),
            stop_reason: None,
            escalate: Arc::default(),
            emergency: Arc::default(),
            whole: None,
            supervisor_grace: Duration::ZERO,
        };
        let report = kill(&cg, &plan, Path::new("/proc"));
        // The fake tree never says `frozen 1`: each freeze is an error of its phase.
        assert!(
            report
                .errors
                .iter()
                .any(|e| matches!(e, KillError::Freeze(why) if why.contains("not confirmed"))),
            "{:?}",
            report.errors
        );
        let scan = report.phases.iter().find(|p| p.name == "scan").unwrap();
        assert!(scan.detail.starts_with("tree not frozen: "), "{scan:?}");
        assert_eq!(report.processes, 1);
        assert_eq!(report.survivors.len(), 1);
        assert_eq!(report.survivors[0].pid, me as i32);
        assert!(report.survivors[0].state.is_some());
        assert_eq!(
            fs::read_to_string(cg.path().join(cgroup::CGROUP_KILL)).unwrap(),
            "1"
        );
        assert_eq!(
            fs::read_to_string(cg.path().join(cgroup::CGROUP_FREEZE)).unwrap(),
            "1"
        );
    }

    /// A fake cgroup whose `cgroup.events` and `cgroup.procs` fail to read (EIO):
    /// the kill must not report the processes ended, nor "no survivors".
    #[test]
    fn a_cgroup_that_cannot_be_read_is_no_proof_of_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path().join("eio"));
        cg.create().unwrap();
        for file in [cgroup::CGROUP_EVENTS, cgroup::CGROUP_PROCS] {
            std::os::unix::fs::symlink("/proc/self/mem", cg.path().join(file)).unwrap();
        }
        let plan = Plan {
            force: true,
            term_grace: Duration::from_millis(100),
            freeze_timeout: Duration::from_millis(100),
            kill_deadline: Duration::from_millis(300),
            spare: None,
            graces: Graces {
                git: Duration::ZERO,
                database: Duration::ZERO,
                files: Duration::ZERO,
                max_wait: Duration::ZERO,
            },
            scope: Default::default(),
            stop_reason: None,
            whole: None,
            supervisor_grace: Duration::ZERO,
            emergency: Arc::default(),
            escalate: Arc::default(),
        };
        let report = kill(&cg, &plan, Path::new("/proc"));
        let why = report
            .unconfirmed
            .expect("an unreadable cgroup taken as empty");
        assert!(why.contains("Input/output error"), "{why}");
        assert!(
            report.errors.iter().any(|e| matches!(e, KillError::List(_))
                && e.to_string().contains("cannot list the processes")),
            "{:?}",
            report.errors
        );
    }
}
