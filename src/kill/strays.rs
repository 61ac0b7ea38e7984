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
