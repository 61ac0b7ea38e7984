//! sd_notify for runs: each run gets its own datagram socket (`NOTIFY_SOCKET`,
//! in its run directory), so the socket a message arrives on already names the
//! run, even when the sender (like `systemd-notify`) has exited by the time the
//! agent looks at it. The sender's pid and a pidfd of it come with every
//! message (SO_PASSCRED → SCM_CREDENTIALS, SO_PASSPIDFD → SCM_PIDFD); the agent
//! takes only messages the kernel shows coming from inside the run's cgroup
//! (sender.rs).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

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
    /// X_WFCG_NEW_LINE=1: … and a line unlike its recent ones (progress).
    pub new_line: bool,
    /// X_WFCG_REPEAT=COUNT SECS LINE: its newest line repeats an earlier one.
    pub repeat: Option<Repeat>,
    /// X_WFCG_READY_ON_FIRST_OUTPUT=1 (with READY=1): the supervisor found the
    /// ready condition met by the command's first bytes of output.
    pub ready_on_first_output: bool,
}

/// A line of output that repeats an earlier one with only numbers changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    /// How many times it has been seen.
    pub count: u64,
    /// Seconds since it was first seen (at most a year).
    pub secs: u64,
    /// The newest instance, cut to [`crate::api::REPEAT_LINE_MAX`] characters.
    pub line: String,
}

impl Repeat {
    /// `COUNT SECS LINE`; `None` when malformed.
    fn parse(value: &str) -> Option<Repeat> {
        let mut parts = value.splitn(3, ' ');
        let count = parts.next()?.parse().ok()?;
        let secs = parts.next()?.parse::<u64>().ok()?.min(365 * 24 * 3600);
        let line = parts
            .next()
            .unwrap_or_default()
            .chars()
            .take(crate::api::REPEAT_LINE_MAX)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        Some(Repeat { count, secs, line })
    }
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
            "X_WFCG_NEW_LINE" => m.new_line |= value == "1",
            crate::api::REPEAT_NOTIFY => m.repeat = Repeat::parse(value),
            "X_WFCG_READY_ON_FIRST_OUTPUT" => m.ready_on_first_output |= value == "1",
            "WATCHDOG_USEC" => m.watchdog_usec = value.trim().parse().ok().filter(|&v| v > 0),
            _ => {}
        }
    }
    m
}

/// Binds a run's notify socket at `path` (replacing a stale one), with SO_PASSCRED
/// and SO_PASSPIDFD set so every message carries its sender's pid and, on Linux ≥
/// 6.5, a pidfd of the sender (SCM_PIDFD). Anyone may send: messages are judged by
/// their sender's cgroup, not by file permissions.
pub fn bind(path: &Path) -> std::io::Result<UnixDatagram> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let sock = UnixDatagram::bind(path)?;
    rustix::net::sockopt::set_socket_passcred(&sock, true)?;
    // Older kernels have no SCM_PIDFD: the sender is then known by its pid only.
    let _ = set_passpidfd(&sock);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

fn set_passpidfd(sock: &UnixDatagram) -> std::io::Result<()> {
    crate::sys::socket::set_passpidfd(sock)
}

/// Who sent a datagram, as the kernel says.
#[derive(Debug, Default)]
pub struct Sender {
    /// Its pid (SCM_CREDENTIALS), in the agent's pid namespace.
    pub pid: Option<i32>,
    /// A pidfd of exactly that process (SCM_PIDFD, Linux ≥ 6.5), taken when it
    /// sent: it names the sender even after it exited and its pid was reused.
    pub pidfd: Option<OwnedFd>,
    /// Whether the kernel attaches a pidfd to every datagram of this socket and
    /// room for it was offered: then a datagram without one is not believed.
    pub pidfd_expected: bool,
    /// Descriptors it passed (SCM_RIGHTS), at most [`SCM_MAX_FD`]: see [`receive`].
    pub passed: Vec<OwnedFd>,
}

pub use crate::sys::cmsg::SCM_MAX_FD;
use crate::sys::cmsg::{CONTROL_CREDS, CONTROL_FULL};

/// Whether this kernel attaches the sender's pidfd to datagrams (SO_PASSPIDFD,
/// Linux ≥ 6.5), probed once on a socket of our own.
pub fn kernel_passes_pidfd() -> bool {
    static PASSES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PASSES.get_or_init(|| {
        UnixDatagram::unbound()
            .and_then(|s| set_passpidfd(&s))
            .is_ok()
    })
}

