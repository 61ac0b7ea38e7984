//! Removal of trees a user made (a run directory, a TMPDIR, a workspace), the way
//! SECURITY.md's "Walks as the user" class requires:
//!
//! - iteratively ([`remove_contents`]): one directory fd held at a time, going up
//!   with `..` checked against the device and inode seen on the way down, so the
//!   depth of a tree never touches a stack; with a budget of depth, entries and
//!   time; never following a symlink (`O_NOFOLLOW`, `unlinkat` of the link itself)
//!   and never entering another mount (`statx` mount ids, `AT_STATX_DONT_SYNC`);
//! - in a short-lived process of its own ([`remove_in_child`]): the agent's own
//!   executable run again with a hidden first argument ([`CHILD_ARG`]), which opens
//!   the tree as root, then drops to the owner's uid, gid and groups, with a memory
//!   limit (RLIMIT_AS) and the agent's death as its own (PR_SET_PDEATHSIG). The
//!   agent waits on a pidfd at most the time budget and SIGKILLs it after, so a
//!   pathological tree (60,000 levels, millions of entries, a FUSE mount that
//!   never answers) costs that process, and is reported, never the agent.
//!
//! Before a workspace is removed, the child looks at it as its owner
//! ([`crate::workspace_check::kept_because`]): a workspace holding anything older than the run, or a git
//! repository with uncommitted changes or untracked files, is kept, and why is said.
//!
//! A leaf: it knows nothing of runs or the agent.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsString};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};

use crate::userfs::{self, Cred};

/// What one removal may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Levels below the top directory.
    pub max_depth: usize,
    /// Directory entries read (an entry read again counts again).
    pub max_entries: u64,
    /// Wall time, from the start of the walk (of the process, in a child).
    pub time: Duration,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            max_depth: 100_000,
            max_entries: 2_000_000,
            time: Duration::from_secs(20),
        }
    }
}

impl Budget {
    /// The default budget, with `WFCG_WALK_MAX_ENTRIES`, `WFCG_WALK_MAX_DEPTH` and
    /// `WFCG_WALK_SECONDS` from the agent's environment (the operator's) if set.
    pub fn from_env() -> Budget {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let d = Budget::default();
        Budget {
            max_depth: var("WFCG_WALK_MAX_DEPTH").map_or(d.max_depth, |v| v.min(1 << 24) as usize),
            max_entries: var("WFCG_WALK_MAX_ENTRIES").unwrap_or(d.max_entries),
            time: var("WFCG_WALK_SECONDS")
                .map_or(d.time, |s| Duration::from_secs(s.clamp(1, 3600))),
        }
    }
}

/// A file's identity: device and inode.
type Id = (u64, u64);

fn id_of(fd: impl AsFd) -> rustix::io::Result<Id> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

fn mount_of(fd: impl AsFd) -> rustix::io::Result<u64> {
    Ok(rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?.stx_mnt_id)
}

