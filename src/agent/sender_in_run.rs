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
//! No pidfd, no trust. The kernel attaches one to every datagram where it has
//! SO_PASSPIDFD, and the agent always offers room for it beside any descriptors a
//! sender passes (`notify::receive`): a datagram without one there is dropped. On
//! older kernels (and while the descriptor closer is stuck, when datagrams are
//! read with room for the credentials only: see `notify_hub`), the sender's pid
//! is opened as a pidfd at once; a sender already gone is dropped, never believed
//! (its pid may name another process by now).
//!
//! Without `PIDFD_GET_INFO` (Linux < 6.13) the cgroup is read from
//! `/proc/<pid>/cgroup` of the pidfd's own pid, and believed only if the pidfd
//! shows that process alive after the read (so the pid still named it).
//!
//! The run's supervisor is believed too wherever it lives ([`is`]): a root
//! `wfcg run` stays in its caller's cgroup, beside the run, and reports its
//! command's output and readiness from there.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

use super::notify::Sender;
use crate::cgroup::Cgroup;
use crate::procfs::{self, Identity};

/// What the agent knows about a run's cgroups for this check.
#[derive(Default, Clone)]
pub struct RunCgroupIds(Arc<[u64]>);

/// Whether `sender` is inside the run: only when the kernel says so.
pub fn inside(cg: &Cgroup, known: &mut RunCgroupIds, proc_root: &Path, sender: &Sender) -> bool {
    let opened;
    let pidfd = match &sender.pidfd {
        Some(pidfd) => pidfd.as_fd(),
        // Its room was there: the kernel attaches one to every datagram.
        None if sender.pidfd_expected => return false,
        None => match sender.pid.map(procfs::pidfd_open) {
            Some(Ok(fd)) => {
                opened = fd;
                opened.as_fd()
            }
            // Gone (or no pid at all): never believed.
            _ => return false,
        },
    };
    let id = match procfs::pidfd_cgroup_id(pidfd) {
        Ok(id) => id,
        // Reaped on a kernel that keeps no exit information (6.13, 6.14).
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return false,
        Err(_) => return by_procfs(cg, proc_root, pidfd),
    };
    if known.0.contains(&id) {
        return true;
    }
    match cg.subtree_ids() {
        Ok(ids) => {
            known.0 = ids.into();
            known.0.contains(&id)
        }
        // The run's cgroups cannot be listed (out of files?): ask procfs.
        Err(_) => by_procfs(cg, proc_root, pidfd),
    }
}

/// `/proc/<pid>/cgroup` of the process behind `pidfd`, believed only while the
/// pidfd shows it alive after the read (the pid named it then).
fn by_procfs(cg: &Cgroup, proc_root: &Path, pidfd: BorrowedFd<'_>) -> bool {
    let Some(pid) = procfs::pidfd_pid(pidfd) else {
        return false;
    };
    cg.contains_process(proc_root, pid) == Some(true) && procfs::pidfd_alive(pidfd)
}

/// Whether `sender` is the process `who` (the run's supervisor), by the
/// kernel's identity of its pidfd, taken as [`inside`] takes it. No pidfd, no trust.
pub fn is(who: &Identity, proc_root: &Path, sender: &Sender) -> bool {
    let same = |pidfd: BorrowedFd<'_>| {
        procfs::pidfd_identity(proc_root, pidfd).is_ok_and(|id| id.same(who))
    };
    match (&sender.pidfd, sender.pid) {
        (Some(pidfd), _) => same(pidfd.as_fd()),
        (None, Some(pid)) if !sender.pidfd_expected => {
            procfs::pidfd_open(pid).is_ok_and(|fd| same(fd.as_fd()))
        }
        _ => false,
    }
}
