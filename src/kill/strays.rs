//! What a run leaves once its command has ended: processes beside the
//! supervisor in its cgroup, and processes carrying its marker outside it.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::survivors::survivor;
use super::{Survivor, signal_member};
use crate::cgroup::Cgroup;
use crate::procfs;
use crate::sections::{self, Finding};

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
    /// Signalled, and still alive at the deadline.
    pub survivors: Vec<Survivor>,
    /// Found by the scan, but no longer the run's own once pinned (another
    /// uid, or its marker gone): left alone, never a reason for a kill to fail.
    pub ignored: Vec<i32>,
    /// What the scan did not look at ([`procfs::EnvScan`]): processes of the
    /// run's owner it did not read (budget spent, or in state D), and those it
    /// read only in part.
    pub unread: u32,
    pub cut: u32,
}

/// Kills the processes that carry the run's marker (`key=value` in their
/// environment) though they are outside its cgroup, and that the run could
/// have started: those whose real, effective and saved uids are all the run's
/// owner's (root's for root's runs) and that started after the run
/// (`filter`). Nothing else is read: a marker is a hint its carrier controls,
/// so another user's process carrying it is no escapee of this run and can
/// neither be killed by nor make this kill fail. Each one found is pinned by a
/// pidfd and checked again after that; waits up to `deadline` for them to die.
pub fn kill_escapees(
    proc_root: &Path,
    key: &str,
    value: &str,
    filter: procfs::EnvFilter,
    deadline: Duration,
) -> Escapees {
    // Runs killed at once share their scans of the host.
    static SCANS: std::sync::LazyLock<procfs::SharedEnvScan> =
        std::sync::LazyLock::new(Default::default);
    let found = SCANS.scan(proc_root, key, value, filter);
    let mut out = Escapees {
        unread: found.unread,
        cut: found.cut,
        ..Default::default()
    };
    let mut pending = Vec::new();
    for pid in found.pids {
        let Ok(pidfd) = procfs::pidfd_open(pid) else {
            continue; // gone already
        };
        if !procfs::markers::carries(proc_root, pid, &filter, key, value) {
            if procfs::pidfd_alive(&pidfd) {
                tracing::info!(
                    pid,
                    "{key}={value}: no longer the run's once pinned; left alone"
                );
                out.ignored.push(pid);
            }
            continue;
        }
        if procfs::pidfd_signal(&pidfd, Signal::KILL).is_ok() {
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
