//! cgroup v2 through cgroupfs: find the mount, create and remove cgroups, move
//! processes, freeze, kill, and wait on `cgroup.events`.
//!
//! This is a leaf module: it knows files under a cgroup2 mount and nothing of
//! runs or the agent. Every path comes from the caller, so tests point it at a
//! fake tree in a temporary directory or at a private root on the real mount.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// Kernel file names, as in `Documentation/admin-guide/cgroup-v2.rst`.
pub const CGROUP_PROCS: &str = "cgroup.procs";
pub const CGROUP_EVENTS: &str = "cgroup.events";
pub const CGROUP_FREEZE: &str = "cgroup.freeze";
pub const CGROUP_KILL: &str = "cgroup.kill";
pub const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
pub const CGROUP_SUBTREE_CONTROL: &str = "cgroup.subtree_control";
pub const CPU_STAT: &str = "cpu.stat";
pub const MEMORY_MAX: &str = "memory.max";
pub const PIDS_MAX: &str = "pids.max";
pub const CPU_MAX: &str = "cpu.max";
pub const MEMORY_HIGH: &str = "memory.high";
pub const MEMORY_OOM_GROUP: &str = "memory.oom.group";
pub const MEMORY_EVENTS: &str = "memory.events";

/// The limit files a template may set, each belonging to the controller its name starts with.
pub const LIMIT_FILES: [&str; 4] = [MEMORY_MAX, MEMORY_HIGH, PIDS_MAX, CPU_MAX];

/// The controllers of the limit files.
pub const LIMIT_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

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

/// The cgroup2 mount of this host, read once.
fn host_mount() -> Option<&'static Path> {
    static MOUNT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    MOUNT.get_or_init(|| cgroup2_mount().ok()).as_deref()
}

/// Whether the cgroup `rel` (relative to the cgroup2 mount `mount`, as
/// `/proc/<pid>/cgroup` names it) is `cg` or below it. The whole path is
/// compared, component by component: a run named `user.slice` does not hold
/// the processes of `/user.slice`.
pub fn within(mount: &Path, rel: &str, cg: &Path) -> bool {
    mount.join(rel.trim_start_matches('/')).starts_with(cg)
}

/// The cgroup path of a process relative to the cgroup2 mount, from `/proc/<pid>/cgroup`
/// (the `0::` line). `None` when the process is gone.
pub fn process_cgroup(proc_root: &Path, pid: i32) -> Option<String> {
    let text =
        crate::procfs::read_small_string(&proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The controller of a limit file wfcg writes (`memory.max` → `memory`), or
/// `None` for any other file.
pub fn limit_controller(file: &str) -> Option<&'static str> {
    match file {
        MEMORY_MAX | MEMORY_HIGH => Some("memory"),
        PIDS_MAX => Some("pids"),
        CPU_MAX => Some("cpu"),
        _ => None,
    }
}

/// Checks a limit's value the way the kernel reads it: `memory.max` (and
/// `memory.high`) bytes with
/// an optional K/M/G/T/P/E suffix, `pids.max` a count, `cpu.max` a quota and an
/// optional period in µs; each may be `max` (no limit). The error says why.
pub fn check_limit(file: &str, value: &str) -> std::result::Result<(), String> {
    let v = value.trim();
    let number = |s: &str| s.parse::<u64>().ok();
    match file {
        MEMORY_MAX | MEMORY_HIGH => {
            let digits = v.trim_end_matches(|c: char| "kKmMgGtTpPeE".contains(c));
            let suffixes = v.len() - digits.len();
            if v == "max" || (suffixes <= 1 && number(digits).is_some()) {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} is not a size (bytes, with K, M, G or T, or \"max\")"
                ))
            }
        }
        PIDS_MAX => match (v, number(v)) {
            ("max", _) | (_, Some(_)) => Ok(()),
            _ => Err(format!("{v:?} is not a number of processes (or \"max\")")),
        },
        CPU_MAX => {
            let mut parts = v.split_whitespace();
            let quota = parts.next().unwrap_or("");
            let period = parts.next();
            let quota_ok = quota == "max" || number(quota).is_some_and(|q| q >= 1000);
            let period_ok =
                period.is_none_or(|p| number(p).is_some_and(|p| (1000..=1_000_000).contains(&p)));
            if quota_ok && period_ok && parts.next().is_none() {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} is not \"QUOTA PERIOD\" in µs (quota ≥ 1000 or \"max\", \
                     period 1000..=1000000), e.g. \"200000 100000\" for 2 CPUs"
                ))
            }
        }
        other => Err(format!(
            "unknown limit {other:?} (wfcg writes {})",
            LIMIT_FILES.join(", ")
        )),
    }
}

