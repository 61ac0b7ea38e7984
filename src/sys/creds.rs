//! Credentials: a thread's filesystem ids (`setfsuid(2)`, `setfsgid(2)`, which
//! rustix does not wrap), and a process's ids for good (`setgroups(2)`,
//! `setgid(2)`, `setuid(2)` through libc, which sets them on every thread).

use std::io;

/// `setfsgid(gid)` then `setfsuid(uid)` on this thread; returns the filesystem
/// gid and uid in force afterwards (asked with an invalid id, each call returns
/// the current value unchanged), for the caller to check.
pub fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsuid/setfsgid take a plain id and change only this thread's
    // filesystem credentials.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        (
            libc::setfsgid(u32::MAX) as u32,
            libc::setfsuid(u32::MAX) as u32,
        )
    }
}

/// Puts this thread's filesystem ids back to root's (0 is always allowed to a
/// thread whose real uid is 0).
pub fn restore_root_fs_ids() {
    // SAFETY: as in `set_fs_ids`.
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(super::last_error())
    }
}

/// `setgroups(2)` for the whole process.
pub fn set_groups(gids: &[u32]) -> io::Result<()> {
    // SAFETY: `gids` is a live slice of that many gids for the call.
    check(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) })
}

/// `setgid(2)` for the whole process (real, effective and saved gid, as root).
pub fn set_gid(gid: u32) -> io::Result<()> {
    // SAFETY: setgid takes a plain id.
    check(unsafe { libc::setgid(gid) })
}

/// `setuid(2)` for the whole process (real, effective and saved uid, as root).
pub fn set_uid(uid: u32) -> io::Result<()> {
    // SAFETY: setuid takes a plain id.
    check(unsafe { libc::setuid(uid) })
}
