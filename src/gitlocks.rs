//! Git's lock files, found by looking in git directories rather than at open
//! fds: git holds `index.lock` with its fd closed while commit hooks and the
//! editor run, and a killed git leaves its locks behind.
//!
//! Every path here may be a user's: directories are opened without following
//! any symlink (`openat2` with RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS for
//! the git directory, then `openat` with O_NOFOLLOW relative to each parent's
//! fd), files are looked at with `fstatat(AT_SYMLINK_NOFOLLOW)` on their
//! directory's fd, and a lock is unlinked with `unlinkat` on that same fd, so
//! nothing is resolved again between the check and the unlink. Removal runs
//! with the credentials the caller acts with (see [`crate::userfs::as_user`]).
//!
//! A leaf module.

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};

/// How deep below a git directory locks are looked for (`modules/a/modules/b/refs/heads/x.lock`).
const DEPTH: usize = 8;
/// At most this many bytes of a `.git` file or a `commondir` file are read.
const SMALL_FILE: u64 = 4096;

/// A lock file in a git directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFile {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// Its inode change time (set when it was created or renamed; a user cannot set it back).
    pub ctime: SystemTime,
}

/// Who created a lock, as far as the evidence about its creator goes (see
/// [`crate::lockwatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creator {
    /// A process of the run.
    Run,
    /// Anyone else: the creation was watched and was not the run's.
    Other,
    /// Not known: the creation was not watched (no fanotify, another
    /// filesystem, events lost, a run from before the agent started) or its
    /// creator had exited before it could be looked at.
    Unknown,
}

/// Who created each of a list of locks (in order), for one run.
pub type CreatorsFn = dyn Fn(&[LockFile]) -> Vec<Creator> + Send + Sync;

/// Tells, for one run, who created each of a list of locks (in order).
#[derive(Clone)]
pub struct Creators(pub std::sync::Arc<CreatorsFn>);

impl Creators {
    /// Who created each of `locks`; all [`Creator::Unknown`] without evidence.
    pub fn of(creators: Option<&Creators>, locks: &[LockFile]) -> Vec<Creator> {
        match creators {
            Some(c) => {
                let mut out = (c.0)(locks);
                out.resize(locks.len(), Creator::Unknown);
                out
            }
            None => vec![Creator::Unknown; locks.len()],
        }
    }
}

impl std::fmt::Debug for Creators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Creators(..)")
    }
}

/// Whether a file name is one of git's locks: `*.lock` (index, HEAD, refs,
/// packed-refs, shallow, config, maintenance, …) or `gc.pid`.
pub fn is_lock_name(name: &str) -> bool {
    (name.ends_with(".lock") && name.len() > ".lock".len()) || name == "gc.pid"
}

/// Opens a directory by absolute path, refusing any symlink on the way.
pub fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

fn ctime(st: &rustix::fs::Stat) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::new(
            st.st_ctime.max(0) as u64,
            st.st_ctime_nsec.clamp(0, 999_999_999) as u32,
        )
}

/// At most this many directory entries are looked at in one git directory.
const MAX_ENTRIES: usize = 100_000;

