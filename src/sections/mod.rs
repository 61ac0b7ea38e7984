//! Critical sections, detected from procfs: what a run is in the middle of that a
//! kill would damage.
//!
//! - git: an open fd on a lock file inside a git directory (`.git/index.lock`,
//!   `.git/HEAD.lock`, `.git/refs/**/*.lock`, …). Git's locks are O_EXCL files,
//!   not kernel locks, so they are found by fd path.
//! - database: a POSIX or OFD write lock held on a SQLite database or its `-shm`
//!   file (`/proc/locks`, matched to the holder's fds by device and inode; blocked
//!   waiters are not holders), or an open SQLite `-journal` (a write transaction
//!   in rollback mode).
//! - files: a write a kill can tear: a regular file inside the run's workspace
//!   open for writing through an fd other than 1 and 2, not O_APPEND, and not
//!   one of the files the run started with (those its supervisor holds: the log
//!   the executor redirected the run's output to). Logs are not sections: a
//!   file that is any run process's stdout or stderr (`exec > ws/out.log`,
//!   `cmd > ws/build.log 2>&1`), whoever opened it and through whichever fd, and
//!   an append-only file. Nor is a lock file: one a lock is held on (flock,
//!   POSIX or OFD) that is empty or unchanged since the run started. A file
//!   being written in place and a temp file about to be renamed over its target
//!   (written through its own fd) are sections.
//!
//! A leaf module: it reads `/proc` (and the files' first bytes) and knows nothing
//! of runs or the agent.

use std::collections::HashSet;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{Mode, OFlags};

use crate::api::SectionKind;
use crate::gitlocks::{self, Creator, Creators, LockFile};
use crate::procfs;

/// One open critical section.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    pub kind: SectionKind,
    pub path: String,
    pub pid: i32,
    pub command: String,
    /// Device and inode of the file, to tell it from a later file of the same name.
    pub dev: u64,
    pub ino: u64,
}

/// What to look at.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The processes of the run.
    pub pids: Vec<i32>,
    /// Writes inside this directory are critical (none when absent).
    pub workspace: Option<PathBuf>,
    /// Files and directories never reported (the run's own logs, TMPDIR, run dir).
    pub exclude: Vec<PathBuf>,
    /// The run's supervisor: files it has open are what the run started with
    /// (its stdout and stderr, say), not writes of the run's own.
    pub inherited_from: Option<i32>,
    /// When the run started: git locks created since then in a git directory the
    /// run uses, that no process outside it holds, are the run's even with no fd
    /// open (git closes `index.lock` while hooks and the editor run). `None`:
    /// only locks held open count.
    pub since: Option<SystemTime>,
    /// Git directories are looked in only when this user owns them (`None`: any).
    pub owner: Option<u32>,
    /// Who created each git lock, when known: a lock the run created is its
    /// whoever else works in that repository; one someone else created never
    /// is. Where the creator is unknown, a lock in a repository a process
    /// outside the run works in (its cwd there) is not counted as the run's.
    pub creators: Option<gitlocks::Creators>,
}

/// `O_APPEND` in the octal `flags:` of fdinfo.
const O_APPEND: u32 = 0o2000;

/// Whether an fd with open flags `flags` may be a torn write: open for
/// writing, not append-only (appends never overwrite what is there).
fn writes_in_place(flags: u32) -> bool {
    flags & 0o3 != 0 && flags & O_APPEND == 0
}

/// Whether fd `num` is a process's stdout or stderr: a stream, a log.
fn is_stream(num: &str) -> bool {
    num == "1" || num == "2"
}

/// Whether a file a lock is held on is only a lock file, not a write: it is
/// empty, or it has not changed since the run started (`since`).
fn lock_file_only(meta: &fs::Metadata, since: Option<SystemTime>) -> bool {
    meta.len() == 0
        || since.is_some_and(|since| {
            meta.modified()
                .is_ok_and(|m| m + COARSE_CLOCK_SLACK < since)
        })
}

