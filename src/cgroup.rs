//! cgroup v2 through cgroupfs: find the mount, create and remove cgroups, move
//! processes, freeze, kill, and wait on `cgroup.events`.
//!
//! This is a leaf module: it knows files under a cgroup2 mount and nothing of
//! runs or the agent. Every path comes from the caller, so tests point it at a
//! fake tree in a temporary directory or at a private root on the real mount.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::inotify;

/// Kernel file names, as in `Documentation/admin-guide/cgroup-v2.rst`.
pub const CGROUP_PROCS: &str = "cgroup.procs";
pub const CGROUP_EVENTS: &str = "cgroup.events";
pub const CGROUP_FREEZE: &str = "cgroup.freeze";
pub const CGROUP_KILL: &str = "cgroup.kill";
pub const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
pub const CGROUP_SUBTREE_CONTROL: &str = "cgroup.subtree_control";
pub const CPU_STAT: &str = "cpu.stat";

/// How long `remove` retries an `rmdir` that fails with EBUSY.
const RMDIR_RETRY: Duration = Duration::from_secs(2);

/// Errors from cgroupfs, each naming the file it was about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup2 filesystem is mounted.
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    /// Reading a cgroup file failed.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// Writing a cgroup file failed.
    #[error("cannot write {data:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        data: String,
        source: io::Error,
    },
    /// Creating a cgroup directory failed.
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    /// Removing a cgroup directory failed.
    #[error("cannot remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    /// Watching `cgroup.events` failed.
    #[error("cannot watch {path}: {source}")]
    Watch { path: PathBuf, source: io::Error },
    /// A file did not have the expected format.
    #[error("unexpected content in {path}: {what}")]
    Parse { path: PathBuf, what: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The state reported by `cgroup.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Events {
    /// Some process lives in this cgroup or below it.
    pub populated: bool,
    /// The cgroup is frozen (every process of it stopped by the freezer).
    pub frozen: bool,
}

/// Finds the cgroup2 mount point in the text of `/proc/self/mountinfo`.
///
/// On hybrid hosts it is `/sys/fs/cgroup/unified`, on pure v2 hosts `/sys/fs/cgroup`.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 35 98:0 / /sys/fs/cgroup rw,relatime shared:1 - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount of this host, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    parse_cgroup2_mount(&text).ok_or(Error::NoCgroup2)
}

/// The cgroup path of a process relative to the cgroup2 mount, from `/proc/<pid>/cgroup`
/// (the `0::` line). `None` when the process is gone.
pub fn process_cgroup(proc_root: &Path, pid: i32) -> Option<String> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// One cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Cgroup { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup `name` below this one (not created).
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::new(self.path.join(name))
    }

    pub fn exists(&self) -> bool {
        self.path.join(CGROUP_PROCS).exists()
    }

    /// `mkdir` of the cgroup; an existing one is fine.
    pub fn create(&self) -> Result<()> {
        match fs::create_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(Error::Create {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// `mkdir` that fails if the cgroup exists already.
    pub fn create_new(&self) -> Result<()> {
        fs::create_dir(&self.path).map_err(|source| Error::Create {
            path: self.path.clone(),
            source,
        })
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.path.join(file);
        fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
    }

    fn write(&self, file: &str, data: &str) -> Result<()> {
        let path = self.path.join(file);
        fs::write(&path, data).map_err(|source| Error::Write {
            path,
            data: data.to_owned(),
            source,
        })
    }

    /// Whether the kernel offers `cgroup.kill` here (Linux ≥ 5.14; never on the root cgroup).
    pub fn supports_kill(&self) -> bool {
        self.path.join(CGROUP_KILL).exists()
    }

    /// Moves a whole process (thread group) into this cgroup: writes `cgroup.procs`.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        self.write(CGROUP_PROCS, &pid.to_string())
    }

    /// The processes directly in this cgroup (`cgroup.procs`). Only a hint while
    /// tasks exit: use [`Cgroup::events`] to learn whether the cgroup is empty.
    pub fn procs(&self) -> Result<Vec<i32>> {
        let path = self.path.join(CGROUP_PROCS);
        let text = self.read(CGROUP_PROCS)?;
        text.lines()
            .map(|l| {
                l.trim().parse().map_err(|_| Error::Parse {
                    path: path.clone(),
                    what: format!("not a pid: {l:?}"),
                })
            })
            .collect()
    }

    /// The processes of this cgroup and of every cgroup below it.
    pub fn procs_recursive(&self) -> Result<Vec<i32>> {
        let mut pids = self.procs()?;
        for child in self.children()? {
            if let Ok(more) = child.procs_recursive() {
                pids.extend(more);
            }
        }
        Ok(pids)
    }

    /// The child cgroups (subdirectories).
    pub fn children(&self) -> Result<Vec<Cgroup>> {
        let entries = fs::read_dir(&self.path).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.push(Cgroup::new(entry.path()));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Parses `cgroup.events`.
    pub fn events(&self) -> Result<Events> {
        let text = self.read(CGROUP_EVENTS)?;
        let mut ev = Events::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("populated", v)) => ev.populated = v.trim() == "1",
                Some(("frozen", v)) => ev.frozen = v.trim() == "1",
                _ => {}
            }
        }
        Ok(ev)
    }

    /// Waits until `cgroup.events` satisfies `done`, or the timeout passes.
    ///
    /// Event-driven: an inotify watch (`inotify_add_watch(2)`, IN_MODIFY) on
    /// `cgroup.events`, which the kernel touches on every change, and `poll(2)`
    /// with the remaining time. Returns the last events read and whether `done` held.
    pub fn wait_events(
        &self,
        timeout: Duration,
        done: impl Fn(&Events) -> bool,
    ) -> Result<(Events, bool)> {
        let deadline = Instant::now() + timeout;
        let path = self.path.join(CGROUP_EVENTS);
        let watch_err = |source: rustix::io::Errno| Error::Watch {
            path: path.clone(),
            source: source.into(),
        };
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(watch_err)?;
        // A missing file (cgroup gone) is reported by the read below.
        let _ = inotify::add_watch(&ino, &path, inotify::WatchFlags::MODIFY);
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        loop {
            let ev = self.events()?;
            if done(&ev) {
                return Ok((ev, true));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((ev, false));
            }
            // Wake at least every 100 ms: a safety net should a notification be missed.
            let slice = left.min(Duration::from_millis(100));
            let ts = Timespec {
                tv_sec: slice.as_secs() as i64,
                tv_nsec: slice.subsec_nanos() as i64,
            };
            let mut fds = [PollFd::new(&ino, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(watch_err(e)),
            }
            // Drain the queue; the content does not matter, only that something changed.
            let mut reader = inotify::Reader::new(&ino, &mut buf);
            while reader.next().is_ok() {}
        }
    }

    /// Waits for `populated 0`. Returns whether the cgroup emptied in time.
    pub fn wait_unpopulated(&self, timeout: Duration) -> Result<bool> {
        Ok(self.wait_events(timeout, |e| !e.populated)?.1)
    }

    /// Freezes the cgroup (`cgroup.freeze` = 1) and waits for `frozen 1`.
    /// Returns whether the freeze was confirmed in time (an empty cgroup counts as frozen).
    pub fn freeze(&self, timeout: Duration) -> Result<bool> {
        self.write(CGROUP_FREEZE, "1")?;
        Ok(self.wait_events(timeout, |e| e.frozen || !e.populated)?.1)
    }

    /// Thaws the cgroup (`cgroup.freeze` = 0).
    pub fn thaw(&self) -> Result<()> {
        self.write(CGROUP_FREEZE, "0")
    }

    /// SIGKILLs every process in the cgroup and below, atomically against forks
    /// (`cgroup.kill` = 1, Linux ≥ 5.14).
    pub fn kill(&self) -> Result<()> {
        self.write(CGROUP_KILL, "1")
    }

    /// `rmdir` of the cgroup, retried while the kernel answers EBUSY (tasks still
    /// exiting). A cgroup already gone is fine.
    pub fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + RMDIR_RETRY;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(Error::Remove {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Removes the child cgroups depth first, then this one.
    pub fn remove_recursive(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        for child in self.children()? {
            child.remove_recursive()?;
        }
        self.remove()
    }

    /// CPU time used by the cgroup, from `usage_usec` in `cpu.stat`.
    pub fn cpu_usage_usec(&self) -> Option<u64> {
        let text = self.read(CPU_STAT).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_pure_v2_mounts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "36 35 98:0 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("31 23 0:28 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        let escaped = "1 2 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    fn fake() -> (tempfile::TempDir, Cgroup) {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path().join("run"));
        cg.create().unwrap();
        fs::write(cg.path().join(CGROUP_PROCS), "12\n34\n").unwrap();
        fs::write(cg.path().join(CGROUP_EVENTS), "populated 1\nfrozen 0\n").unwrap();
        (dir, cg)
    }

    #[test]
    fn reads_procs_and_events_of_a_fake_cgroup() {
        let (_dir, cg) = fake();
        assert_eq!(cg.procs().unwrap(), vec![12, 34]);
        assert_eq!(
            cg.events().unwrap(),
            Events {
                populated: true,
                frozen: false
            }
        );
        fs::write(cg.path().join(CGROUP_PROCS), "12\nnope\n").unwrap();
        let err = cg.procs().unwrap_err().to_string();
        assert!(
            err.contains("cgroup.procs") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn wait_times_out_when_populated_never_drops() {
        let (_dir, cg) = fake();
        let start = Instant::now();
        assert!(!cg.wait_unpopulated(Duration::from_millis(300)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn wait_wakes_on_a_change_of_cgroup_events() {
        let (_dir, cg) = fake();
        let events = cg.path().join(CGROUP_EVENTS);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            fs::write(events, "populated 0\nfrozen 0\n").unwrap();
        });
        assert!(cg.wait_unpopulated(Duration::from_secs(10)).unwrap());
        writer.join().unwrap();
    }

    #[test]
    fn write_errors_name_the_file_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path().join("missing"));
        let err = cg.kill().unwrap_err().to_string();
        assert!(
            err.contains("missing/cgroup.kill") && err.contains("\"1\""),
            "{err}"
        );
    }

    #[test]
    fn cpu_usage_comes_from_cpu_stat() {
        let (_dir, cg) = fake();
        assert_eq!(cg.cpu_usage_usec(), None);
        fs::write(
            cg.path().join(CPU_STAT),
            "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n",
        )
        .unwrap();
        assert_eq!(cg.cpu_usage_usec(), Some(1234));
    }
}
