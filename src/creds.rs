//! Acting with a user's credentials: a short-lived thread that drops to the
//! user's uid and primary gid (and no supplementary groups) before it touches
//! anything, so the kernel refuses whatever that user could not do.
//!
//! Credentials are per thread in the kernel; the thread changes its real,
//! effective and saved ids (raw `setresuid`/`setresgid`, as rustix issues them,
//! not glibc's process-wide wrappers) and ends when the work is done, so the
//! rest of the process keeps root's.
//!
//! A leaf module.

use std::io;

/// The primary group of `uid` (`getpwuid_r(3)`), if NSS knows the user.
pub fn primary_gid(uid: u32) -> Option<u32> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids); it is
    // only read after getpwuid_r has filled it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pwd` and `result` live on this
    // stack frame and `buf` is a live allocation of `buf.len()` bytes.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_gid)
}

/// The group a user NSS does not know acts with: `nogroup`, which owns nothing.
const NOGROUP: u32 = 65534;

/// Runs `f` as user `uid` (its primary group, no supplementary groups) on a
/// thread of its own. Root (uid 0) is trusted as root: `f` runs here.
pub fn as_user<T: Send>(uid: u32, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    if uid == 0 {
        return Ok(f());
    }
    let gid = primary_gid(uid).unwrap_or(NOGROUP);
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<T> {
            use rustix::process::{Gid, Uid};
            use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
            let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
            set_thread_groups(&[])?;
            set_thread_res_gid(g, g, g)?;
            set_thread_res_uid(u, u, u)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("the thread acting as the user panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_has_the_users_ids_and_the_caller_keeps_its_own() {
        let before = rustix::process::geteuid();
        let (uid, euid) = as_user(65534, || {
            (
                rustix::process::getuid().as_raw(),
                rustix::process::geteuid().as_raw(),
            )
        })
        .unwrap();
        if before.is_root() {
            assert_eq!((uid, euid), (65534, 65534));
        }
        assert_eq!(rustix::process::geteuid(), before);
    }
}
