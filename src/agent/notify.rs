//! sd_notify for runs: each run gets its own datagram socket (`NOTIFY_SOCKET`,
//! in its run directory), so the socket a message arrives on already names the
//! run, even when the sender (like `systemd-notify`) has exited by the time the
//! agent looks at it. The sender's pid comes with every message
//! (SO_PASSCRED → SCM_CREDENTIALS); the agent drops messages from processes
//! provably outside the run's cgroup.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// The largest message read; longer ones are cut (sd_notify messages are short).
pub const MAX_MESSAGE: usize = 1024;

/// What one datagram said. Several assignments may come in one datagram, one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// READY=1: initialization is over.
    pub ready: bool,
    /// WATCHDOG=1: a heartbeat.
    pub watchdog: bool,
    /// STOPPING=1: the workflow is shutting down by itself.
    pub stopping: bool,
    /// STATUS=…: free text.
    pub status: Option<String>,
    /// EXTEND_TIMEOUT_USEC=…: push the current phase's deadline to at least now + this.
    pub extend_usec: Option<u64>,
    /// WATCHDOG_USEC=…: the heartbeat timeout from now on.
    pub watchdog_usec: Option<u64>,
    /// X_WFCG_OUTPUT=1: the run's supervisor saw its command write output.
    pub output: bool,
}

/// Parses a datagram (`KEY=VALUE` lines; unknown keys are ignored, as sd_notify allows).
pub fn parse(datagram: &[u8]) -> Message {
    let text = String::from_utf8_lossy(datagram);
    let mut m = Message::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "READY" => m.ready |= value == "1",
            "WATCHDOG" => m.watchdog |= value == "1",
            "STOPPING" => m.stopping |= value == "1",
            "STATUS" => m.status = Some(value.chars().take(1024).collect()),
            "EXTEND_TIMEOUT_USEC" => m.extend_usec = value.trim().parse().ok(),
            "X_WFCG_OUTPUT" => m.output |= value == "1",
            "WATCHDOG_USEC" => m.watchdog_usec = value.trim().parse().ok().filter(|&v| v > 0),
            _ => {}
        }
    }
    m
}

/// Binds a run's notify socket at `path` (replacing a stale one), with SO_PASSCRED
/// set so every message carries its sender's credentials. Anyone may send:
/// messages are judged by their sender's cgroup, not by file permissions.
pub fn bind(path: &Path) -> std::io::Result<UnixDatagram> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let sock = UnixDatagram::bind(path)?;
    rustix::net::sockopt::set_socket_passcred(&sock, true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Receives one datagram (`recvmsg(2)`, non-blocking): its bytes and the sender's
/// pid from SCM_CREDENTIALS. The control buffer has room for credentials only:
/// file descriptors a sender passes (`systemd-notify` sends BARRIER=1 with a pipe
/// and waits for it to close) are discarded, and so closed, by the kernel.
pub fn receive(sock: impl AsFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<i32>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut pid = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmCredentials(cred) = m {
            pid = Some(cred.pid.as_raw_nonzero().get());
        }
    }
    Ok((msg.bytes, pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdnotify::send;

    #[test]
    fn parses_several_assignments_per_datagram() {
        let m = parse(
            b"READY=1\nSTATUS=cloning repo\nWATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000\nMAINPID=1\n",
        );
        assert_eq!(
            m,
            Message {
                ready: true,
                watchdog: true,
                stopping: false,
                status: Some("cloning repo".into()),
                extend_usec: Some(5_000_000),
                watchdog_usec: None,
                output: false,
            }
        );
        assert!(parse(b"X_WFCG_OUTPUT=1").output);
        assert_eq!(parse(b"garbage\xff\n=\nREADY=0"), Message::default());
        assert!(parse(b"STOPPING=1").stopping);
        assert_eq!(
            parse(b"WATCHDOG_USEC=2000000").watchdog_usec,
            Some(2_000_000)
        );
    }

    #[test]
    fn a_message_arrives_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 256];
        let (n, pid) = receive(&sock, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert_eq!(pid, Some(std::process::id() as i32));
        // Binding again replaces the stale socket file.
        drop(sock);
        let sock = bind(&path).unwrap();
        send(path.to_str().unwrap(), "WATCHDOG=1").unwrap();
        assert!(receive(&sock, &mut buf).is_ok());
    }
}
