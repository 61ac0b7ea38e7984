//! Whether a notify message comes from inside its run: the check every
//! heartbeat pays, so on its usual way it reads no procfs file and names the
//! sender exactly, even one that has exited since.
//!
//! The kernel hands over a pidfd of the sender with each datagram (SCM_PIDFD,
//! Linux ≥ 6.5), taken when it sent; `PIDFD_GET_INFO` (Linux ≥ 6.13) turns it
//! into the id of the cgroup that process is in, or died in (Linux ≥ 6.15 keeps
//! it after the process is reaped). That id is compared with the ids of the
//! run's cgroups (the inode numbers of their directories), learned once per run
//! and looked up again only when an unknown id shows up (a cgroup made below
//! the run since, or a sender outside it).
//!
//! Why a known id is enough: a cgroup's id is never reused while the system
//! runs, and a cgroup2 directory can only be renamed within its parent, so a
//! cgroup once below the run stays below it. The run's cgroups are root's: a
//! user can neither create one below them nor move a process into or out of
//! them (a move needs write access to `cgroup.procs` of the common ancestor).
//!
//! Without a pidfd from the kernel (older kernels, or a datagram that passed
//! descriptors, which take the pidfd's room: see `notify::receive`), the pid is
//! opened as a pidfd (its cgroup id then read the same way), and without
//! `PIDFD_GET_INFO` the check reads `/proc/<pid>/cgroup`, as before. Then a
//! sender already gone (reaped) is believed, as before: the socket names the run.

use std::path::Path;
use std::sync::Arc;

use super::notify::Sender;
use crate::cgroup::Cgroup;
use crate::procfs;

/// What the agent knows about a run's cgroups for this check.
#[derive(Default, Clone)]
pub struct RunCgroupIds(Arc<[u64]>);

/// The verdict on one sender: inside, outside, or unknown (`None`: believed).
pub fn inside(
    cg: &Cgroup,
    known: &mut RunCgroupIds,
    proc_root: &Path,
    sender: &Sender,
) -> Option<bool> {
    let by_procfs = || {
        sender
            .pid
            .and_then(|pid| cg.contains_process(proc_root, pid))
    };
    let id = match &sender.pidfd {
        Some(pidfd) => procfs::pidfd_cgroup_id(pidfd),
        None => match sender.pid.map(procfs::pidfd_open) {
            Some(Ok(pidfd)) => procfs::pidfd_cgroup_id(&pidfd),
            Some(Err(e)) => Err(e),
            None => return None,
        },
    };
    let id = match id {
        Ok(id) => id,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
        Err(_) => return by_procfs(),
    };
    if known.0.contains(&id) {
        return Some(true);
    }
    match cg.subtree_ids() {
        Ok(ids) => {
            known.0 = ids.into();
            Some(known.0.contains(&id))
        }
        // The run's cgroups cannot be listed (out of files?): ask procfs.
        Err(_) => by_procfs(),
    }
}
