//! What pidfs says of a pidfd (`ioctl(PIDFD_GET_INFO)`, Linux ≥ 6.13). See pidfd_open(2).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// The id of the cgroup2 cgroup the process behind a pidfd is in, or was in when
/// it exited: the inode number of that cgroup's directory (`ioctl(PIDFD_GET_INFO)`,
/// Linux ≥ 6.13; of a process already reaped, Linux ≥ 6.15). An error on older
/// kernels (ENOTTY, EINVAL; ESRCH for a process reaped).
pub fn cgroup_id(pidfd: impl AsFd) -> io::Result<u64> {
    /// `struct pidfd_info` as Linux 6.13 first defined it (64 bytes); later
    /// kernels take this size and fill what it has room for.
    #[repr(C)]
    struct PidfdInfo {
        mask: u64,
        cgroupid: u64,
        rest: [u32; 12],
    }
    const PIDFD_INFO_CGROUPID: u64 = 1 << 2;
    // Also the exit information, which holds the cgroup id of a process reaped.
    const PIDFD_INFO_EXIT: u64 = 1 << 3;
    // _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info)
    const PIDFD_GET_INFO: libc::c_ulong =
        (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_CGROUPID | PIDFD_INFO_EXIT,
        cgroupid: 0,
        rest: [0; 12],
    };
    // SAFETY: `info` is a live, writable struct of the size the request encodes; the
    // pidfd is borrowed for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            pidfd.as_fd().as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    if rc != 0 {
        return Err(super::last_error());
    }
    if info.mask & PIDFD_INFO_CGROUPID == 0 {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    Ok(info.cgroupid)
}
