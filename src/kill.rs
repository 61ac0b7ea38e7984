//! The kill sequence: how one run's cgroup is brought to `populated 0`.
//!
//! Graceful: freeze, SIGTERM + SIGCONT to every process through pidfds (the
//! tree cannot fork while frozen, so nothing is missed), thaw, wait up to the
//! grace for `populated 0`, then the hard kill. Force: the hard kill at once.
//! Hard kill: freeze, `cgroup.kill`, wait for `populated 0` (never trusting an
//! empty `cgroup.procs`). Processes that survive the deadline are reported with
//! their state, wait channel and kernel stack; the cgroup is left frozen.
//!
//! Cleanup of what the run leaves (directories, the cgroup itself) is the
//! caller's; this module only ends processes.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::api::Phase;
use crate::cgroup::{self, Cgroup};
use crate::procfs;

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

/// What the sequence did.
#[derive(Debug, Default)]
pub struct Report {
    /// Processes in the cgroup when the kill began.
    pub processes: u32,
    pub phases: Vec<Phase>,
    /// Empty when the cgroup reached `populated 0`.
    pub survivors: Vec<Survivor>,
    /// Errors that did not stop the sequence.
    pub errors: Vec<String>,
}

impl Report {
    fn phase(&mut self, name: &str, since: Instant, detail: String) {
        self.phases.push(Phase {
            name: name.into(),
            duration_ms: since.elapsed().as_secs_f64() * 1e3,
            detail,
        });
    }
}

/// Runs the sequence on `cg`. `proc_root` is normally `/proc`.
pub fn kill(cg: &Cgroup, plan: &Plan, proc_root: &Path) -> Report {
    let mut report = Report::default();
    if !plan.force {
        graceful_term(cg, plan, proc_root, &mut report);
        let t = Instant::now();
        match cg.wait_unpopulated(plan.term_grace) {
            Ok(true) => {
                report.phase("term_wait", t, "all processes exited after SIGTERM".into());
                return report;
            }
            Ok(false) => report.phase(
                "term_wait",
                t,
                format!(
                    "grace of {} ran out",
                    crate::duration::format(plan.term_grace)
                ),
            ),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    hard_kill(cg, plan, proc_root, &mut report);
    report
}

/// Freeze, SIGTERM + SIGCONT to every process but the spared one, thaw.
fn graceful_term(cg: &Cgroup, plan: &Plan, proc_root: &Path, report: &mut Report) {
    let t = Instant::now();
    if let Err(e) = cg.freeze(plan.freeze_timeout) {
        report.errors.push(e.to_string());
    }
    let pids = cg.procs_recursive().unwrap_or_default();
    report.processes = pids.len() as u32;
    let mut signalled = 0;
    for &pid in &pids {
        if let Some((spare, start)) = plan.spare
            && pid == spare
            && procfs::starttime(proc_root, pid) == Some(start)
        {
            continue;
        }
        // SIGTERM is queued while frozen and handled on thaw; SIGCONT wakes stopped ones.
        if signal_member(cg, pid, Signal::TERM, proc_root) {
            signalled += 1;
            signal_member(cg, pid, Signal::CONT, proc_root);
        }
    }
    if let Err(e) = cg.thaw() {
        report.errors.push(e.to_string());
    }
    report.phase(
        "term",
        t,
        format!("SIGTERM to {signalled} of {} processes", pids.len()),
    );
}

/// Signals `pid` through a pidfd, only if the process behind the pidfd is in `cg`
/// (so a PID reused since `cgroup.procs` was read is never hit).
fn signal_member(cg: &Cgroup, pid: i32, sig: Signal, proc_root: &Path) -> bool {
    let Ok(pidfd) = procfs::pidfd_open(pid) else {
        return false;
    };
    // `/proc/<pid>/cgroup` is relative to the mount: the process is inside when
    // one of its cgroup's ancestors (or the cgroup itself) is where `cg` ends.
    let inside = cgroup::process_cgroup(proc_root, pid).is_some_and(|rel| {
        Path::new(rel.trim_start_matches('/'))
            .ancestors()
            .any(|a| !a.as_os_str().is_empty() && cg.path().ends_with(a))
    });
    inside && procfs::pidfd_signal(&pidfd, sig).is_ok()
}

/// Freeze, `cgroup.kill`, wait for `populated 0`.
fn hard_kill(cg: &Cgroup, plan: &Plan, proc_root: &Path, report: &mut Report) {
    let t = Instant::now();
    // Freezing first closes the fork race of older kernels' cgroup.kill.
    if let Err(e) = cg.freeze(plan.freeze_timeout) {
        report.errors.push(e.to_string());
    }
    if plan.force {
        report.processes = cg.procs_recursive().map(|p| p.len() as u32).unwrap_or(0);
    }
    if let Err(e) = cg.kill() {
        report.errors.push(e.to_string());
    }
    match cg.wait_unpopulated(plan.kill_deadline) {
        Ok(true) => report.phase("kill", t, "cgroup.kill; populated 0".into()),
        Ok(false) => {
            report.survivors = survivors(cg, proc_root);
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
            report.errors.push(e.to_string());
            report.survivors = survivors(cg, proc_root);
        }
    }
}

fn survivors(cg: &Cgroup, proc_root: &Path) -> Vec<Survivor> {
    cg.procs_recursive()
        .unwrap_or_default()
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
        };
        let report = kill(&cg, &plan, Path::new("/proc"));
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
}
