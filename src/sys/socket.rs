//! Socket options that neither rustix nor std have: the peer's pidfd
//! (`SO_PEERPIDFD`) and pidfds attached to datagrams (`SO_PASSPIDFD`), Linux ≥ 6.5.
//! See socket(7), unix(7).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD)`: a pidfd of the process that
/// connected (Linux ≥ 6.5). `ENOPROTOOPT` on older kernels.
pub fn peer_pidfd(sock: impl AsFd) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid for writes of the sizes given; the socket fd is
    // borrowed for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 && fd >= 0 {
        // SAFETY: on success the kernel installed a new descriptor that nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Err(super::last_error())
}

/// `setsockopt(fd, SOL_SOCKET, SO_PASSPIDFD, 1)`: every datagram received on
/// `sock` carries a pidfd of its sender (`SCM_PIDFD`, Linux ≥ 6.5).
pub fn set_passpidfd(sock: impl AsFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a live c_int of the size given; the socket fd is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSPIDFD,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(super::last_error())
    }
}