/// Receives one datagram (`recvmsg(2)`, non-blocking): its bytes and its sender.
///
/// The kernel writes the credentials, then the descriptors the sender passed
/// (`systemd-notify` sends BARRIER=1 with a pipe and waits for it to close), then
/// the pidfd, each only if the room left holds it. With `room_for_fds` the room
/// holds them all (up to [`SCM_MAX_FD`] descriptors), so a sender cannot push the
/// pidfd out by passing descriptors; they are returned in [`Sender::passed`]:
/// closing one may block (a file on a FUSE mount whose daemon never answers the
/// flush), so they must be closed where that cannot stall the agent. Without it
/// only the credentials fit: the kernel discards the descriptors itself, and the
/// pidfd too (the sender is then judged by its pid, see sender.rs).
pub fn receive(
    sock: impl AsFd,
    buf: &mut [u8],
    room_for_fds: bool,
) -> std::io::Result<(usize, Sender)> {
    let room = if room_for_fds {
        CONTROL_FULL
    } else {
        CONTROL_CREDS
    };
    let (n, got) = crate::sys::cmsg::recv_with_ancillary(sock, buf, room)?;
    let sender = Sender {
        pid: got.pid,
        pidfd: got.pidfd,
        pidfd_expected: room_for_fds && kernel_passes_pidfd(),
        passed: got.passed,
    };
    Ok((n, sender))
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
                new_line: false,
                repeat: None,
                ready_on_first_output: false,
            }
        );
        assert!(parse(b"X_WFCG_OUTPUT=1").output);
        let m = parse(crate::api::READY_ON_FIRST_OUTPUT_NOTIFY.as_bytes());
        assert!(m.ready && m.ready_on_first_output, "{m:?}");
        assert_eq!(parse(b"garbage\xff\n=\nREADY=0"), Message::default());
        assert!(parse(b"STOPPING=1").stopping);
        let m =
            parse(b"X_WFCG_OUTPUT=1\nX_WFCG_NEW_LINE=1\nX_WFCG_REPEAT=7 63 retry in 5s \x1b[2J");
        assert!(m.output && m.new_line);
        let r = m.repeat.unwrap();
        assert_eq!((r.count, r.secs), (7, 63));
        assert_eq!(r.line, "retry in 5s ?[2J");
        assert_eq!(parse(b"X_WFCG_REPEAT=x 1 a").repeat, None);
        let long = format!("X_WFCG_REPEAT=2 99999999999 {}", "a".repeat(900));
        let r = parse(long.as_bytes()).repeat.unwrap();
        assert_eq!(
            (r.secs, r.line.len()),
            (365 * 24 * 3600, crate::api::REPEAT_LINE_MAX)
        );
        assert_eq!(
            parse(b"WATCHDOG_USEC=2000000").watchdog_usec,
            Some(2_000_000)
        );
    }

    /// Passed descriptors (systemd-notify's barrier pipe, or as many as a datagram
    /// can carry) come back to be closed, or are closed by the kernel when no room
    /// is offered; the pid comes either way, and with room the pidfd too: passing
    /// descriptors never pushes the kernel's pidfd out.
    #[test]
    fn passed_descriptors_are_returned_beside_the_pidfd_or_discarded_by_the_kernel() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = bind(&path).unwrap();
        let to = UnixDatagram::unbound().unwrap();
        let me = Some(std::process::id() as i32);
        let mut buf = [0u8; 256];
        for (room, n) in [
            (true, 1),
            (true, SCM_MAX_FD),
            (false, 1),
            (false, SCM_MAX_FD),
        ] {
            let (mut read_end, write_end) = std::io::pipe().unwrap();
            let fds = vec![std::os::fd::AsFd::as_fd(&write_end); n];
            let mut space =
                [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
            let addr = rustix::net::SocketAddrUnix::new(&path).unwrap();
            rustix::net::sendmsg_addr(
                &to,
                &addr,
                &[std::io::IoSlice::new(b"BARRIER=1")],
                &mut control,
                rustix::net::SendFlags::empty(),
            )
            .unwrap();
            drop(write_end);
            let (len, sender) = receive(&sock, &mut buf, room).unwrap();
            assert_eq!(&buf[..len], b"BARRIER=1");
            assert_eq!(sender.pid, me);
            assert_eq!(sender.passed.len(), if room { n } else { 0 });
            assert_eq!(sender.pidfd_expected, room && kernel_passes_pidfd());
            if sender.pidfd_expected {
                let pidfd = sender.pidfd.as_ref().expect("the pidfd was pushed out");
                assert_eq!(crate::procfs::pidfd_pid(pidfd), me);
            }
            drop(sender);
            // Every copy of the write end is closed: the reader sees the end.
            rustix::fs::fcntl_setfl(&read_end, rustix::fs::OFlags::NONBLOCK).unwrap();
            assert_eq!(
                read_end.read(&mut buf).map_err(|e| e.kind()),
                Ok(0),
                "a copy of the passed pipe is still open (room {room}, {n} passed)"
            );
        }
    }

    #[test]
    fn a_message_arrives_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 256];
        let (n, sender) = receive(&sock, &mut buf, true).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert_eq!(sender.pid, Some(std::process::id() as i32));
        let pidfd = sender.pidfd.expect("SCM_PIDFD (Linux >= 6.5)");
        assert_eq!(
            crate::procfs::pidfd_pid(&pidfd),
            Some(std::process::id() as i32)
        );
        // Binding again replaces the stale socket file.
        drop(sock);
        let sock = bind(&path).unwrap();
        send(path.to_str().unwrap(), "WATCHDOG=1").unwrap();
        assert!(receive(&sock, &mut buf, true).is_ok());
    }
}
