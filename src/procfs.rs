//! Processes through procfs and pidfds: identities that survive PID reuse,
//! signals that cannot hit a recycled PID, and host-wide scans for a run's marker.
//!
//! A leaf module: it knows `/proc` (whose root the caller passes in) and nothing
//! of runs or the agent.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal};

pub mod markers;
pub use markers::{EnvFilter, EnvScan, SharedEnvScan, pids_with_env};

/// The whole of a small kernel file (procfs, cgroupfs) in as few system calls
/// as the kernel allows: open, read into a page-sized buffer until the end,
/// close. `fs::read` first asks for a size these files do not have, then reads
/// in small growing steps: three to nine calls more per file, which adds up
/// over every process of a host.
pub fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    read_small_file(fs::File::open(path)?)
}

/// [`read_small`] of a file already open (read from where it stands to its end).
pub fn read_small_file(mut file: fs::File) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`read_small`] of a text file.
pub fn read_small_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read_small(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// The start time of a process in clock ticks since boot: field 22 of
/// `/proc/<pid>/stat`, read as the raw integer (never through a float), so that
/// (pid, start time) names one process for good.
pub fn starttime(proc_root: &Path, pid: i32) -> Option<u64> {
    let text = read_small_string(&proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat_starttime(&text)
}

/// Whether process `pid` is in the same namespaces of each of `kinds` (names
/// under `/proc/<pid>/ns`: `cgroup`, `mnt`, …) as the process reading: the
/// device and inode of each `ns` link compared. `false` when one cannot be read.
pub fn shares_namespaces(proc_root: &Path, pid: i32, kinds: &[&str]) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |who: &str, kind: &str| {
        std::fs::metadata(proc_root.join(who).join("ns").join(kind))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    kinds.iter().all(|kind| {
        let theirs = id(&pid.to_string(), kind);
        theirs.is_some() && theirs == id("self", kind)
    })
}

/// Field `n` (counted from 1, as in proc(5)) of a `/proc/<pid>/stat` line, from
/// field 3 on. The command (field 2) may hold spaces and parentheses, so fields
/// are counted from its last `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n.checked_sub(3)?)
}

/// Field 22 (starttime, clock ticks since boot) of a `/proc/<pid>/stat` line.
pub fn parse_stat_starttime(stat: &str) -> Option<u64> {
    stat_field(stat, 22)?.parse().ok()
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let utime: u64 = stat_field(stat, 14)?.parse().ok()?;
    let stime: u64 = stat_field(stat, 15)?.parse().ok()?;
    Some(utime + stime)
}

/// The process state letter (R, S, D, Z, T, …) from `/proc/<pid>/stat`.
pub fn state(proc_root: &Path, pid: i32) -> Option<char> {
    let text = read_small_string(&proc_root.join(pid.to_string()).join("stat")).ok()?;
    stat_field(&text, 3)?.chars().next()
}

/// The command line of a process, arguments joined by spaces (`/proc/<pid>/cmdline`),
/// or its `comm` in brackets for kernel threads and zombies.
pub fn cmdline(proc_root: &Path, pid: i32) -> Option<String> {
    let dir = proc_root.join(pid.to_string());
    let raw = read_small(&dir.join("cmdline")).ok()?;
    if raw.is_empty() {
        let comm = read_small_string(&dir.join("comm")).ok()?;
        return Some(format!("[{}]", comm.trim_end()));
    }
    let parts: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some(parts.join(" "))
}

/// The bytes a process has read and written through system calls (`rchar` and
/// `wchar` of `/proc/<pid>/io`: files, pipes and sockets alike; its threads,
/// live and ended, not its children). `None` when it is gone or unreadable.
pub fn io_bytes(proc_root: &Path, pid: i32) -> Option<IoBytes> {
    let text = read_small_string(&proc_root.join(pid.to_string()).join("io")).ok()?;
    parse_io_bytes(&text)
}

/// A process's `rchar` and `wchar`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoBytes {
    pub read: u64,
    pub written: u64,
}

/// `rchar` and `wchar` of a `/proc/<pid>/io` text.
pub fn parse_io_bytes(text: &str) -> Option<IoBytes> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(IoBytes {
        read: field("rchar:")?,
        written: field("wchar:")?,
    })
}

/// Every numeric entry of `/proc`.
pub fn all_pids(proc_root: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// What `/proc/<pid>/stat` says of a process's place in the process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (R, S, D, Z, T, …).
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// `PF_*` flags (field 9).
    pub flags: u64,
    /// Clock ticks since boot, the raw integer (see [`starttime`]).
    pub starttime: u64,
}

