//! Whether a workspace may be removed at the end of its run: never when it
//! holds something the run did not make (a file, link or directory born,
//! changed or modified before the run began: `statx` birth, change and
//! modification times), nor a git repository with uncommitted changes or
//! untracked files.
//!
//! Runs in the removal child of src/walk.rs, already as the workspace's owner,
//! on the directory fd it opened without following symlinks. The tree is walked
//! iteratively (one open directory per level, at most [`MAX_DEPTH`] levels),
//! within the walk's budget; a tree it cannot look at in full is kept.
//!
//! Git is asked, not second-guessed: `git status --porcelain` run as the owner
//! (never as root), with an empty environment, no system or global config,
//! `core.fsmonitor=false`, no hooks, no optional locks (it writes nothing), its
//! discovery fenced to the repository (`GIT_CEILING_DIRECTORIES`), in a process
//! group of its own that dies with this process and is killed at the budget.
//! Why not read `.git/index` ourselves: telling "changed" from "unchanged"
//! means git's racy-timestamp rules, its ignore rules and index versions 2 to 4;
//! a guess errs one way (a false "clean" loses data) or the other (every build
//! tree with an ignored `target/` kept). What git itself may run from the
//! repository's own config (a clean filter) runs as the owner, who could run it
//! anyway, and is bounded like the rest. Without git, a repository is kept.
//!
//! A leaf: it knows nothing of runs or the agent.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags, StatxTimestamp};

use crate::walk::Budget;

/// How deep the look goes (one open directory per level); deeper is kept.
pub const MAX_DEPTH: usize = 256;
/// At most this many git repositories are asked; more are kept.
pub const MAX_REPOS: usize = 16;
/// File times come from a clock that may lag the wall clock by a tick.
const CLOCK_SLACK: Duration = Duration::from_millis(20);
/// Where git is looked for (the environment is not trusted for it).
const GIT: [&str; 3] = ["/usr/bin/git", "/bin/git", "/usr/local/bin/git"];

/// Why the workspace open as `top` (at `path`) must be kept, if it must: the
/// first thing below it older than `started`, a git repository in it with
/// changes, or what could not be looked at. Uses at most half of `budget`'s time.
pub fn kept_because(
    top: &OwnedFd,
    path: &Path,
    started: SystemTime,
    budget: &Budget,
) -> Option<String> {
    let deadline = Instant::now() + budget.time / 2;
    let since = started.checked_sub(CLOCK_SLACK).unwrap_or(started);
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| (d.as_secs() as i64, d.subsec_nanos()))
        .unwrap_or((0, 0));
    let mut look = Look {
        path,
        since,
        deadline,
        entries: 0,
        max_entries: budget.max_entries,
        mount: match rustix::fs::statx(top, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID) {
            Ok(st) => st.stx_mnt_id,
            Err(e) => return Some(format!("{}: {e}", path.display())),
        },
        repos: Vec::new(),
    };
    let first = match reopen(top) {
        Ok(fd) => fd,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let subdirs = match look.scan(&first, Path::new("")) {
        Ok(s) => s,
        Err(why) => return Some(why),
    };
    // The levels open now: each directory, its path below the top, the
    // subdirectories of it still to look at.
    let mut stack: Vec<(OwnedFd, PathBuf, Vec<CString>)> = vec![(first, PathBuf::new(), subdirs)];
    loop {
        let depth = stack.len();
        let Some((fd, rel, todo)) = stack.last_mut() else {
            break;
        };
        let Some(name) = todo.pop() else {
            stack.pop();
            continue;
        };
        let rel = rel.join(OsStr::from_bytes(name.as_bytes()));
        if depth >= MAX_DEPTH {
            return Some(format!(
                "{} is deeper than {MAX_DEPTH} levels: not looked at in full",
                look.shown(&rel)
            ));
        }
        let sub = match rustix::fs::openat(
            &*fd,
            name.as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(sub) => sub,
            Err(e) => return Some(format!("cannot look into {}: {e}", look.shown(&rel))),
        };
        let subdirs = match look.scan(&sub, &rel) {
            Ok(s) => s,
            Err(why) => return Some(why),
        };
        stack.push((sub, rel, subdirs));
    }
    if look.repos.len() > MAX_REPOS {
        return Some(format!(
            "it holds more than {MAX_REPOS} git repositories: not all asked"
        ));
    }
    for repo in &look.repos {
        let worktree = path.join(repo);
        if let Some(why) = git_changes(&worktree, deadline) {
            return Some(why);
        }
    }
    None
}

