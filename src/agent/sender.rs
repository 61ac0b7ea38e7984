//! Whether a notify message comes from inside its run: the check every
//! heartbeat pays, so it reads no procfs file on the way it usually goes.
//!
//! The sender's pid (SCM_CREDENTIALS) is turned into a pidfd, and the pidfd into
//! the id of the cgroup that process is in (`PIDFD_GET_INFO`, Linux ≥ 6.13): the
//! answer is about that one process even if its pid is reused meanwhile. The id
//! is compared with the ids of the run's cgroups (the inode numbers of their
//! directories), learned once per run and looked up again only when an unknown
//! id shows up (a leaf made since, or a sender outside the run).
//!
//! Why a known id is enough: a cgroup's id is never reused while the system
//! runs, and a cgroup2 directory can only be renamed within its parent, so a
//! cgroup once below the run stays below it. The run's cgroups are root's: a
//! user cannot create one below them or move a process into or out of them
//! (a move needs write access to `cgroup.procs` of the common ancestor).
//!
//! On kernels without `PIDFD_GET_INFO`, or when no pidfd can be had, the
//! check falls back to `/proc/<pid>/cgroup`, as before. A sender already gone
//! is believed, as before: the socket names the run.

use std::path::Path;
use std::sync::Arc;

use crate::cgroup::Cgroup;
use crate::procfs;

/// What the agent knows about a run's cgroups for this check.
#[derive(Default, Clone)]
pub struct RunCgroupIds(Arc<[u64]>);

/// The verdict on one sender: inside, outside, or unknown (gone: believed).
pub fn inside(cg: &Cgroup, known: &mut RunCgroupIds, proc_root: &Path, pid: i32) -> Option<bool> {
    let by_procfs = || cg.contains_process(proc_root, pid);
    let pidfd = match procfs::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
        Err(_) => return by_procfs(),
    };
    let id = match procfs::pidfd_cgroup_id(&pidfd) {
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