fn open_subdir(dir: impl AsFd, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Removes everything below the directory open as `top`, without recursion (see
/// the module's doc). `Err` says what was left and why; what could be removed is.
pub fn remove_contents(top: &OwnedFd, budget: &Budget) -> Result<(), String> {
    let deadline = Instant::now() + budget.time;
    let top_id = id_of(top).map_err(|e| format!("cannot stat the top directory: {e}"))?;
    let mount = mount_of(top).map_err(|e| format!("cannot stat the top directory: {e}"))?;
    // The levels below the top: each directory's name in its parent and identity.
    let mut stack: Vec<(CString, Id)> = Vec::new();
    // Directories that could not be removed (or not entered): not tried again.
    let mut stuck: HashSet<Id> = HashSet::new();
    let mut problems: Vec<String> = Vec::new();
    let note = |problems: &mut Vec<String>, p: String| {
        if problems.len() < 5 {
            problems.push(p);
        }
    };
    let mut entries: u64 = 0;
    let mut cur: Option<OwnedFd> = None;
    loop {
        let here = cur.as_ref().unwrap_or(top);
        if Instant::now() > deadline {
            return Err(format!(
                "not removed within {:?} (the walk's time budget)",
                budget.time
            ));
        }
        let dir = rustix::fs::Dir::read_from(here)
            .map_err(|e| format!("cannot read a directory: {e}"))?;
        let mut down: Option<(CString, Id)> = None;
        for entry in dir {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    note(&mut problems, format!("cannot read a directory: {e}"));
                    break;
                }
            };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            entries += 1;
            if entries > budget.max_entries {
                return Err(format!(
                    "more than {} entries (the walk's budget)",
                    budget.max_entries
                ));
            }
            if !matches!(entry.file_type(), FileType::Directory | FileType::Unknown) {
                match rustix::fs::unlinkat(here, name, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::ISDIR) => {}
                    Err(e) => note(&mut problems, format!("cannot remove {name:?}: {e}")),
                }
                continue;
            }
            let st = match rustix::fs::statx(
                here,
                name,
                AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC,
                StatxFlags::TYPE | StatxFlags::INO | StatxFlags::MNT_ID,
            ) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => {
                    note(&mut problems, format!("cannot stat {name:?}: {e}"));
                    continue;
                }
            };
            let id = (
                rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
                st.stx_ino,
            );
            if FileType::from_raw_mode(st.stx_mode.into()) != FileType::Directory {
                match rustix::fs::unlinkat(here, name, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => note(&mut problems, format!("cannot remove {name:?}: {e}")),
                }
                continue;
            }
            if stuck.contains(&id) {
                continue;
            }
            if st.stx_mnt_id != mount {
                note(
                    &mut problems,
                    format!("{name:?} is a mount point (not entered)"),
                );
                stuck.insert(id);
                continue;
            }
            if stack.len() >= budget.max_depth {
                note(
                    &mut problems,
                    format!(
                        "deeper than {} levels (the walk's budget)",
                        budget.max_depth
                    ),
                );
                stuck.insert(id);
                continue;
            }
            down = Some((name.to_owned(), id));
            break;
        }
        if let Some((name, id)) = down {
            match open_subdir(here, &name) {
                Ok(sub) if id_of(&sub) == Ok(id) => {
                    stack.push((name, id));
                    cur = Some(sub);
                }
                Ok(_) => {} // replaced since the stat: read this directory again
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    note(&mut problems, format!("cannot open {name:?}: {e}"));
                    stuck.insert(id);
                }
            }
            continue;
        }
        // Nothing left to enter here: go up and remove this directory.
        let Some((name, id)) = stack.pop() else {
            break;
        };
        let parent = open_subdir(here, c"..").map_err(|e| format!("cannot go up: {e}"))?;
        let parent_id = stack.last().map_or(top_id, |(_, id)| *id);
        if id_of(&parent) != Ok(parent_id) {
            return Err("the tree was moved during the walk".into());
        }
        let still = rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| (st.st_dev, st.st_ino) == id);
        if still {
            match rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    note(
                        &mut problems,
                        format!("cannot remove the directory {name:?}: {e}"),
                    );
                    stuck.insert(id);
                }
            }
        }
        cur = Some(parent);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The hidden first argument that makes the `wfcg` binary a removal child.
pub const CHILD_ARG: &str = "__wfcg-remove-tree";
/// Exit code of a child that left something.
const LEFT: i32 = 3;
/// Exit code of a child that kept a workspace on purpose (see [`KEPT`]).
const KEPT_CODE: i32 = 4;
/// The child's address space limit.
const CHILD_MEMORY: u64 = 2 << 30;

/// What to remove in a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The directory's contents only (its parent is the agent's: the agent
    /// removes the emptied directory itself).
    Contents,
    /// The whole directory, after [`userfs::removal_problem`] and
    /// [`crate::workspace_check::kept_because`] find nothing against it (a workspace), its own name
    /// removed as the owner too. `started`: when the run began; anything below
    /// the directory older than that was not made by the run, and is kept.
    Workspace { started: SystemTime },
}

/// The start of an error of [`remove_in_child`] that says a workspace was kept
/// on purpose (its data is not the run's to remove), not that its removal failed.
pub const KEPT: &str = "kept: ";