/// A second fd on the directory `dir`, to hold in the walk's stack.
fn reopen(dir: &OwnedFd) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

struct Look<'a> {
    path: &'a Path,
    /// The run's start (with the slack), as seconds and nanoseconds.
    since: (i64, u32),
    deadline: Instant,
    entries: u64,
    max_entries: u64,
    mount: u64,
    /// Directories (below the top) that hold a `.git`.
    repos: Vec<PathBuf>,
}

impl Look<'_> {
    fn shown(&self, rel: &Path) -> String {
        self.path.join(rel).display().to_string()
    }

    fn older(&self, t: StatxTimestamp) -> bool {
        (t.tv_sec, t.tv_nsec) < self.since
    }

    /// Looks at every entry of the directory `dir` (at `rel`): `Err` says why
    /// the workspace is kept; `Ok` are its subdirectories to look into.
    fn scan(&mut self, dir: &OwnedFd, rel: &Path) -> Result<Vec<CString>, String> {
        let entries = rustix::fs::Dir::read_from(dir)
            .map_err(|e| format!("cannot read {}: {e}", self.shown(rel)))?;
        let mut subdirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", self.shown(rel)))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            self.entries += 1;
            if self.entries > self.max_entries {
                return Err(format!(
                    "it holds more than {} entries (the walk's budget): not looked at in full",
                    self.max_entries
                ));
            }
            if Instant::now() > self.deadline {
                return Err("not looked at in full within the walk's time budget".into());
            }
            let here = rel.join(OsStr::from_bytes(name.to_bytes()));
            let st = rustix::fs::statx(
                dir,
                name,
                AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC,
                StatxFlags::TYPE
                    | StatxFlags::MTIME
                    | StatxFlags::CTIME
                    | StatxFlags::BTIME
                    | StatxFlags::MNT_ID,
            )
            .map_err(|e| format!("cannot look at {}: {e}", self.shown(&here)))?;
            let born_before = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::BTIME)
                && self.older(st.stx_btime);
            if born_before || self.older(st.stx_mtime) || self.older(st.stx_ctime) {
                return Err(format!(
                    "{} is older than the run (not made by it)",
                    self.shown(&here)
                ));
            }
            let is_dir = FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory;
            if name == c".git" {
                self.repos.push(rel.to_path_buf());
            }
            if is_dir {
                if st.stx_mnt_id != self.mount {
                    return Err(format!("{} is a mount point", self.shown(&here)));
                }
                subdirs.push(name.to_owned());
            }
        }
        Ok(subdirs)
    }
}

/// Why the git repository whose work tree is `worktree` must be kept, if it
/// must: what `git status --porcelain` lists (changes, untracked files), or
/// that git could not say (see the module's doc for how git is run).
fn git_changes(worktree: &Path, deadline: Instant) -> Option<String> {
    let shown = worktree.display();
    let Some(git) = GIT.iter().find(|g| Path::new(g).exists()) else {
        return Some(format!(
            "{shown} is a git repository and git is not installed to tell whether it has \
             uncommitted changes"
        ));
    };
    let ceiling = worktree.parent().unwrap_or(Path::new("/"));
    let mut cmd = Command::new(git);
    cmd.args([
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.untrackedCache=false",
        "-c",
        "core.hooksPath=/dev/null",
        "--no-optional-locks",
        "-C",
    ])
    .arg(worktree)
    .args([
        "status",
        "--porcelain",
        "--untracked-files=normal",
        "--ignore-submodules=none",
    ])
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("HOME", "/nonexistent")
    .env("LC_ALL", "C")
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_CONFIG_GLOBAL", "/dev/null")
    .env("GIT_OPTIONAL_LOCKS", "0")
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_CEILING_DIRECTORIES", ceiling)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    crate::sys::process::die_with_parent_before_exec(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Some(format!("cannot ask git about {shown}: {e}")),
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut pipe) = pipe {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if kept.len() < 4096 {
                        kept.extend_from_slice(&buf[..n.min(4096 - kept.len())]);
                    }
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => break None,
        }
    };
    let Some(status) = status else {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.wait();
        return Some(format!(
            "git did not say within the walk's time budget whether {shown} has uncommitted changes"
        ));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        return Some(format!(
            "git could not tell whether {shown} has uncommitted changes ({status}): {}",
            err.lines().next().unwrap_or("").trim()
        ));
    }
    let first = out.lines().next()?;
    Some(format!(
        "the git repository {shown} has uncommitted changes or untracked files (git status: {})",
        first.trim()
    ))
}
