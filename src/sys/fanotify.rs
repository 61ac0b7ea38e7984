//! A fanotify group and its marks (`fanotify_init(2)`, `fanotify_mark(2)`),
//! which rustix does not wrap. Reading and parsing the events is plain I/O on
//! the group's descriptor (see `lockwatch`). See fanotify(7).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `fanotify_init(flags, event_f_flags)`: a new fanotify group (CAP_SYS_ADMIN).
pub fn init(flags: libc::c_uint, event_f_flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: fanotify_init takes two plain integers.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(super::last_error());
    }
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(group, flags, mask, dir, NULL)`: adds or removes (`flags`) the
/// events of `mask` on the object `dir` names (with `FAN_MARK_FILESYSTEM`, its
/// whole filesystem).
pub fn mark(group: impl AsFd, flags: libc::c_uint, mask: u64, dir: impl AsFd) -> io::Result<()> {
    // SAFETY: both descriptors are borrowed for the call; a null path makes the
    // kernel use `dir` itself.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_fd().as_raw_fd(),
            flags,
            mask,
            dir.as_fd().as_raw_fd(),
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(super::last_error())
    }
}