/// Removes `path` (see [`Removal`]) in a child process run as `cred`, within
/// `budget`. `Err` says what was left and why.
pub fn remove_in_child(
    path: &Path,
    cred: &Cred,
    mode: Removal,
    budget: &Budget,
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let groups: Vec<String> = cred.groups.iter().map(u32::to_string).collect();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0("wfcg-remove-tree")
        .arg(CHILD_ARG)
        .arg(match mode {
            Removal::Contents => "contents".to_string(),
            Removal::Workspace { started } => {
                let t = started
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                format!("workspace:{}.{:09}", t.as_secs(), t.subsec_nanos())
            }
        })
        .arg(cred.uid.to_string())
        .arg(cred.gid.to_string())
        .arg(groups.join(","))
        .arg(budget.max_depth.to_string())
        .arg(budget.max_entries.to_string())
        .arg(budget.time.as_millis().to_string())
        .arg(path)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the removal process: {e}"))?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let pidfd =
        pid.and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    // Its budget runs from its own start; a little more for exec and the report.
    let limit = budget.time + Duration::from_secs(2);
    let ended = match &pidfd {
        Some(fd) => {
            let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
            let deadline = Instant::now() + limit;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let t = rustix::event::Timespec::try_from(left).ok();
                match rustix::event::poll(&mut fds, t.as_ref()) {
                    Ok(n) if n > 0 => break true,
                    Ok(_) => break false,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => break false,
                }
            }
        }
        None => false,
    };
    if !ended {
        // Our own unreaped child: its pid cannot have been reused.
        match &pidfd {
            Some(fd) => {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
            None => {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        return Err(format!(
            "not removed within {:?} (the walk's time budget); its process was killed",
            budget.time
        ));
    }
    let mut said = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = out.take(4096).read_to_string(&mut said);
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for the removal process: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(LEFT) if !said.trim().is_empty() => Err(said.trim().to_string()),
        Some(KEPT_CODE) => Err(format!("{KEPT}{}", said.trim())),
        _ => Err(format!(
            "the removal process failed ({status}): {}",
            said.trim()
        )),
    }
}

/// The removal child's `main`: `wfcg __wfcg-remove-tree MODE UID GID GROUPS
/// DEPTH ENTRIES MILLIS PATH`. Prints what was left on stdout; exits 0 when all
/// was removed, 3 when something was left, 2 on bad arguments.
pub fn child_main(args: &[OsString]) -> i32 {
    let Some(parsed) = parse_child_args(args) else {
        say("bad arguments to the removal process");
        return 2;
    };
    let (mode, cred, budget, path) = parsed;
    match child_remove(mode, &cred, &budget, &path) {
        Ok(()) => 0,
        Err(e) => {
            let (e, code) = match e.strip_prefix(KEPT) {
                Some(why) => (why, KEPT_CODE),
                None => (e.as_str(), LEFT),
            };
            // At most 2,000 bytes, cut on a character boundary (names may be any UTF-8).
            let end = (0..=e.len().min(2000))
                .rev()
                .find(|&i| e.is_char_boundary(i))
                .unwrap_or(0);
            say(&e[..end]);
            code
        }
    }
}

/// The child's report to the agent, one line on stdout (a pipe the agent reads).
fn say(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{what}");
}

fn parse_child_args(args: &[OsString]) -> Option<(Removal, Cred, Budget, PathBuf)> {
    let s = |i: usize| args.get(i)?.to_str();
    let mode = match s(0)? {
        "contents" => Removal::Contents,
        m => {
            let (secs, nanos) = m.strip_prefix("workspace:")?.split_once('.')?;
            let since = Duration::new(secs.parse().ok()?, nanos.parse().ok()?);
            Removal::Workspace {
                started: SystemTime::UNIX_EPOCH.checked_add(since)?,
            }
        }
    };
    let groups = s(3)?;
    let cred = Cred {
        uid: s(1)?.parse().ok()?,
        gid: s(2)?.parse().ok()?,
        groups: if groups.is_empty() {
            Vec::new()
        } else {
            groups
                .split(',')
                .map(|g| g.parse().ok())
                .collect::<Option<_>>()?
        },
    };
    let budget = Budget {
        max_depth: s(4)?.parse().ok()?,
        max_entries: s(5)?.parse().ok()?,
        time: Duration::from_millis(s(6)?.parse().ok()?),
    };
    let path = PathBuf::from(args.get(7)?);
    (args.len() == 8 && path.is_absolute()).then_some((mode, cred, budget, path))
}

/// Becomes `cred` for good: groups, gid, uid (real, effective, saved).
fn become_user(cred: &Cred) -> Result<(), String> {
    if cred.is_root() {
        return Ok(());
    }
    use crate::sys::creds;
    creds::set_groups(&cred.groups).map_err(|e| format!("setgroups: {e}"))?;
    creds::set_gid(cred.gid).map_err(|e| format!("setgid: {e}"))?;
    creds::set_uid(cred.uid).map_err(|e| format!("setuid: {e}"))?;
    if rustix::process::geteuid().as_raw() != cred.uid {
        return Err("cannot drop to the owner's uid".into());
    }
    Ok(())
}

fn child_remove(mode: Removal, cred: &Cred, budget: &Budget, path: &Path) -> Result<(), String> {
    // Dies with the agent; bounded in memory.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(CHILD_MEMORY),
            maximum: Some(CHILD_MEMORY),
        },
    );
    let shown = path.display();
    match mode {
        Removal::Contents => {
            // Opened as root (the agent's directories above it may be closed to
            // the user), then the user's rights only.
            let top = match userfs::open_dir(path) {
                Ok(fd) => fd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(format!("{shown}: {e}")),
            };
            become_user(cred)?;
            remove_contents(&top, budget).map_err(|e| format!("{shown}: {e}"))
        }
        Removal::Workspace { started } => {
            // Gone already (the run removed it): removed.
            if std::fs::symlink_metadata(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            {
                return Ok(());
            }
            let homes = crate::users::home_dirs(cred.uid);
            if let Some(problem) = userfs::removal_problem(path, cred, &homes) {
                return Err(problem);
            }
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(format!("{shown} has no parent"));
            };
            let parent = userfs::open_dir(parent).map_err(|e| format!("{shown}: {e}"))?;
            let name = CString::new(name.as_bytes()).map_err(|e| format!("{shown}: {e}"))?;
            let top = open_subdir(&parent, &name).map_err(|e| format!("{shown}: {e}"))?;
            become_user(cred)?;
            // The change of credentials cleared the parent-death signal.
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
            if let Some(why) = crate::workspace_check::kept_because(&top, path, started, budget) {
                return Err(format!("{KEPT}{why}"));
            }
            remove_contents(&top, budget).map_err(|e| format!("{shown}: {e}"))?;
            let still = id_of(&top).ok()
                == rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .map(|st| (st.st_dev, st.st_ino));
            if !still {
                return Err(format!("{shown} was replaced during its removal"));
            }
            rustix::fs::unlinkat(&parent, &name, AtFlags::REMOVEDIR)
                .map_err(|e| format!("{shown}: {e}"))
        }
    }
}

