//! cgroup v2 through cgroupfs: find the mount, create and remove cgroups, move
//! processes, freeze, kill, and wait on `cgroup.events`.
//!
//! This is a leaf module: it knows files under a cgroup2 mount and nothing of
//! runs or the agent. Every path comes from the caller, so tests point it at a
//! fake tree in a temporary directory or at a private root on the real mount.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{Mode, OFlags};

/// Kernel file names, as in `Documentation/admin-guide/cgroup-v2.rst`.
pub const CGROUP_PROCS: &str = "cgroup.procs";
pub const CGROUP_EVENTS: &str = "cgroup.events";
pub const CGROUP_FREEZE: &str = "cgroup.freeze";
pub const CGROUP_KILL: &str = "cgroup.kill";
pub const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
pub const CGROUP_SUBTREE_CONTROL: &str = "cgroup.subtree_control";
pub const CPU_STAT: &str = "cpu.stat";
pub const CPU_PRESSURE: &str = "cpu.pressure";
pub const MEMORY_MAX: &str = "memory.max";
pub const PIDS_MAX: &str = "pids.max";
pub const CPU_MAX: &str = "cpu.max";
pub const MEMORY_HIGH: &str = "memory.high";
pub const MEMORY_OOM_GROUP: &str = "memory.oom.group";
pub const MEMORY_EVENTS: &str = "memory.events";

mod limits;
mod mount;
#[cfg(test)]
mod tests;

pub use limits::*;
use mount::host_mount;
pub use mount::*;

/// How long a wait on `cgroup.events` also re-reads it every millisecond: past
/// the longest interval by which the kernel defers a notification (10 ms, 12 at
/// HZ=250), with room for the timer's slack.
pub const EAGER: Duration = Duration::from_millis(15);

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

/// A cgroup frozen by [`Cgroup::freeze_guard`].
#[derive(Debug)]
pub struct Frozen<'a> {
    cg: &'a Cgroup,
    /// `frozen 1` was read within the timeout. When not, some task has not
    /// stopped (one in uninterruptible sleep, say) and the tree may still fork.
    pub confirmed: bool,
    timeout: Duration,
    keep: bool,
}

impl Frozen<'_> {
    /// Why the freeze does not count, when it was not confirmed.
    pub fn unconfirmed(&self) -> Option<String> {
        (!self.confirmed).then(|| {
            format!(
                "freeze of {} not confirmed within {:?}: the tree was not frozen",
                self.cg.path.display(),
                self.timeout
            )
        })
    }

    /// Leaves the cgroup frozen (an unkillable run is kept so).
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = self.cg.thaw()
        {
            tracing::warn!("{e}");
        }
    }
}

/// The words of a space-separated cgroup file, without the `+` of a fake
/// tree's `cgroup.subtree_control` (the kernel lists names only).
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches('+').to_string())
        .collect()
}

/// Parses the text of `cgroup.events`.
fn parse_events(text: &str) -> Events {
    let mut ev = Events::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("populated", v)) => ev.populated = v.trim() == "1",
            Some(("frozen", v)) => ev.frozen = v.trim() == "1",
            _ => {}
        }
    }
    ev
}

fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|_| io::Error::new(ErrorKind::InvalidData, "not UTF-8"))
}

/// A cgroup file kept open and read from its start at each [`OpenFile::read`]
/// (`pread` at offset 0, which makes the kernel produce it anew): what it says
/// now, without the path lookup, setup and teardown of an open and a close.
/// After its cgroup is removed, a read fails (ENODEV).
#[derive(Debug)]
pub struct OpenFile {
    file: fs::File,
    path: PathBuf,
}

impl OpenFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read(&self) -> Result<String> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        let read = loop {
            if len == buf.len() {
                buf.resize(len * 2, 0);
            }
            match self.file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break Ok(()),
                Ok(n) => len += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(len);
        read.and_then(|()| utf8(buf)).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })
    }
}

/// The pids of a `cgroup.procs` text read from `path`.
pub fn parse_procs(text: &str, path: &Path) -> Result<Vec<i32>> {
    text.lines()
        .map(|l| {
            l.trim().parse().map_err(|_| Error::Parse {
                path: path.to_path_buf(),
                what: format!("not a pid: {l:?}"),
            })
        })
        .collect()
}

