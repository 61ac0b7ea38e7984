//! Descriptors from file handles (`open_by_handle_at(2)`), which rustix does not wrap.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `MAX_HANDLE_SZ` (linux/fcntl.h): the longest `f_handle` of a file handle.
pub const MAX_HANDLE_SZ: usize = 128;

/// `open_by_handle_at(mount, handle, O_PATH | O_DIRECTORY | O_CLOEXEC)`: the
/// directory a `struct file_handle` names (as fanotify reports it: a 4-byte
/// `handle_bytes`, a 4-byte `handle_type`, then `handle_bytes` bytes) on the
/// filesystem of `mount`. `None` when the handle is malformed, too long, or
/// names nothing that can be opened (CAP_DAC_READ_SEARCH needed).
pub fn open_dir_by_handle(mount: impl AsFd, handle: &[u8]) -> Option<OwnedFd> {
    if handle.len() < 8 || handle.len() > 8 + MAX_HANDLE_SZ {
        return None;
    }
    let declared = u32::from_ne_bytes(handle[..4].try_into().ok()?) as usize;
    if declared > handle.len() - 8 {
        return None;
    }
    // `struct file_handle` wants 4-byte alignment: its bytes in u32 words.
    let mut words: Vec<u32> = handle
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_ne_bytes(w)
        })
        .collect();
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `words` is a live, 4-aligned buffer holding a `struct file_handle`
    // (handle_bytes, handle_type, then handle_bytes bytes, checked above to lie
    // within it) for the duration of the call; `mount` is an open fd.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_fd().as_raw_fd(),
            words.as_mut_ptr().cast::<libc::file_handle>(),
            flags,
        )
    };
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