/// Why a controller could not be made available to a cgroup's children.
#[derive(Debug)]
pub enum Unavailable {
    /// Not in the `cgroup.controllers` of this cgroup nor of any ancestor wfcg may change.
    NotEnabled {
        /// The cgroup whose children should have had it.
        path: PathBuf,
        /// Its `cgroup.controllers` is empty, as on hybrid hosts.
        none_at_all: bool,
    },
    /// Writing `cgroup.subtree_control` failed.
    Enable(Error),
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
        crate::procfs::read_small_string(&path).map_err(|source| Error::Read { path, source })
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
    /// notifications (one per ~10 ms per file, `CGROUP_FILE_NOTIFY_MIN_INTV`), so
    /// during the first 50 ms the file is also re-read every millisecond.
    /// Returns the last events read and whether `done` held.
    pub fn wait_events(
        &self,
        timeout: Duration,
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
            let slice = if now - start < Duration::from_millis(50) {
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

    /// The controllers this cgroup may use (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>> {
        Ok(words(&self.read(CGROUP_CONTROLLERS)?))
    }

    /// The controllers enabled for this cgroup's children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>> {
        Ok(words(&self.read(CGROUP_SUBTREE_CONTROL)?))
    }

    /// Enables `controller` for this cgroup's children: writes `+controller` to
    /// `cgroup.subtree_control`, unless it is enabled already.
    pub fn enable_controller(&self, controller: &str) -> Result<()> {
        if self.subtree_control()?.iter().any(|c| c == controller) {
            return Ok(());
        }
        self.write(CGROUP_SUBTREE_CONTROL, &format!("+{controller}"))
    }

    /// Makes `controller` available to this cgroup's children: enables it in this
    /// cgroup's `cgroup.subtree_control` when it is in its `cgroup.controllers`;
    /// when it is not, first enables it in the ancestors' (at most `levels - 1`
    /// of them) where it is available. Ancestors further up are never touched.
    pub fn enable_for_children(
        &self,
        controller: &str,
        levels: usize,
    ) -> std::result::Result<(), Unavailable> {
        let available = self.controllers().map_err(Unavailable::Enable)?;
        if !available.iter().any(|c| c == controller) {
            let parent = self.parent().filter(|_| levels > 1);
            let from_above =
                parent.is_some_and(|p| p.enable_for_children(controller, levels - 1).is_ok());
            let now = if from_above {
                self.controllers().map_err(Unavailable::Enable)?
            } else {
                available
            };
            if !now.iter().any(|c| c == controller) {
                return Err(Unavailable::NotEnabled {
                    path: self.path.clone(),
                    none_at_all: now.is_empty(),
                });
            }
        }
        self.enable_controller(controller)
            .map_err(Unavailable::Enable)
    }

    /// Writes cgroup limits (`memory.max`, `pids.max`, `cpu.max`) into this cgroup
    /// where their controller is enabled for it: in the parent's
    /// `cgroup.subtree_control`, enabled there (or in the grandparent's first)
    /// when its `cgroup.controllers` allows. Returns a one-line warning for each
    /// limit skipped and why: an unknown file, a bad value, or a controller not
    /// enabled (e.g. on hybrid hosts, whose cgroup2 mount has no controllers).
    pub fn apply_limits(&self, limits: &BTreeMap<String, String>) -> Vec<String> {
        let mut warnings = Vec::new();
        for (file, value) in limits {
            let value = value.trim();
            let skipped = |why: String| format!("{file}={value} skipped: {why}");
            let Some(controller) = limit_controller(file) else {
                warnings.push(skipped(format!(
                    "unknown limit (wfcg writes {})",
                    LIMIT_FILES.join(", ")
                )));
                continue;
            };
            if let Err(e) = check_limit(file, value) {
                warnings.push(skipped(e));
                continue;
            }
            let enabled = match self.parent() {
                Some(parent) => parent.enable_for_children(controller, 2),
                None => Err(Unavailable::NotEnabled {
                    path: self.path.clone(),
                    none_at_all: true,
                }),
            };
            match enabled {
                Ok(()) => {
                    if let Err(e) = self.write(file, value) {
                        warnings.push(format!("{file}={value} not applied: {e}"));
                    }
                    // An OOM kill in the run takes the whole run, not one process of it.
                    if controller == "memory"
                        && let Err(e) = self.write(MEMORY_OOM_GROUP, "1")
                    {
                        warnings.push(format!("{MEMORY_OOM_GROUP}=1 not applied: {e}"));
                    }
                }
                Err(Unavailable::NotEnabled { path, none_at_all }) => {
                    let hint = if none_at_all {
                        "hybrid host?"
                    } else {
                        "not delegated to it"
                    };
                    warnings.push(skipped(format!(
                        "the {controller} controller is not enabled for {} ({hint})",
                        path.display()
                    )));
                }
                Err(Unavailable::Enable(e)) => warnings.push(skipped(format!(
                    "cannot enable the {controller} controller: {e}"
                ))),
            }
        }
        warnings
    }