/// One cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    /// A directory above it held open, and the cgroup's path below it: its files
    /// are then read relative to that directory (see [`Dirs`]).
    below: Option<(Dir, PathBuf)>,
}

/// Two cgroups are the same when their paths are.
impl PartialEq for Cgroup {
    fn eq(&self, other: &Cgroup) -> bool {
        self.path == other.path
    }
}

impl Eq for Cgroup {}

/// A directory of the cgroup tree held open (`O_PATH`), shared by the cgroups
/// read through it.
pub type Dir = std::sync::Arc<OwnedFd>;

/// The parent directories of many cgroups, each opened once, so that reading a
/// file of one of them is an `openat` of two or three path components below its
/// parent instead of a walk of the whole path from `/` (through every directory
/// of the mount, each a kernfs lookup and permission check): for listings that
/// read a few files of each of thousands of cgroups. Reads only: writes go by
/// the full path.
#[derive(Debug, Default)]
pub struct Dirs {
    open: std::collections::HashMap<PathBuf, Option<Dir>>,
}

impl Dirs {
    /// `cg` with its files read relative to its parent directory, held open
    /// here; `cg` as it is when the parent cannot be opened (its reads then fail
    /// or succeed as they would have).
    pub fn held(&mut self, cg: Cgroup) -> Cgroup {
        let (Some(parent), Some(name)) = (cg.path.parent(), cg.path.file_name()) else {
            return cg;
        };
        let dir = self
            .open
            .entry(parent.to_path_buf())
            .or_insert_with(|| {
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                rustix::fs::open(parent, flags, Mode::empty())
                    .ok()
                    .map(std::sync::Arc::new)
            })
            .clone();
        Cgroup {
            below: dir.map(|d| (d, PathBuf::from(name))),
            ..cg
        }
    }
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Cgroup {
            path: path.into(),
            below: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup `name` below this one (not created), read through the same
    /// directory as this one.
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup {
            path: self.path.join(name),
            below: self
                .below
                .as_ref()
                .map(|(dir, rel)| (dir.clone(), rel.join(name))),
        }
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

    /// Opens one of the cgroup's files for reading: relative to the directory
    /// held for it, if any (not following a symlink there: cgroupfs has none),
    /// else by its path.
    fn open_file(&self, file: &str) -> io::Result<fs::File> {
        match &self.below {
            Some((dir, rel)) => {
                let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
                Ok(rustix::fs::openat(dir, rel.join(file), flags, Mode::empty())?.into())
            }
            None => fs::File::open(self.path.join(file)),
        }
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.path.join(file);
        self.open_file(file)
            .and_then(crate::procfs::read_small_file)
            .and_then(utf8)
            .map_err(|source| Error::Read { path, source })
    }

    /// One of the cgroup's files opened for reading again and again (see [`OpenFile`]).
    pub fn open(&self, file: &str) -> Result<OpenFile> {
        let path = self.path.join(file);
        match self.open_file(file) {
            Ok(file) => Ok(OpenFile { file, path }),
            Err(source) => Err(Error::Read { path, source }),
        }
    }

    fn write(&self, file: &str, data: &str) -> Result<()> {
        let path = self.path.join(file);
        fs::write(&path, data).map_err(|source| Error::Write {
            path,
            data: data.to_owned(),
            source,
        })
    }

    /// Whether process `pid` is in this cgroup or below it, from `/proc/<pid>/cgroup`
    /// (a path relative to the host's cgroup2 mount, compared whole: see
    /// [`within`]). `None` when the process is gone or its cgroup cannot be read.
    pub fn contains_process(&self, proc_root: &Path, pid: i32) -> Option<bool> {
        let rel = process_cgroup(proc_root, pid)?;
        Some(within(host_mount()?, &rel, &self.path))
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
        parse_procs(&self.read(CGROUP_PROCS)?, &self.path.join(CGROUP_PROCS))
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

    /// The cgroup's id: the inode number of its directory, which is what the
    /// kernel reports as a process's cgroup id (never reused while the system runs).
    pub fn id(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|source| Error::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// The ids of this cgroup and of every cgroup below it.
    pub fn subtree_ids(&self) -> Result<Vec<u64>> {
        let mut ids = vec![self.id()?];
        for child in self.children()? {
            ids.extend(child.subtree_ids()?);
        }
        Ok(ids)
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
        Ok(parse_events(&self.read(CGROUP_EVENTS)?))
    }

    /// Whether the cgroup is empty: `populated 0`, or the cgroup is gone. A read
    /// that fails for any other reason (EMFILE, EIO, ...) is an error, never
    /// "empty": a run is not over because its cgroup could not be read.
    pub fn empty(&self) -> Result<bool> {
        match self.events() {
            Ok(e) => Ok(!e.populated),
            Err(Error::Read { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Waits until `cgroup.events` satisfies `done`, or the timeout passes.
    ///
    /// Event-driven: `poll(2)` for POLLPRI on an open `cgroup.events`, which kernfs
    /// wakes synchronously on every change (an inotify watch is woken later, from
    /// a workqueue: 5-15 ms on a busy host). The kernel rate-limits these
    /// notifications: one that comes within `CGROUP_FILE_NOTIFY_MIN_INTV` (10 ms,
    /// 12 at HZ=250) of the previous one on the same file is deferred to the end
    /// of that interval. So during the first [`EAGER`] the file is also re-read
    /// every millisecond; after it, a deferred notification has come.
    /// Returns the last events read and whether `done` held.
    pub fn wait_events(
        &self,
        timeout: Duration,
        done: impl Fn(&Events) -> bool,
    ) -> Result<(Events, bool)> {
        self.wait_events_eager(timeout, EAGER, done)
    }

    /// [`Cgroup::wait_events`], re-reading every millisecond during the first
    /// `eager` only.
    fn wait_events_eager(
        &self,
        timeout: Duration,
        eager: Duration,
        done: impl Fn(&Events) -> bool,
    ) -> Result<(Events, bool)> {
        let start = Instant::now();
        let deadline = start + timeout;
        let path = self.path.join(CGROUP_EVENTS);
        let file = fs::File::open(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let mut buf = [0u8; 256];
        loop {
            // pread at offset 0 regenerates the file and re-arms POLLPRI.
            let n = rustix::io::pread(&file, &mut buf, 0).map_err(|e| Error::Read {
                path: path.clone(),
                source: e.into(),
            })?;
            let ev = parse_events(&String::from_utf8_lossy(&buf[..n]));
            if done(&ev) {
                return Ok((ev, true));
            }
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Ok((ev, false));
            }
            let slice = if now - start < eager {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(100)
            };
            let slice = left.min(slice);
            let ts = Timespec {
                tv_sec: slice.as_secs() as i64,
                tv_nsec: slice.subsec_nanos() as i64,
            };
            let mut fds = [PollFd::new(&file, PollFlags::PRI)];
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::Watch {
                        path,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Waits for `populated 0`. Returns whether the cgroup emptied in time.
    pub fn wait_unpopulated(&self, timeout: Duration) -> Result<bool> {
        Ok(self.wait_events(timeout, |e| !e.populated)?.1)
    }

    /// [`Cgroup::wait_unpopulated`] for a wait that follows one just made: told
    /// by the kernel only, with no re-reads every millisecond (a thousand kills
    /// waiting at once would spend a core on them).
    pub fn wait_unpopulated_again(&self, timeout: Duration) -> Result<bool> {
        Ok(self
            .wait_events_eager(timeout, Duration::ZERO, |e| !e.populated)?
            .1)
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

    /// Freezes the cgroup and returns a guard that thaws it when dropped, on
    /// every path out (a panic included), unless [`Frozen::keep`] is called.
    /// `Err` when `cgroup.freeze` could not be written (nothing to thaw then).
    pub fn freeze_guard(&self, timeout: Duration) -> Result<Frozen<'_>> {
        let confirmed = self.freeze(timeout)?;
        Ok(Frozen {
            cg: self,
            confirmed,
            timeout,
            keep: false,
        })
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

    /// The parent cgroup (the directory above), if any.
    pub fn parent(&self) -> Option<Cgroup> {
        self.path.parent().map(Cgroup::new)
    }
}