/// Removes the directory `path` in a directory of the agent's (a run directory,
/// a TMPDIR): its contents in a child run as `cred` ([`remove_in_child`]), then
/// the emptied directory itself by the caller (root), through its parent's fd.
/// Absent is removed.
pub fn remove_agent_dir(path: &Path, cred: &Cred, budget: &Budget) -> Result<(), String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} has no parent", path.display()));
    };
    let parent = match userfs::open_dir(parent) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            // Not ours to walk: only its name goes.
            return rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                .map_err(|e| format!("{}: {e}", path.display()));
        }
        Ok(_) => {}
    }
    // An empty directory (the usual case) needs no child.
    match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    remove_in_child(path, cred, Removal::Contents, budget)?;
    match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget {
            max_depth: 100_000,
            max_entries: 10_000_000,
            time: Duration::from_secs(60),
        }
    }

    /// A chain of `depth` directories below `top`, made with relative mkdir and
    /// a walk down by fd (no path grows).
    fn deep_chain(top: &Path, depth: usize) {
        let mut cur = userfs::open_dir(top).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&cur, "d", Mode::from_raw_mode(0o700)).unwrap();
            rustix::fs::openat(
                &cur,
                "f",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o600),
            )
            .unwrap();
            cur = open_subdir(&cur, c"d").unwrap();
        }
    }

    /// On tmpfs where there is one: ext4 takes milliseconds per rmdir here.
    fn fast_tempdir() -> tempfile::TempDir {
        tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap())
    }

    #[test]
    fn a_deep_tree_is_removed_without_recursion_on_a_small_stack() {
        let tmp = fast_tempdir();
        deep_chain(tmp.path(), 20_000);
        let top = userfs::open_dir(tmp.path()).unwrap();
        // 64 KiB of stack: a recursive walk of 20,000 levels overflows it.
        let out = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_contents(&top, &budget()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(out, Ok(()));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_budget_bounds_depth_and_entries_and_what_is_left_is_said() {
        let tmp = tempfile::tempdir().unwrap();
        deep_chain(tmp.path(), 50);
        let top = userfs::open_dir(tmp.path()).unwrap();
        let small = Budget {
            max_depth: 10,
            ..budget()
        };
        let err = remove_contents(&top, &small).unwrap_err();
        assert!(err.contains("deeper than 10 levels"), "{err}");
        // What was within the budget went: no file in the first 10 levels.
        assert!(!tmp.path().join("f").exists());
        assert!(tmp.path().join("d").exists());

        let wide = tmp.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        for i in 0..500 {
            std::fs::write(wide.join(i.to_string()), "").unwrap();
        }
        let few = Budget {
            max_entries: 100,
            ..budget()
        };
        let err = remove_contents(&userfs::open_dir(&wide).unwrap(), &few).unwrap_err();
        assert!(err.contains("more than 100 entries"), "{err}");
    }

    #[test]
    fn symlinks_are_removed_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "x").unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a/b/link")).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("link")).unwrap();
        let top = userfs::open_dir(&tree).unwrap();
        assert_eq!(remove_contents(&top, &budget()), Ok(()));
        assert!(victim.join("keep").exists());
        assert_eq!(std::fs::read_dir(&tree).unwrap().count(), 0);
    }
}