    /// How many processes the kernel's OOM killer killed in this cgroup and below
    /// (`oom_kill` in `memory.events`); `None` without the memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        let text = self.read(MEMORY_EVENTS).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
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

    /// The guard thaws on every path out: when dropped, and when a panic unwinds
    /// through it; kept, it leaves the cgroup frozen.
    #[test]
    fn a_freeze_guard_thaws_even_on_a_panic_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path().join("g"));
        cg.create().unwrap();
        fs::write(cg.path().join(CGROUP_EVENTS), "populated 1\nfrozen 0\n").unwrap();
        let freeze = || fs::read_to_string(cg.path().join(CGROUP_FREEZE)).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let frozen = cg.freeze_guard(Duration::from_millis(20)).unwrap();
            assert!(!frozen.confirmed);
            assert!(frozen.unconfirmed().unwrap().contains("not confirmed"));
            assert_eq!(freeze(), "1");
            panic!("in the middle of a kill");
        }));
        assert!(result.is_err());
        assert_eq!(freeze(), "0", "a panic left the cgroup frozen");
        fs::write(cg.path().join(CGROUP_EVENTS), "populated 1\nfrozen 1\n").unwrap();
        let frozen = cg.freeze_guard(Duration::from_millis(20)).unwrap();
        assert!(frozen.confirmed && frozen.unconfirmed().is_none());
        frozen.keep();
        assert_eq!(freeze(), "1");
    }

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

    #[test]
    fn membership_compares_the_whole_path_never_a_suffix() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        let run = mount.join("wfcg/runs/user.slice");
        assert!(within(mount, "/wfcg/runs/user.slice", &run));
        assert!(within(mount, "/wfcg/runs/user.slice/payload", &run));
        // A suffix of the run's path, or of one of its ancestors, is not the run.
        for outside in [
            "/user.slice",
            "/user.slice/user-0.slice/session-1.scope",
            "/runs/user.slice",
            "/other/wfcg/runs/user.slice",
            "/wfcg/runs/user.slice2",
            "/wfcg/runs",
            "/",
        ] {
            assert!(!within(mount, outside, &run), "{outside}");
        }
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

    /// A fake cgroupfs: root/ (the wfcg root) → runs/ → r1/, with the given
    /// `cgroup.controllers` in root and runs.
    fn fake_tree(root_has: &str, runs_has: &str) -> (tempfile::TempDir, Cgroup, Cgroup, Cgroup) {
        let dir = tempfile::tempdir().unwrap();
        let root = Cgroup::new(dir.path().join("wfcg"));
        let runs = root.child("runs");
        let run = runs.child("r1");
        for (cg, controllers) in [(&root, root_has), (&runs, runs_has), (&run, "")] {
            cg.create().unwrap();
            fs::write(
                cg.path().join(CGROUP_CONTROLLERS),
                format!("{controllers}\n"),
            )
            .unwrap();
            fs::write(cg.path().join(CGROUP_SUBTREE_CONTROL), "").unwrap();
            fs::write(cg.path().join(CGROUP_PROCS), "").unwrap();
        }
        (dir, root, runs, run)
    }

    fn limits(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn limits_are_written_where_the_controllers_are_enabled() {
        let (_dir, _root, runs, run) = fake_tree("cpu memory pids", "cpu memory pids");
        let warnings = run.apply_limits(&limits(&[("memory.max", "2G")]));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            fs::read_to_string(run.path().join(MEMORY_MAX)).unwrap(),
            "2G"
        );
        assert_eq!(
            fs::read_to_string(runs.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
            "+memory"
        );
        let warnings = run.apply_limits(&limits(&[
            ("pids.max", "512"),
            ("cpu.max", "200000 100000"),
        ]));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            fs::read_to_string(run.path().join(PIDS_MAX)).unwrap(),
            "512"
        );
        assert_eq!(
            fs::read_to_string(run.path().join(CPU_MAX)).unwrap(),
            "200000 100000"
        );
    }

    #[test]
    fn a_controller_enabled_already_is_not_written_again() {
        let (_dir, _root, runs, run) = fake_tree("memory", "memory pids");
        fs::write(runs.path().join(CGROUP_SUBTREE_CONTROL), "pids\n").unwrap();
        assert!(run.apply_limits(&limits(&[("pids.max", "max")])).is_empty());
        assert_eq!(
            fs::read_to_string(runs.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
            "pids\n"
        );
        assert_eq!(
            fs::read_to_string(run.path().join(PIDS_MAX)).unwrap(),
            "max"
        );
    }

    #[test]
    fn limits_are_skipped_with_a_warning_where_the_controller_is_missing() {
        let (_dir, root, runs, run) = fake_tree("", "");
        let warnings = run.apply_limits(&limits(&[("memory.max", "2G"), ("pids.max", "64")]));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            warnings[0],
            format!(
                "memory.max=2G skipped: the memory controller is not enabled for {} (hybrid host?)",
                runs.path().display()
            )
        );
        assert!(
            warnings[1].starts_with("pids.max=64 skipped:"),
            "{warnings:?}"
        );
        assert!(!run.path().join(MEMORY_MAX).exists());
        assert!(!run.path().join(PIDS_MAX).exists());
        assert_eq!(
            fs::read_to_string(root.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
            ""
        );
    }

    #[test]
    fn the_grandparent_is_asked_first_when_only_it_has_the_controller() {
        // The fake kernel does not pass controllers down, so the limit is still
        // skipped, but the wfcg root got the "+memory" a real kernel would act on.
        let (_dir, root, runs, run) = fake_tree("memory", "pids");
        let warnings = run.apply_limits(&limits(&[("memory.max", "1G")]));
        assert_eq!(
            fs::read_to_string(root.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
            "+memory"
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains(&format!(
                "not enabled for {} (not delegated",
                runs.path().display()
            )),
            "{warnings:?}"
        );
        // And once it is passed down, the limit is written.
        fs::write(runs.path().join(CGROUP_CONTROLLERS), "memory pids\n").unwrap();
        assert!(
            run.apply_limits(&limits(&[("memory.max", "1G")]))
                .is_empty()
        );
        assert_eq!(
            fs::read_to_string(run.path().join(MEMORY_MAX)).unwrap(),
            "1G"
        );
    }

    #[test]
    fn unknown_limits_and_bad_values_are_skipped_with_a_warning() {
        let (_dir, _root, _runs, run) = fake_tree("cpu memory pids io", "cpu memory pids io");
        let warnings = run.apply_limits(&limits(&[
            ("io.max", "8:0 rbps=1"),
            ("memory.max", "lots"),
            ("cpu.max", "1 2 3"),
        ]));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].starts_with("cpu.max=1 2 3 skipped: "),
            "{warnings:?}"
        );
        assert!(
            warnings[1].starts_with("io.max=8:0 rbps=1 skipped: unknown limit"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].starts_with("memory.max=lots skipped: "),
            "{warnings:?}"
        );
        assert!(!run.path().join("io.max").exists());
    }

    #[test]
    fn limit_values_are_checked_like_the_kernel_reads_them() {
        for (file, good) in [
            (MEMORY_MAX, "max"),
            (MEMORY_MAX, "1073741824"),
            (MEMORY_MAX, "512M"),
            (MEMORY_MAX, "8g"),
            (PIDS_MAX, "4096"),
            (PIDS_MAX, "max"),
            (CPU_MAX, "max"),
            (CPU_MAX, "50000"),
            (CPU_MAX, "200000 100000"),
            (CPU_MAX, "max 100000"),
        ] {
            assert!(check_limit(file, good).is_ok(), "{file}={good}");
        }
        for (file, bad) in [
            (MEMORY_MAX, ""),
            (MEMORY_MAX, "2GB"),
            (MEMORY_MAX, "-1"),
            (PIDS_MAX, "lots"),
            (PIDS_MAX, "1.5"),
            (CPU_MAX, "10"),
            (CPU_MAX, "100000 10"),
            (CPU_MAX, "1 2 3"),
            ("io.max", "1"),
        ] {
            assert!(check_limit(file, bad).is_err(), "{file}={bad}");
        }
    }
}
