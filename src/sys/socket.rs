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

/// `SO_PASSRIGHTS` (include/uapi/asm-generic/socket.h, Linux ≥ 6.16): 83 on every
/// architecture but alpha, mips, parisc and sparc, which wfcg does not target.
const SO_PASSRIGHTS: libc::c_int = 83;

/// `setsockopt(fd, SOL_SOCKET, SO_PASSRIGHTS, 0)`: senders cannot pass descriptors
/// (SCM_RIGHTS) on `sock` (their `sendmsg` fails), so none can reach a thread of
/// the agent whose final close of it could block. Set on a listening Unix stream
/// socket, the sockets it accepts inherit it. `Ok(false)`: the kernel has no such
/// option (before 6.16; `EINVAL`/`ENOPROTOOPT`): descriptors may still arrive.
pub fn refuse_passed_fds(sock: impl AsFd) -> io::Result<bool> {
    let zero: libc::c_int = 0;
    // SAFETY: `zero` is a live c_int of the size given; the socket fd is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = super::last_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) => Ok(false),
        _ => Err(e),
    }
}

/// If `fd` is a socket, `SO_LINGER {on, 0}`: its close is abortive (a reset for
/// TCP) and never waits for unsent data, whatever linger its sender set. Anything
/// else (not a socket, an option the family lacks) is left as it is.
pub fn abortive_close(fd: impl AsFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a live struct of the size given; the fd is borrowed. On a
    // descriptor that is no socket the call fails with ENOTSOCK and changes nothing.
    let _ = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Sockets for tests of what the agent does with descriptors a user passes.
#[cfg(test)]
pub mod testing {
    use std::io::Write;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::time::Duration;

    /// A TCP socket whose close, were it the last, would wait an hour: it
    /// lingers on a full send buffer its peer (returned, to keep) never reads.
    pub fn lingering_socket() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        rustix::net::sockopt::set_socket_linger(&client, Some(Duration::from_secs(3600))).unwrap();
        client.set_nonblocking(true).unwrap();
        let chunk = [0u8; 65536];
        while client.write(&chunk).is_ok() {}
        (client, peer)
    }

    /// Sends the datagram `data` to the socket at `path` with `fds` passed.
    pub fn send_with_fds_to(
        sock: &std::os::unix::net::UnixDatagram,
        path: &std::path::Path,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) {
        sock.connect(path).unwrap();
        send_with_fds(sock, data, fds);
    }

    /// Sends `data` on `sock` with `fds` passed (SCM_RIGHTS).
    pub fn send_with_fds(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); 128];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)));
        let sent = rustix::net::sendmsg(
            sock,
            &[std::io::IoSlice::new(data)],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        assert_eq!(sent, data.len());
    }
}