/// `PF_KTHREAD`: the process is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

impl Stat {
    /// Whether this is a kernel thread (which no cgroup move applies to).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses a `/proc/<pid>/stat` line (fields as in proc(5)).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let num = |n: usize| -> Option<i64> { stat_field(text, n)?.parse().ok() };
    Some(Stat {
        state: stat_field(text, 3)?.chars().next()?,
        ppid: num(4)? as i32,
        pgrp: num(5)? as i32,
        session: num(6)? as i32,
        flags: stat_field(text, 9)?.parse().ok()?,
        starttime: stat_field(text, 22)?.parse().ok()?,
    })
}

/// [`Stat`] of a process; `None` when it is gone.
pub fn stat(proc_root: &Path, pid: i32) -> Option<Stat> {
    let text = read_small_string(&proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&text)
}

/// The children of a process: the union of `/proc/<pid>/task/<tid>/children`
/// over its threads (each thread forks children of its own). Only complete
/// while the process cannot fork (frozen or stopped); a hint otherwise.
pub fn children(proc_root: &Path, pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = read_small_string(&task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// The real, effective and saved uids of a process (the `Uid:` line of
/// `/proc/<pid>/status`).
pub fn uids(proc_root: &Path, pid: i32) -> Option<[u32; 3]> {
    let text = read_small_string(&proc_root.join(pid.to_string()).join("status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some([ids.next()??, ids.next()??, ids.next()??])
}

/// The one uid a process runs as, when its real, effective and saved uids are
/// the same (`None` when they differ, as in a setuid program).
pub fn sole_uid(uids: [u32; 3]) -> Option<u32> {
    (uids[0] == uids[1] && uids[1] == uids[2]).then_some(uids[0])
}

/// At most `limit` bytes of a process's environment (`/proc/<pid>/environ`), as
/// `VAR=VALUE` entries. Not read from a process in uninterruptible sleep (D):
/// reading another process's memory takes its mmap lock, which such a process
/// may hold, and the reader would hang with it.
pub fn environ(proc_root: &Path, pid: i32, limit: u64) -> Vec<Vec<u8>> {
    use std::io::Read;
    if state(proc_root, pid) == Some('D') {
        return Vec::new();
    }
    let Ok(file) = fs::File::open(proc_root.join(pid.to_string()).join("environ")) else {
        return Vec::new();
    };
    let mut raw = Vec::new();
    if file.take(limit).read_to_end(&mut raw).is_err() {
        return Vec::new();
    }
    raw.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The wall-clock time a process started, from its stat start time (clock
/// ticks since boot): now, less the time since boot (`/proc/uptime`, on the
/// clock start times count in), plus the start time. Finer than the whole
/// seconds of `btime` in `/proc/stat`. `None` when `/proc/uptime` is unreadable.
pub fn start_wall_time(proc_root: &Path, starttime: u64) -> Option<std::time::SystemTime> {
    let uptime = fs::read_to_string(proc_root.join("uptime")).ok()?;
    let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let since_boot = Duration::from_nanos(starttime.saturating_mul(1_000_000_000) / ticks);
    let ago = Duration::from_secs_f64(up).saturating_sub(since_boot);
    Some(std::time::SystemTime::now() - ago)
}

/// The inverse of [`start_wall_time`]: the stat start time (clock ticks since
/// boot) of a process that would have started at `at`; 0 for a time before
/// boot. `None` when `/proc/uptime` is unreadable.
pub fn ticks_at(proc_root: &Path, at: std::time::SystemTime) -> Option<u64> {
    let uptime = fs::read_to_string(proc_root.join("uptime")).ok()?;
    let up = Duration::try_from_secs_f64(uptime.split_whitespace().next()?.parse().ok()?).ok()?;
    let ago = std::time::SystemTime::now()
        .duration_since(at)
        .unwrap_or_default();
    let since_boot = up.saturating_sub(ago);
    let ticks = u128::from(rustix::param::clock_ticks_per_second().max(1));
    u64::try_from(since_boot.as_nanos() * ticks / 1_000_000_000).ok()
}

/// `pidfd_open(2)`: a file descriptor that refers to this one process for as
/// long as it is held, whatever happens to the PID number.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// `pidfd_send_signal(2)`: signals exactly the process the pidfd refers to.
pub fn pidfd_signal(pidfd: impl AsFd, signal: Signal) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(pidfd, signal)?)
}

/// Whether the process behind a pidfd is still running: a pidfd polls readable
/// once the process has exited (`poll(2)` with a zero timeout).
pub fn pidfd_alive(pidfd: impl AsFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(0))
}

/// The id of the cgroup2 cgroup the process behind a pidfd is in, or was in when
/// it exited: the inode number of that cgroup's directory (`ioctl(PIDFD_GET_INFO)`,
/// Linux ≥ 6.13; of a process already reaped, Linux ≥ 6.15). Read through the
/// pidfd, so it is that one process's, whatever becomes of its pid. An error on
/// older kernels (ENOTTY, EINVAL; ESRCH for a process reaped).
pub fn pidfd_cgroup_id(pidfd: impl AsFd) -> io::Result<u64> {
    crate::sys::pidfd::cgroup_id(pidfd)
}

/// The PID a pidfd refers to, from the `Pid:` line of `/proc/self/fdinfo/<fd>`
/// (-1 there once the process is gone, which this returns as `None`).
pub fn pidfd_pid(pidfd: impl AsFd) -> Option<i32> {
    let fd = pidfd.as_fd().as_raw_fd();
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let pid: i32 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    (pid > 0).then_some(pid)
}

/// Who a process is, for the whole boot: what the agent records of a run's
/// supervisor when the run is created, and compares a caller with later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    /// Its start time in clock ticks after boot (the raw `stat` field 22).
    pub starttime: u64,
    /// The inode of its pidfd on pidfs (Linux ≥ 6.9): unique to this process for the
    /// whole boot, never reused. `None` where pidfds are anonymous inodes.
    pub ino: Option<u64>,
}

impl Identity {
    /// Whether `self` and `other` are the same process: by pidfs inode where both
    /// have one, else by pid and start time.
    pub fn same(&self, other: &Identity) -> bool {
        match (self.ino, other.ino) {
            (Some(a), Some(b)) => a == b,
            _ => self.pid == other.pid && self.starttime == other.starttime,
        }
    }
}

/// `PIDFS_MAGIC` (linux/magic.h): the file system of pidfds on Linux ≥ 6.9.
const PIDFS_MAGIC: i64 = 0x5049_4446;

/// The identity of the live process behind `pidfd`: its pidfs inode (`fstat(2)` of
/// the pidfd, when `fstatfs(2)` says pidfs), its pid (from the pidfd's fdinfo) and
/// its start time (`<proc_root>/<pid>/stat`), read while the pidfd shows it alive
/// before and after, so the pid named that process at the read. ESRCH when it is
/// gone: a dead process has no identity to compare, whatever its pid is now.
pub fn pidfd_identity(proc_root: &Path, pidfd: impl AsFd) -> io::Result<Identity> {
    let gone = || io::Error::from_raw_os_error(libc::ESRCH);
    let pidfd = pidfd.as_fd();
    // `f_type`'s integer type differs by architecture.
    #[allow(clippy::unnecessary_cast)]
    let ino = match rustix::fs::fstatfs(pidfd) {
        Ok(fs) if fs.f_type as i64 == PIDFS_MAGIC => Some(rustix::fs::fstat(pidfd)?.st_ino),
        _ => None,
    };
    let pid = pidfd_pid(pidfd).ok_or_else(gone)?;
    let starttime = starttime(proc_root, pid).ok_or_else(gone)?;
    if !pidfd_alive(pidfd) {
        return Err(gone());
    }
    Ok(Identity {
        pid,
        starttime,
        ino,
    })
}

/// The kernel's wait channel and stack of a process, for reports on processes
/// that do not die (`/proc/<pid>/wchan`, `/proc/<pid>/stack`, the latter root only).
pub fn wchan_and_stack(proc_root: &Path, pid: i32) -> (Option<String>, Option<String>) {
    let dir = proc_root.join(pid.to_string());
    let wchan = fs::read_to_string(dir.join("wchan")).ok();
    let stack = fs::read_to_string(dir.join("stack")).ok();
    (wchan, stack)
}

/// The socket inodes listening on TCP `port` (IPv4 or IPv6) in the network
/// namespace of `pid`, from `/proc/<pid>/net/tcp{,6}`.
pub fn tcp_listeners(proc_root: &Path, pid: i32, port: u16) -> Vec<u64> {
    let dir = proc_root.join(pid.to_string()).join("net");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .flat_map(|text| parse_tcp_listeners(&text, port))
        .collect()
}

/// The inodes of the sockets in LISTEN state on `port` in a `/proc/net/tcp{,6}` text.
pub fn parse_tcp_listeners(text: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            let listening = *f.get(3)? == LISTEN;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether `pid` holds an open fd on one of the socket `inodes`.
pub fn holds_socket(proc_root: &Path, pid: i32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_bytes_are_read_and_written_characters() {
        let text = "rchar: 100\nwchar: 23\nsyscr: 4\nsyscw: 2\nread_bytes: 0\n";
        let io = IoBytes {
            read: 100,
            written: 23,
        };
        assert_eq!(parse_io_bytes(text), Some(io));
        assert_eq!(parse_io_bytes("rchar: 1\n"), None);
        let me = std::process::id() as i32;
        assert!(io_bytes(Path::new("/proc"), me).is_some());
    }

    #[test]
    fn a_process_shares_its_own_namespaces_and_a_missing_one_shares_none() {
        let me = std::process::id() as i32;
        assert!(shares_namespaces(
            Path::new("/proc"),
            me,
            &["cgroup", "mnt"]
        ));
        assert!(!shares_namespaces(
            Path::new("/proc"),
            i32::MAX,
            &["cgroup"]
        ));
        assert!(!shares_namespaces(
            Path::new("/proc"),
            me,
            &["no-such-kind"]
        ));
    }

    #[test]
    fn starttime_is_field_22_even_with_odd_command_names() {
        let stat = "4242 (we ird) cmd)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654321 1000 10 18446744073709551615";
        assert_eq!(parse_stat_starttime(stat), Some(987654321));
        assert_eq!(parse_stat_starttime("garbage"), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_command() {
        let line =
            "4242 (a) b (c)) S 17 4242 4000 0 -1 2097216 100 0 0 0 1 2 0 0 20 0 1 0 987654321 1000";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.state, s.ppid, s.pgrp, s.session, s.starttime),
            ('S', 17, 4242, 4000, 987654321)
        );
        assert!(s.is_kernel_thread()); // 2097216 = PF_KTHREAD | 0x40
        assert_eq!(parse_stat("1 (x) S 0"), None);
        assert_eq!(sole_uid([1000, 1000, 1000]), Some(1000));
        assert_eq!(sole_uid([1000, 0, 1000]), None);
    }

    #[test]
    fn a_start_time_is_a_wall_clock_time_in_the_past() {
        let me = std::process::id() as i32;
        let proc_root = Path::new("/proc");
        let start = start_wall_time(proc_root, starttime(proc_root, me).unwrap()).unwrap();
        let age = std::time::SystemTime::now().duration_since(start).unwrap();
        assert!(age < Duration::from_secs(3600), "{age:?}");
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id() as i32;
        let proc_root = Path::new("/proc");
        assert!(starttime(proc_root, me).unwrap() > 0);
        assert!(cmdline(proc_root, me).is_some());
        let pidfd = pidfd_open(me).unwrap();
        assert!(pidfd_alive(&pidfd));
        assert_eq!(pidfd_pid(&pidfd), Some(me));
    }

    #[test]
    fn a_pidfd_reports_exit() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(!pidfd_alive(&pidfd));
        assert_eq!(pidfd_pid(&pidfd), None);
    }

    /// A process is itself through any of its pidfds, another process is not,
    /// and a process that exited has no identity (its pid may name another now).
    #[test]
    fn identities_through_pidfds_tell_processes_apart() {
        let proc_root = Path::new("/proc");
        let me = std::process::id() as i32;
        let a = pidfd_identity(proc_root, pidfd_open(me).unwrap()).unwrap();
        let b = pidfd_identity(proc_root, pidfd_open(me).unwrap()).unwrap();
        assert!(a.same(&b), "{a:?} {b:?}");
        assert_eq!((a.pid, Some(a.starttime)), (me, starttime(proc_root, me)));
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pidfd = pidfd_open(child.id() as i32).unwrap();
        let c = pidfd_identity(proc_root, &pidfd).unwrap();
        assert!(!c.same(&a));
        // The same pid and start time, another pidfs inode: another process.
        let twin = Identity { ino: c.ino, ..a };
        assert_eq!(twin.same(&a), c.ino.is_none() || a.ino.is_none());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            pidfd_identity(proc_root, &pidfd).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ESRCH))
        );
    }

    #[test]
    fn tcp_listeners_are_found_by_port_and_state() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(parse_tcp_listeners(text, 8080), vec![4242]);
        assert_eq!(parse_tcp_listeners(text, 80), vec![99]);
        assert!(parse_tcp_listeners(text, 81).is_empty());
    }
}