/// The lock files below `git_dir` (not in `objects/`, `logs/`, `hooks/`, `lfs/`); with
/// `owner`, only if that user owns the git directory. Walked iteratively, at most
/// [`DEPTH`] levels and [`MAX_ENTRIES`] entries, never into another mount.
pub fn list(git_dir: &Path, owner: Option<u32>) -> Vec<LockFile> {
    let mut out = Vec::new();
    let Ok(fd) = open_dir(git_dir) else {
        return out;
    };
    if owner.is_some_and(|uid| rustix::fs::fstat(&fd).map(|st| st.st_uid) != Ok(uid)) {
        return out;
    }
    let Ok(mount) = mount_id(&fd, c"") else {
        return out;
    };
    let mut entries = 0;
    // Directories still to look in: relative to `git_dir`, with the depth left.
    let mut todo: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), DEPTH)];
    while let Some((rel, depth)) = todo.pop() {
        let dir = if rel.as_os_str().is_empty() {
            rustix::io::dup(&fd)
        } else {
            rustix::fs::openat2(
                &fd,
                &rel,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
        };
        let Ok(dir) = dir else { continue };
        let Ok(read) = rustix::fs::Dir::read_from(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            entries += 1;
            if entries > MAX_ENTRIES {
                tracing::warn!(
                    "{}: more than {MAX_ENTRIES} entries, the rest not looked at",
                    git_dir.display()
                );
                return out;
            }
            let name = entry.file_name();
            let Ok(text) = name.to_str() else { continue };
            // No locks in objects/ (large), logs/ (reflogs are written under the
            // ref's lock), hooks/ or lfs/.
            if matches!(text, "." | ".." | "objects" | "logs" | "hooks" | "lfs") {
                continue;
            }
            match entry.file_type() {
                // Another mount (a FUSE that may never answer) is not entered.
                FileType::Directory if depth > 0 && mount_id(&dir, name) == Ok(mount) => {
                    todo.push((rel.join(text), depth - 1));
                }
                FileType::RegularFile | FileType::Unknown if is_lock_name(text) => {
                    if let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                        && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    {
                        out.push(LockFile {
                            path: git_dir.join(&rel).join(text),
                            dev: st.st_dev,
                            ino: st.st_ino,
                            ctime: ctime(&st),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The mount id of `name` in `dir` (of `dir` itself for an empty name), from
/// cached attributes (`AT_STATX_DONT_SYNC`: no round trip to a FUSE server).
fn mount_id(dir: &OwnedFd, name: &std::ffi::CStr) -> rustix::io::Result<u64> {
    let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC;
    let flags = if name.is_empty() {
        flags | AtFlags::EMPTY_PATH
    } else {
        flags
    };
    Ok(rustix::fs::statx(dir, name, flags, rustix::fs::StatxFlags::MNT_ID)?.stx_mnt_id)
}

/// Reads a small regular file without following symlinks (a `.git` file or a
/// `commondir`), at most [`SMALL_FILE`] bytes, never blocking on a FIFO; with
/// `owner`, only a file that user owns.
fn read_small(path: &Path, owner: Option<u32>) -> Option<String> {
    let fd = rustix::fs::openat2(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || owner.is_some_and(|uid| uid != st.st_uid)
    {
        return None;
    }
    let mut text = String::new();
    fs::File::from(fd)
        .take(SMALL_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The git directory of the repository `dir` is in, looking at `dir` and its
/// ancestors for a `.git` directory, or a `.git` file naming one (a linked
/// worktree, a submodule). Symlinks are never followed; with `owner`, a `.git`
/// file is followed only if that user owns it and the directory it names.
pub fn git_dir_above(dir: &Path, owner: Option<u32>) -> Option<PathBuf> {
    dir.ancestors()
        .find_map(|d| dot_git(d, owner, &|_| true))
        .flatten()
}

/// The git directories of the repositories at `dir` and directly below it
/// (`dir/.git`, `dir/*/.git`, as [`git_dir_above`] reads a `.git`), each with
/// its common directory: where a run working in `dir` takes its locks. Nothing
/// deeper is looked at, and symlinks are never followed. A `.git` file below
/// `dir` is followed for root (`owner` 0) only to a git directory the run was
/// seen using (`used`: a directory of its open files): a file in a shared
/// directory never sends root's cleanup anywhere.
pub fn git_dirs_in(dir: &Path, owner: Option<u32>, used: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = dot_git(dir, owner, &|_| true)
        .flatten()
        .into_iter()
        .collect();
    let seen = |target: &Path| {
        owner != Some(0)
            || used
                .iter()
                .any(|u| u.starts_with(target) || target.starts_with(u))
    };
    if let Ok(fd) = open_dir(dir)
        && let Ok(entries) = rustix::fs::Dir::read_from(&fd)
    {
        for entry in entries.flatten().take(10_000) {
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if entry.file_type() == FileType::Directory && !matches!(name, "." | ".." | ".git") {
                dirs.extend(dot_git(&dir.join(name), owner, &seen).flatten());
            }
        }
    }
    let mut dirs: Vec<PathBuf> = dirs
        .into_iter()
        .flat_map(|d| with_common_dir(d, owner))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// `dirs` sorted, each once, less those inside another (a submodule's below
/// `.git/modules`, a linked worktree's below `.git/worktrees`): a git directory's
/// locks are listed with the directory holding it.
pub fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

/// What `dir/.git` says: `None` when there is none, `Some(None)` when it is
/// something not to follow (a symlink, a `.git` file that does not read, one
/// not `owner`'s or naming a directory not `owner`'s or that `follow` refuses),
/// else the git directory.
fn dot_git(
    dir: &Path,
    owner: Option<u32>,
    follow: &dyn Fn(&Path) -> bool,
) -> Option<Option<PathBuf>> {
    let dot_git = dir.join(".git");
    let meta = fs::symlink_metadata(&dot_git).ok()?;
    if meta.is_dir() {
        return Some(Some(dot_git));
    }
    if !meta.is_file() {
        return Some(None);
    }
    let gitdir = || {
        let text = read_small(&dot_git, owner)?;
        let target = text
            .lines()
            .next()?
            .strip_prefix("gitdir: ")?
            .trim()
            .to_string();
        let target = owned_dir(&dir.join(target), owner)?;
        follow(&target).then_some(target)
    };
    Some(gitdir())
}

/// `path` with `.` and `..` taken out, if it is a directory reached without any
/// symlink (so taking `..` out by name is what the kernel does) and, with
/// `owner`, owned by that user.
fn owned_dir(path: &Path, owner: Option<u32>) -> Option<PathBuf> {
    let fd = open_dir(path).ok()?;
    if owner.is_some_and(|uid| rustix::fs::fstat(&fd).map(|st| st.st_uid) != Ok(uid)) {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out.is_absolute().then_some(out)
}

/// `git_dir` and, for a linked worktree's git directory, the repository's
/// common directory (`commondir`), where its refs are locked; with `owner`,
/// only from a `commondir` file that user owns, to a directory they own.
pub fn with_common_dir(git_dir: PathBuf, owner: Option<u32>) -> Vec<PathBuf> {
    let common = read_small(&git_dir.join("commondir"), owner)
        .and_then(|t| owned_dir(&git_dir.join(t.trim()), owner));
    std::iter::once(git_dir).chain(common).collect()
}

/// The work tree a lock in `git_dir` belongs to, where git runs when it takes
/// it: for `<git_dir>/worktrees/NAME/…` that linked worktree's (from its
/// `gitdir` file), for a linked worktree's own git directory (it has a
/// `commondir`) the same, for `…/.git` (or a submodule's below it) the
/// directory holding `.git`; `None` for a bare repository.
pub fn work_tree(git_dir: &Path, lock: &Path) -> Option<PathBuf> {
    let linked = |wt_git_dir: &Path| {
        let text = read_small(&wt_git_dir.join("gitdir"), None)?;
        Some(Path::new(text.trim()).parent()?.to_path_buf())
    };
    if let Ok(rel) = lock.strip_prefix(git_dir.join("worktrees"))
        && let Some(name) = rel.components().next()
    {
        return linked(&git_dir.join("worktrees").join(name));
    }
    if git_dir.join("commondir").exists() {
        return linked(git_dir);
    }
    // `…/.git`, or a submodule's `…/.git/modules/NAME` (its work tree is inside
    // the superproject's): the directory holding that `.git`.
    git_dir
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == ".git"))?
        .parent()
        .map(Path::to_path_buf)
}

/// Removes the lock `lock` if it is still the very file (device and inode) and
/// a regular file: its directory is opened without following symlinks, checked
/// and unlinked through that one fd. Whether it was removed.
pub fn remove(lock: &LockFile) -> bool {
    let (Some(parent), Some(name)) = (lock.path.parent(), lock.path.file_name()) else {
        return false;
    };
    let Ok(dir) = open_dir(parent) else {
        return false;
    };
    let same = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_dev == lock.dev
            && st.st_ino == lock.ino
    });
    same && rustix::fs::unlinkat(&dir, name, AtFlags::empty()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repositories at and directly below a directory: `.git` directories,
    /// a `.git` file followed (with its common directory), never a symlink,
    /// nothing deeper.
    #[test]
    fn the_git_dirs_in_a_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().canonicalize().unwrap();
        for d in [
            "top/.git",
            "top/a/.git",
            "top/deep/b/.git",
            "main/.git/worktrees/wt",
        ] {
            fs::create_dir_all(ws.join(d)).unwrap();
        }
        fs::write(ws.join("main/.git/worktrees/wt/commondir"), "../..\n").unwrap();
        fs::create_dir(ws.join("top/linked")).unwrap();
        let wt = ws.join("main/.git/worktrees/wt");
        fs::write(
            ws.join("top/linked/.git"),
            format!("gitdir: {}\n", wt.display()),
        )
        .unwrap();
        std::os::unix::fs::symlink(ws.join("main"), ws.join("top/link")).unwrap();
        std::os::unix::fs::symlink(ws.join("main/.git"), ws.join("top/deep/.git")).unwrap();
        assert_eq!(
            git_dirs_in(&ws.join("top"), None, &[]),
            vec![
                ws.join("main/.git"),
                wt,
                ws.join("top/.git"),
                ws.join("top/a/.git"),
            ]
        );
        // Its own `.git` a symlink: not followed; the repository below is found.
        assert_eq!(
            git_dirs_in(&ws.join("top/deep"), None, &[]),
            vec![ws.join("top/deep/b/.git")]
        );
    }

    /// A `.git` file is followed only when the run's owner owns it and the git
    /// directory it names; for root, from below the workspace, only to a git
    /// directory the run was seen using.
    #[test]
    fn a_git_file_is_followed_only_to_the_owners_own_used_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let ws = base.join("shared");
        let victim = base.join("root/repo/.git");
        fs::create_dir_all(&victim).unwrap();
        fs::create_dir_all(ws.join("evil")).unwrap();
        let planted = ws.join("evil/.git");
        fs::write(&planted, format!("gitdir: {}\n", victim.display())).unwrap();
        assert!(git_dirs_in(&ws, Some(0), &[]).is_empty());
        assert_eq!(
            git_dirs_in(&ws, Some(0), std::slice::from_ref(&victim)),
            vec![victim.clone()]
        );
        assert_eq!(
            git_dir_above(&ws.join("evil"), Some(0)),
            Some(victim.clone())
        );
        // The file someone else's: never followed, whatever was used.
        std::os::unix::fs::chown(&planted, Some(12345), None).unwrap();
        assert!(git_dirs_in(&ws, Some(0), std::slice::from_ref(&victim)).is_empty());
        assert_eq!(git_dir_above(&ws.join("evil"), Some(0)), None);
        // The user's own file naming root's directory: not followed for the user.
        assert!(git_dirs_in(&ws, Some(12345), &[]).is_empty());
        assert_eq!(git_dir_above(&ws.join("evil"), Some(12345)), None);
        // A commondir naming another's directory: not followed.
        fs::write(victim.join("commondir"), "../../other\n").unwrap();
        fs::create_dir(base.join("root/other")).unwrap();
        std::os::unix::fs::chown(base.join("root/other"), Some(12345), None).unwrap();
        assert_eq!(
            with_common_dir(victim.clone(), Some(0)),
            vec![victim.clone()]
        );
        assert_eq!(with_common_dir(victim.clone(), None).len(), 2);
    }

    #[test]
    fn the_work_tree_of_a_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let git = tmp.path().join("repo/.git");
        fs::create_dir_all(git.join("worktrees/wt")).unwrap();
        fs::write(
            git.join("worktrees/wt/gitdir"),
            format!("{}\n", tmp.path().join("wt/.git").display()),
        )
        .unwrap();
        fs::write(git.join("worktrees/wt/commondir"), "../..\n").unwrap();
        let repo = tmp.path().join("repo");
        assert_eq!(work_tree(&git, &git.join("index.lock")), Some(repo.clone()));
        assert_eq!(
            work_tree(&git, &git.join("modules/sub/index.lock")),
            Some(repo.clone())
        );
        assert_eq!(
            work_tree(&git, &git.join("worktrees/wt/index.lock")),
            Some(tmp.path().join("wt"))
        );
        let wt_git = git.join("worktrees/wt");
        assert_eq!(
            work_tree(&wt_git, &wt_git.join("index.lock")),
            Some(tmp.path().join("wt"))
        );
        assert_eq!(
            work_tree(
                Path::new("/srv/bare.git"),
                Path::new("/srv/bare.git/x.lock")
            ),
            None
        );
    }

    #[test]
    fn lock_names() {
        for yes in [
            "index.lock",
            "HEAD.lock",
            "main.lock",
            "gc.pid",
            "shallow.lock",
        ] {
            assert!(is_lock_name(yes), "{yes}");
        }
        for no in ["index", ".lock", "gc.pid.old", "Cargo.lockfile"] {
            assert!(!is_lock_name(no), "{no}");
        }
    }

    #[test]
    fn locks_are_listed_without_following_symlinks_and_removed_only_if_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let git = tmp.path().join("ws/.git");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(git.join("refs/heads")).unwrap();
        fs::create_dir_all(git.join("modules/sub")).unwrap();
        fs::create_dir_all(git.join("objects/ab")).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        for f in [
            "index.lock",
            "refs/heads/main.lock",
            "modules/sub/index.lock",
            "gc.pid",
            "objects/ab/x.lock",
        ] {
            fs::write(git.join(f), "").unwrap();
        }
        fs::write(elsewhere.join("victim.lock"), "").unwrap();
        std::os::unix::fs::symlink(&elsewhere, git.join("refs/linked")).unwrap();
        let mut names: Vec<String> = list(&git, None)
            .iter()
            .map(|l| l.path.strip_prefix(&git).unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "gc.pid",
                "index.lock",
                "modules/sub/index.lock",
                "refs/heads/main.lock"
            ]
        );
        // The git directory itself a symlink: nothing.
        let link = tmp.path().join("ws2");
        fs::create_dir(&link).unwrap();
        std::os::unix::fs::symlink(&elsewhere, link.join(".git")).unwrap();
        assert!(list(&link.join(".git"), None).is_empty());
        // Owned by someone else: not looked in.
        assert!(list(&git, Some(12345)).is_empty());
        assert_eq!(git_dir_above(&link, None), None);
        assert_eq!(git_dir_above(&git.join("refs"), None), Some(git.clone()));

        let index = list(&git, None)
            .into_iter()
            .find(|l| l.path.ends_with("index.lock") && l.path.parent() == Some(&git))
            .unwrap();
        // Replaced by another file under the same name: kept.
        fs::remove_file(&index.path).unwrap();
        let _keep = fs::File::create(tmp.path().join("hold")).unwrap();
        fs::write(&index.path, "").unwrap();
        let replaced = fs::symlink_metadata(&index.path).unwrap();
        if std::os::unix::fs::MetadataExt::ino(&replaced) != index.ino {
            assert!(!remove(&index));
            assert!(index.path.exists());
        }
        let now = list(&git, None)
            .into_iter()
            .find(|l| l.path == index.path)
            .unwrap();
        assert!(remove(&now));
        assert!(!now.path.exists());
    }
}
