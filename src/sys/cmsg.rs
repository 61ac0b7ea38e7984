//! `recvmsg(2)` with the ancillary data the kernel attaches to a datagram of a
//! Unix socket: the sender's credentials (`SCM_CREDENTIALS`), the descriptors it
//! passed (`SCM_RIGHTS`) and its pidfd (`SCM_PIDFD`). See unix(7), cmsg(3).
//!
//! The room for them is counted with libc's `CMSG_SPACE`, never written as a
//! number. (rustix's `cmsg_space!` adds room to align a byte buffer; this
//! buffer is of `u64`s, aligned already, so the room offered is exact.)

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `SCM_PIDFD` (linux/socket.h; not in the libc crate).
const SCM_PIDFD: libc::c_int = 0x04;

/// `SCM_MAX_FD` (include/net/scm.h): the most descriptors one datagram passes.
pub const SCM_MAX_FD: usize = 253;

/// `CMSG_SPACE(len)`: the room one control message with `len` bytes of data
/// takes, its header and padding included.
const fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument (`unsafe` in libc only
    // because it is a C macro); `len` is a small constant here.
    unsafe { libc::CMSG_SPACE(len as libc::c_uint) as usize }
}

const INT: usize = std::mem::size_of::<libc::c_int>();

/// Room for everything the kernel attaches to one datagram, in the order it
/// writes them: the credentials, the passed descriptors (all of them, however
/// many), the pidfd (one descriptor). (No SCM_SECURITY: SO_PASSSEC is not set.)
pub const CONTROL_FULL: usize =
    cmsg_space(std::mem::size_of::<libc::ucred>()) + cmsg_space(SCM_MAX_FD * INT) + cmsg_space(INT);
/// Room for the credentials alone.
pub const CONTROL_CREDS: usize = cmsg_space(std::mem::size_of::<libc::ucred>());

/// What the kernel attached to one datagram.
#[derive(Debug, Default)]
pub struct Ancillary {
    /// The sender's pid (SCM_CREDENTIALS), if positive.
    pub pid: Option<i32>,
    /// A pidfd of the sender (SCM_PIDFD).
    pub pidfd: Option<OwnedFd>,
    /// The descriptors it passed (SCM_RIGHTS).
    pub passed: Vec<OwnedFd>,
}

/// Receives one datagram (`recvmsg(2)` with `MSG_DONTWAIT | MSG_CMSG_CLOEXEC`)
/// into `buf`, offering `control_len` bytes of room for ancillary data
/// (at most [`CONTROL_FULL`]; the kernel discards the descriptors that do not
/// fit). Returns the datagram's length and what was attached to it.
pub fn recv_with_ancillary(
    sock: impl AsFd,
    buf: &mut [u8],
    control_len: usize,
) -> io::Result<(usize, Ancillary)> {
    let mut control = [0u64; CONTROL_FULL.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len.min(CONTROL_FULL);
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all live and writable
    // for the sizes given; the socket fd is borrowed for the call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_fd().as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(super::last_error());
    }
    let mut got = Ancillary::default();
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // `msg_controllen` of `control` and return null at its end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null cmsg from CMSG_FIRSTHDR/NXTHDR is a whole header in `control`,
        // its data (cmsg_len bytes from the header) too; reads are unaligned-safe.
        unsafe {
            let header = std::ptr::read_unaligned(cmsg);
            let data = libc::CMSG_DATA(cmsg);
            let len =
                (header.cmsg_len as usize).saturating_sub(data.offset_from(cmsg.cast()) as usize);
            let ints = len / std::mem::size_of::<libc::c_int>();
            let int = |i: usize| std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
            match (header.cmsg_level, header.cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if len >= std::mem::size_of::<libc::ucred>() =>
                {
                    let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    got.pid = Some(cred.pid).filter(|&p| p > 0);
                }
                // The kernel installed these descriptors for us: each is ours to close.
                (libc::SOL_SOCKET, SCM_PIDFD) if ints >= 1 && int(0) >= 0 => {
                    got.pidfd = Some(OwnedFd::from_raw_fd(int(0)));
                }
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..ints {
                        got.passed.push(OwnedFd::from_raw_fd(int(i)));
                    }
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, got))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The room is what `CMSG_SPACE` says on Linux x86_64 and aarch64: a 16-byte
    /// header and the data, each padded to 8 bytes.
    #[test]
    fn room_is_cmsg_space() {
        assert_eq!(CONTROL_CREDS, 16 + 16);
        assert_eq!(CONTROL_FULL, 32 + (16 + 253 * 4 + 4) + (16 + 8));
    }
}