/// One line of `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// POSIX, OFDLCK or FLOCK.
    pub class: String,
    pub write: bool,
    /// A waiter (`->`), not a holder.
    pub blocked: bool,
    /// The owner; -1 for OFD locks.
    pub pid: i32,
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
}

/// Parses `/proc/locks`, e.g. `1: POSIX  ADVISORY  WRITE 7346 fe:00:10010649 1073741825 1073741825`
/// (device numbers in hex) and `1: -> POSIX  ADVISORY  WRITE …` for waiters.
pub fn parse_locks(text: &str) -> Vec<Lock> {
    text.lines()
        .filter_map(|line| {
            let mut f: Vec<&str> = line.split_whitespace().skip(1).collect();
            let blocked = f.first() == Some(&"->");
            if blocked {
                f.remove(0);
            }
            // class, ADVISORY|MANDATORY, READ|WRITE, pid, maj:min:ino, start, end
            let mut dev = f.get(4)?.split(':');
            Some(Lock {
                class: f.first()?.to_string(),
                write: *f.get(2)? == "WRITE",
                blocked,
                pid: f.get(3)?.parse().ok()?,
                major: u32::from_str_radix(dev.next()?, 16).ok()?,
                minor: u32::from_str_radix(dev.next()?, 16).ok()?,
                ino: dev.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Whether a path names a lock file inside a git directory.
pub fn is_git_lock(path: &str) -> bool {
    path.ends_with(".lock")
        && Path::new(path)
            .components()
            .any(|c| c.as_os_str() == ".git")
}

/// Whether a file starts with the SQLite header. The path comes from a user's
/// process: it is read without following a symlink in its last component and
/// without blocking (a FIFO or device put in its place is no database).
fn is_sqlite_db(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let Ok(dir) = fs::File::open(dir) else {
        return false;
    };
    crate::userfs::read_head_at(&dir, &name.to_string_lossy(), 16)
        .is_ok_and(|head| head == b"SQLite format 3\0")
}

/// Whether a path is a SQLite database or one of its side files.
fn is_sqlite_file(path: &str) -> bool {
    for suffix in ["-journal", "-wal", "-shm"] {
        if let Some(db) = path.strip_suffix(suffix) {
            return is_sqlite_db(Path::new(db));
        }
    }
    is_sqlite_db(Path::new(path))
}

/// An open fd of a process: its number and the path it points to.
struct Fd {
    num: String,
    path: String,
}

/// `/proc/<pid>`, opened once for the reads of one process below it: each is
/// then a lookup of one name, not of the whole path (the pid's directory is
/// revalidated on every path that goes through it).
fn proc_dir(proc_root: &Path, pid: i32) -> Option<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::open(proc_root.join(pid.to_string()), flags, Mode::empty()).ok()
}

fn open_files(proc_root: &Path, pid: i32) -> Vec<Fd> {
    proc_dir(proc_root, pid).map_or_else(Vec::new, |dir| open_files_at(&dir))
}

/// The open files of the process whose `/proc/<pid>` is `proc_dir`.
fn open_files_at(proc_dir: &OwnedFd) -> Vec<Fd> {
    open_files_within(proc_dir, &mut HostScan::unbounded()).unwrap_or_default()
}

/// What a look through other processes' fds may still cost: entries read and
/// time. The processes outside a run may be anyone's: one user holding millions
/// of fds (dup'ed, a few bytes each) must not make every kill on the host list
/// them all (it made root's graceful kill of root's own run take 47 s instead of
/// 0.2 s with a million). Past it, the answer is "unknown" and the callers take
/// the side that acts on nothing (see [`outside_use`], [`stale_git_locks`]).
struct HostScan {
    entries: usize,
    until: Option<std::time::Instant>,
}

/// Fd entries one host-wide look reads at most, and how long it may take.
const HOST_SCAN_ENTRIES: usize = 200_000;
const HOST_SCAN_TIME: std::time::Duration = std::time::Duration::from_millis(500);

impl HostScan {
    fn unbounded() -> HostScan {
        HostScan {
            entries: usize::MAX,
            until: None,
        }
    }

    fn host() -> HostScan {
        HostScan {
            entries: HOST_SCAN_ENTRIES,
            until: std::time::Instant::now().checked_add(HOST_SCAN_TIME),
        }
    }

    /// Takes one entry; false once the budget is spent.
    fn take(&mut self) -> bool {
        if self.entries == 0 {
            return false;
        }
        self.entries -= 1;
        // The clock is read every 1024 entries only.
        if self.entries.is_multiple_of(1024)
            && self.until.is_some_and(|t| std::time::Instant::now() >= t)
        {
            self.entries = 0;
            return false;
        }
        true
    }
}

/// [`open_files_at`] within `budget`; `None` once it is spent.
fn open_files_within(proc_dir: &OwnedFd, budget: &mut HostScan) -> Option<Vec<Fd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let Ok(fd_dir) = rustix::fs::openat(proc_dir, "fd", flags, Mode::empty()) else {
        return Some(Vec::new());
    };
    let Ok(mut entries) = rustix::fs::Dir::read_from(&fd_dir) else {
        return Some(Vec::new());
    };
    let mut files = Vec::new();
    while let Some(Ok(e)) = entries.read() {
        let name = e.file_name();
        if name.to_bytes().starts_with(b".") {
            continue;
        }
        if !budget.take() {
            return None;
        }
        let Ok(target) = rustix::fs::readlinkat(&fd_dir, name, Vec::new()) else {
            continue;
        };
        let Ok(path) = target.into_string() else {
            continue;
        };
        // Only files on a filesystem; not pipes, sockets, deleted files, nor
        // the pseudo-filesystems (/dev/null, /proc, /sys), which hold no section.
        let pseudo = ["/dev/", "/proc/", "/sys/"]
            .iter()
            .any(|p| path.starts_with(p));
        if path.starts_with('/') && !pseudo && !path.ends_with(" (deleted)") {
            files.push(Fd {
                num: name.to_string_lossy().into_owned(),
                path,
            });
        }
    }
    Some(files)
}

/// The working directory of the process whose `/proc/<pid>` is `proc_dir`.
fn cwd_at(proc_dir: &OwnedFd) -> Option<PathBuf> {
    let target = rustix::fs::readlinkat(proc_dir, "cwd", Vec::new()).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(
        target.into_bytes(),
    )))
}

/// The fdinfo of an fd (empty when it cannot be read).
fn fdinfo(proc_root: &Path, pid: i32, fd: &str) -> String {
    fs::read_to_string(proc_root.join(pid.to_string()).join("fdinfo").join(fd)).unwrap_or_default()
}

/// The open flags of an fd, from the `flags:` line (octal) of its fdinfo.
fn fd_flags(fdinfo: &str) -> Option<u32> {
    let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(flags.trim(), 8).ok()
}

/// Whether the fdinfo of an fd lists a lock held on its file (`lock:` lines:
/// its flock and OFD locks, and the process's POSIX locks on that file).
fn fd_locked(fdinfo: &str) -> bool {
    fdinfo
        .lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .any(|l| !l.contains("->"))
}

/// Scans the processes of `scope` for open critical sections.
pub fn scan(proc_root: &Path, scope: &Scope) -> Vec<Finding> {
    // /proc/locks is read only once a regular file turns up: reading it takes the
    // kernel's file_rwsem for writing, which waits for an RCU grace period (~10 ms).
    // Every lock held (read or write; waiters are not holders).
    let held = std::cell::OnceCell::<Vec<Lock>>::new();
    let held = || {
        held.get_or_init(|| {
            let locks = fs::read_to_string(proc_root.join("locks")).unwrap_or_default();
            parse_locks(&locks)
                .into_iter()
                .filter(|l| !l.blocked)
                .collect()
        })
    };
    let on = |l: &Lock, meta: &fs::Metadata| {
        l.ino == meta.ino()
            && l.major == rustix::fs::major(meta.dev())
            && l.minor == rustix::fs::minor(meta.dev())
    };
    let excluded = |p: &str| scope.exclude.iter().any(|e| Path::new(p).starts_with(e));
    // The (device, inode) of each file the supervisor holds, read once when needed.
    let inherited = std::cell::OnceCell::<HashSet<(u64, u64)>>::new();
    let inherited = |dev: u64, ino: u64| {
        inherited
            .get_or_init(|| {
                let Some(sup) = scope.inherited_from else {
                    return HashSet::new();
                };
                open_files(proc_root, sup)
                    .iter()
                    .filter_map(|fd| {
                        let p = proc_root.join(sup.to_string()).join("fd").join(&fd.num);
                        fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
                    })
                    .collect()
            })
            .contains(&(dev, ino))
    };
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    // Listing each process's open files is most of the scan: on every core.
    let listed = crate::parallel::map(&scope.pids, 128, |&pid| {
        let Some(dir) = proc_dir(proc_root, pid) else {
            return (Vec::new(), None);
        };
        let cwd = scope.since.and_then(|_| cwd_at(&dir));
        (open_files_at(&dir), cwd)
    });
    let mut cwds = Vec::new();
    let mut all_files = Vec::with_capacity(listed.len());
    for (files, cwd) in listed {
        cwds.extend(cwd);
        all_files.push(files);
    }
    // The (device, inode) of each workspace file that is a run process's stdout
    // or stderr (a log, through whichever fd it is open), read once when needed.
    let streams = std::cell::OnceCell::<HashSet<(u64, u64)>>::new();
    let stream = |dev: u64, ino: u64| {
        streams
            .get_or_init(|| {
                let Some(ws) = scope.workspace.as_deref() else {
                    return HashSet::new();
                };
                scope
                    .pids
                    .iter()
                    .zip(&all_files)
                    .flat_map(|(pid, files)| files.iter().map(move |fd| (pid, fd)))
                    .filter(|(_, fd)| is_stream(&fd.num) && Path::new(&fd.path).starts_with(ws))
                    .filter_map(|(pid, fd)| {
                        let p = proc_root.join(pid.to_string()).join("fd").join(&fd.num);
                        fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
                    })
                    .collect()
            })
            .contains(&(dev, ino))
    };
    for (&pid, files) in scope.pids.iter().zip(&all_files) {
        if files.is_empty() {
            continue;
        }
        // None once the process is gone: what it held is no longer open.
        let command = std::cell::OnceCell::new();
        let command = || {
            command
                .get_or_init(|| procfs::cmdline(proc_root, pid))
                .clone()
        };
        for fd in files {
            if excluded(&fd.path) || !seen.insert((pid, fd.path.clone())) {
                continue;
            }
            let fd_path = proc_root.join(pid.to_string()).join("fd").join(&fd.num);
            let Ok(meta) = fs::metadata(&fd_path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            // Read once for its flags and its locks.
            let info = std::cell::OnceCell::new();
            let info = || {
                info.get_or_init(|| fdinfo(proc_root, pid, &fd.num))
                    .as_str()
            };
            let locked = || {
                held().iter().any(|l| {
                    // An OFD lock has no owner pid (-1).
                    l.write && (l.pid == pid || l.pid == -1) && on(l, &meta)
                })
            };
            // Any holder: a flock's pid is whoever took it, maybe before a fork.
            // `/proc/locks` longer than a page is read in several calls, between
            // which the kernel lets go of its list: a lock can be skipped when
            // others come and go. The fd's own fdinfo lists its locks too.
            let lock_file = || {
                (held().iter().any(|l| on(l, &meta)) || fd_locked(info()))
                    && lock_file_only(&meta, scope.since)
            };
            // Read once for its flags and its locks.
            let info = std::cell::OnceCell::new();
            let info = || {
                info.get_or_init(|| fdinfo(proc_root, pid, &fd.num))
                    .as_str()
            };
            let sqlite = std::cell::OnceCell::new();
            let sqlite = || *sqlite.get_or_init(|| is_sqlite_file(&fd.path));
            let kind = if is_git_lock(&fd.path) {
                Some(SectionKind::Git)
            } else if (locked() || fd.path.ends_with("-journal")) && sqlite() {
                Some(SectionKind::Database)
            } else if scope
                .workspace
                .as_deref()
                .is_some_and(|ws| Path::new(&fd.path).starts_with(ws))
                && !is_stream(&fd.num)
                && fd_flags(info()).is_some_and(writes_in_place)
                && !inherited(meta.dev(), meta.ino())
                && !stream(meta.dev(), meta.ino())
                && !sqlite()
                && !lock_file()
            {
                Some(SectionKind::Files)
            } else {
                None
            };
            if let Some(kind) = kind {
                let Some(command) = command() else {
                    break;
                };
                found.push(Finding {
                    kind,
                    path: fd.path.clone(),
                    pid,
                    command,
                    dev: meta.dev(),
                    ino: meta.ino(),
                });
            }
        }
    }
    if let Some(since) = scope.since {
        let closed = closed_git_locks(proc_root, scope, since, cwds, &found);
        found.extend(closed);
    }
    found
}

/// The git directories a run uses: its workspace's, those of its processes'
/// working directories, and those its processes have files open in; with the
/// common directory of each linked worktree.
fn git_dirs_used(
    workspace: Option<&Path>,
    mut cwds: Vec<PathBuf>,
    open: &[Finding],
    owner: Option<u32>,
) -> Vec<PathBuf> {
    cwds.sort();
    cwds.dedup();
    let dirs: Vec<PathBuf> = workspace
        .map(|ws| ws.join(".git"))
        .into_iter()
        .chain(
            cwds.iter()
                .filter_map(|c| gitlocks::git_dir_above(c, owner)),
        )
        .chain(open.iter().filter_map(|f| git_dir_of(&f.path)))
        .flat_map(|d| gitlocks::with_common_dir(d, owner))
        .collect();
    gitlocks::outermost(dirs)
}

/// Git locks in the directories the run uses that no fd of the run holds open
/// (git closed it, or this run never had it open), created since the run
/// started and held by no process outside the run.
fn closed_git_locks(
    proc_root: &Path,
    scope: &Scope,
    since: SystemTime,
    cwds: Vec<PathBuf>,
    open: &[Finding],
) -> Vec<Finding> {
    let dirs = git_dirs_used(scope.workspace.as_deref(), cwds, open, scope.owner);
    let locks: Vec<(&PathBuf, LockFile)> = dirs
        .iter()
        .flat_map(|d| {
            gitlocks::list(d, scope.owner)
                .into_iter()
                .map(move |l| (d, l))
        })
        .filter(|(_, l)| created_since(l, since))
        .filter(|(_, l)| !open.iter().any(|f| f.dev == l.dev && f.ino == l.ino))
        .collect();
    if locks.is_empty() {
        return Vec::new();
    }
    let paths: Vec<String> = locks
        .iter()
        .map(|(_, l)| l.path.display().to_string())
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    // The run is its processes and its supervisor.
    let run: Vec<i32> = scope
        .pids
        .iter()
        .copied()
        .chain(scope.inherited_from)
        .collect();
    let outside = outside_use(proc_root, &refs, &run);
    let files: Vec<LockFile> = locks.iter().map(|(_, l)| l.clone()).collect();
    let creators = Creators::of(scope.creators.as_ref(), &files);
    // Not the run's: a lock someone outside holds open, one someone else
    // created, or (its creator unknown) one in a repository someone outside
    // works in (git there may be in a hook with the fd closed).
    let locks: Vec<LockFile> = locks
        .into_iter()
        .zip(creators)
        .filter(|((dir, l), creator)| {
            !outside.held.contains(&l.path.display().to_string())
                && match creator {
                    Creator::Run => true,
                    Creator::Other => false,
                    Creator::Unknown => gitlocks::work_tree(dir, &l.path)
                        .is_none_or(|wt| !outside.cwds.iter().any(|c| c.starts_with(&wt))),
                }
        })
        .map(|((_, l), _)| l)
        .collect();
    // Named after a git process of the run if there is one, else its first process.
    let commands: Vec<(i32, String)> = scope
        .pids
        .iter()
        .filter_map(|&p| procfs::cmdline(proc_root, p).map(|c| (p, c)))
        .collect();
    let Some((pid, command)) = commands
        .iter()
        .find(|(_, c)| c == "git" || c.starts_with("git "))
        .or(commands.first())
        .cloned()
    else {
        return Vec::new();
    };
    locks
        .into_iter()
        .map(|l| Finding {
            kind: SectionKind::Git,
            path: l.path.display().to_string(),
            pid,
            command: command.clone(),
            dev: l.dev,
            ino: l.ino,
        })
        .collect()
}

/// Every path any live process on the host has open, for checking that a lock
/// file is held by nobody before it is removed. Unknown (the look cost more
/// than a [`HostScan`] allows): every path, so that nothing is removed.
pub fn held_anywhere(proc_root: &Path, paths: &[&str]) -> HashSet<String> {
    held_outside(proc_root, paths, &[]).unwrap_or_else(|| {
        tracing::warn!(
            "cannot tell within {HOST_SCAN_ENTRIES} fds or {HOST_SCAN_TIME:?} whether a \
             process holds {paths:?}: left in place"
        );
        paths.iter().map(|p| p.to_string()).collect()
    })
}

/// What the live processes other than `except` use: which of `paths` they
/// have open, and their working directories.
struct OutsideUse {
    held: HashSet<String>,
    cwds: Vec<PathBuf>,
}

fn outside_use(proc_root: &Path, paths: &[&str], except: &[i32]) -> OutsideUse {
    let except: HashSet<i32> = except.iter().copied().collect();
    let pids: Vec<i32> = procfs::all_pids(proc_root)
        .into_iter()
        .filter(|p| !except.contains(p))
        .collect();
    let cwds = pids
        .iter()
        .filter_map(|p| fs::read_link(proc_root.join(p.to_string()).join("cwd")).ok())
        .collect();
    // Unknown (the look cost too much): every lock is taken as held outside,
    // so none is counted as the run's.
    let held = held_by(proc_root, paths, &pids)
        .unwrap_or_else(|| paths.iter().map(|p| p.to_string()).collect());
    OutsideUse { held, cwds }
}

/// How far an inode's times may lag the clock the run's start was read from:
/// the kernel stamps them from a coarse clock (one tick, up to 10 ms, behind).
const COARSE_CLOCK_SLACK: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether a lock was created (its ctime) since `since`, allowing for the
/// coarse clock inode times come from.
fn created_since(lock: &LockFile, since: SystemTime) -> bool {
    lock.ctime + COARSE_CLOCK_SLACK >= since
}

/// Which of `paths` a live process other than `except` has open; `None` when
/// that could not be told within a [`HostScan`] budget.
fn held_outside(proc_root: &Path, paths: &[&str], except: &[i32]) -> Option<HashSet<String>> {
    let except: HashSet<i32> = except.iter().copied().collect();
    let pids: Vec<i32> = procfs::all_pids(proc_root)
        .into_iter()
        .filter(|p| !except.contains(p))
        .collect();
    held_by(proc_root, paths, &pids)
}

/// Which of `paths` one of `pids` has open; `None` when that could not be
/// told within a [`HostScan`] budget.
fn held_by(proc_root: &Path, paths: &[&str], pids: &[i32]) -> Option<HashSet<String>> {
    let wanted: HashSet<&str> = paths.iter().copied().collect();
    let mut held = HashSet::new();
    let mut budget = HostScan::host();
    for &pid in pids {
        let Some(dir) = proc_dir(proc_root, pid) else {
            continue;
        };
        for fd in open_files_within(&dir, &mut budget)? {
            if wanted.contains(fd.path.as_str()) {
                held.insert(fd.path);
            }
        }
    }
    Some(held)
}

/// The git lock files that processes of a dead run had open (or created with
/// their fd closed) and that are still there: the same device and inode, held
/// by no live process. The caller removes them ([`gitlocks::remove`]).
pub fn stale_git_locks(proc_root: &Path, seen: &[Finding]) -> Vec<LockFile> {
    let mut candidates: Vec<&Finding> =
        seen.iter().filter(|f| f.kind == SectionKind::Git).collect();
    // One path may have been several files (a lock released and taken again by
    // the next git command): each is a candidate, at most one is still there.
    candidates.sort_by_key(|f| (&f.path, f.dev, f.ino));
    candidates.dedup_by_key(|f| (&f.path, f.dev, f.ino));
    if candidates.is_empty() {
        return Vec::new();
    }
    let paths: Vec<&str> = candidates.iter().map(|f| f.path.as_str()).collect();
    let held = held_anywhere(proc_root, &paths);
    candidates
        .into_iter()
        .filter(|f| !held.contains(&f.path))
        .filter(|f| {
            fs::symlink_metadata(&f.path).is_ok_and(|m| m.dev() == f.dev && m.ino() == f.ino)
        })
        .map(|f| LockFile {
            path: PathBuf::from(&f.path),
            dev: f.dev,
            ino: f.ino,
            ctime: SystemTime::UNIX_EPOCH,
        })
        .collect()
}

/// Removes `locks` ([`gitlocks::remove`]: still the same file, never through a
/// symlink) with this thread's credentials; the paths removed.
pub fn remove_locks(locks: &[LockFile]) -> Vec<String> {
    locks
        .iter()
        .filter(|l| gitlocks::remove(l))
        .map(|l| l.path.display().to_string())
        .collect()
}

/// The git directory a lock path lies in: the path up to and including `.git`.
pub fn git_dir_of(path: &str) -> Option<PathBuf> {
    let mut dir = PathBuf::new();
    for c in Path::new(path).components() {
        dir.push(c);
        if c.as_os_str() == ".git" {
            return Some(dir);
        }
    }
    None
}

/// Git lock files a dead run left that it was never seen holding: git closes
/// `index.lock` and `HEAD.lock` after writing them and keeps them until it
/// renames them, so a process killed in between leaves a lock no fd points to.
/// A lock in one of `git_dirs` (owned by `owner`, when given) is a candidate
/// when it was created since the run started (`since`), no live process holds
/// it, and `creators` says the run created it; when its creator is unknown,
/// only if no live process works in that repository (its cwd inside the work
/// tree): then nobody can be in the middle of using it. A lock someone else
/// created is never one. The caller removes them.
pub fn orphan_git_locks(
    proc_root: &Path,
    git_dirs: &[PathBuf],
    since: SystemTime,
    owner: Option<u32>,
    creators: Option<&Creators>,
) -> Vec<LockFile> {
    let mut out = Vec::new();
    for git_dir in git_dirs {
        let mut locks = gitlocks::list(git_dir, owner);
        locks.retain(|l| created_since(l, since));
        if locks.is_empty() {
            continue;
        }
        let work_tree = git_dir.parent().unwrap_or(git_dir);
        let busy = std::cell::OnceCell::new();
        let busy = || {
            *busy.get_or_init(|| {
                procfs::all_pids(proc_root).into_iter().any(|pid| {
                    fs::read_link(proc_root.join(pid.to_string()).join("cwd"))
                        .is_ok_and(|cwd| cwd.starts_with(work_tree))
                })
            })
        };
        let who = Creators::of(creators, &locks);
        let locks: Vec<LockFile> = locks
            .into_iter()
            .zip(who)
            .filter(|(_, creator)| match creator {
                Creator::Run => true,
                Creator::Other => false,
                Creator::Unknown => !busy(),
            })
            .map(|(l, _)| l)
            .collect();
        if locks.is_empty() {
            continue;
        }
        let paths: Vec<String> = locks.iter().map(|l| l.path.display().to_string()).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let held = held_anywhere(proc_root, &refs);
        out.extend(
            locks
                .into_iter()
                .filter(|l| !held.contains(&l.path.display().to_string())),
        );
    }
    out
}

#[cfg(test)]
mod tests;
